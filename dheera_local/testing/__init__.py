"""Test your code against dheera_local without a network or real weights.

* :func:`fake_reranker` / :class:`FakeBackend`: a real :class:`~dheera_local.Reranker` whose
  scoring is a function you give (word overlap by default), for tests where the model is beside
  the point.
* :func:`build_cross_encoder` / :func:`build_twin` / :func:`install_in_hub_cache`: tiny random
  cross-encoders (or real-shaped twins) saved offline, and laid out as huggingface_hub cache
  entries so discovery by hub id is exercised; :func:`train_keyword_reranker`: a tiny model with a
  real ranking signal; :func:`build_llm_reranker` / :func:`train_llm_tokenizer`: tiny random Gemma or Qwen3
  causal LMs whose tokenizers hold the LLM rerankers' special and answer tokens (for an LLM family of your own).
* :class:`Servers` / :class:`LoopbackServer` / :class:`Fault`: real loopback HTTP servers that
  speak TEI, HF hosted and Cohere, with fault injection (``dheera_local.testing.servers``).

torch and sentence-transformers load only when a model is built or a server scores.
"""

from .fake import FakeBackend, FakeBackends, fake_reranker, word_overlap
from .models import (
    build_cross_encoder,
    build_llm_reranker,
    build_twin,
    install_in_hub_cache,
    train_keyword_reranker,
    train_llm_tokenizer,
    train_tokenizer,
)
from .servers import Fault, LoopbackServer, Recorded, Servers, reference_logits

__all__ = [
    "Fault",
    "FakeBackend",
    "FakeBackends",
    "LoopbackServer",
    "Recorded",
    "Servers",
    "build_cross_encoder",
    "build_llm_reranker",
    "build_twin",
    "fake_reranker",
    "install_in_hub_cache",
    "reference_logits",
    "train_keyword_reranker",
    "train_llm_tokenizer",
    "train_tokenizer",
    "word_overlap",
]
