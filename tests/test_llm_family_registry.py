"""A new LLM reranker family is one registration, made outside the package: a family defined here scores a
tiny random Qwen2 causal LM exactly as its reference procedure (transcribed below, straight transformers)
does, through ``rerank()``, the cache and ``score_pairs``, with no edit of ``dheera_local/``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import dheera_local
from conftest import run_with_plugin
from dheera_local import InvalidRequestError, LlmFamily, Reranker, UnsupportedModelError
from dheera_local.testing import install_in_hub_cache, train_llm_tokenizer

ACME_ID = "acme-org/acme-judge-reranker"
INSTRUCTION = "Judge whether the document answers the query."
QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "the river flows past the old museum " * 20, "berlin germany", "tea"]
FP32 = {"dtype": "float32", "device": "cpu"}


def acme_prompt(instruction: str, query: str, document: str) -> str:
    return f"<|im_start|>{instruction}\nQuery: {query}\nDocument: {document}\nRelevant:"


def acme_encode(tokenizer: Any, pairs: list[tuple[str, str]], max_length: int, instruction: str) -> list[list[int]]:
    texts = [acme_prompt(instruction, query, document) for query, document in pairs]
    return tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]


ACME = LlmFamily(
    "acme-judge", "instruction", INSTRUCTION, ("yes",), (1.0,), acme_encode,
    architectures=("Qwen2ForCausalLM",), name_hints=("acme-judge-reranker",),
)  # fmt: skip


def acme_reference(
    folder: Path, pairs: list[tuple[str, str]], instruction: str, max_length: int, prompt: Any = acme_prompt
) -> list[float]:
    """The family's reference procedure, written out: one pair at a time, the causal LM's next-token logit of
    "yes" after the prompt (fp32, no batching, no cache)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    yes = tokenizer.convert_tokens_to_ids("yes")
    logits = []
    for query, document in pairs:
        ids = tokenizer(
            prompt(instruction, query, document), add_special_tokens=False, truncation=True, max_length=max_length
        )["input_ids"]
        with torch.no_grad():
            logits.append(float(model(torch.tensor([ids])).logits[0, -1, yes]))
    return logits


@pytest.fixture(scope="module")
def acme_folder(models_root: Path, hub_cache: Path) -> Path:
    """A random 2-layer Qwen2ForCausalLM with a tokenizer holding "yes" as one token, in the hub cache."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = models_root / "acme-qwen2"
    tokenizer = train_llm_tokenizer("qwen3")
    vocab = -(-len(tokenizer) // 64) * 64
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, initializer_range=0.2, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(7)
    Qwen2ForCausalLM(config).save_pretrained(folder)  # init_std 0.2: "yes" logits differ by whole units
    tokenizer.save_pretrained(folder)
    install_in_hub_cache(folder, ACME_ID, hub_cache)
    return folder


@pytest.fixture
def acme(acme_folder: Path, isolated_env: Path) -> Iterator[Path]:
    dheera_local.register_llm_family(ACME)
    try:
        yield acme_folder
    finally:
        dheera_local.unregister_llm_family(ACME.name)


def by_index(response: Any) -> list[float]:
    return [score for _, score in sorted((r.index, r.relevance_score) for r in response.results)]


def test_without_the_family_the_model_is_refused(acme_folder: Path, isolated_env: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="Qwen2ForCausalLM, not a \\*ForSequenceClassification"):
        dheera_local.rerank(ACME_ID, QUERY, DOCS, **FP32)


@pytest.mark.parametrize("instruction", [None, "Does the document name a capital city?"])
def test_a_registered_family_scores_as_its_reference(acme: Path, instruction: str | None) -> None:
    max_length = 48  # the long document is cut
    expected = acme_reference(acme, [(QUERY, d) for d in DOCS], instruction or INSTRUCTION, max_length)
    assert max(expected) - min(expected) > 0.5  # 5,000x the tolerance: the comparison below compares something
    with Reranker() as reranker:
        response = reranker.rerank(
            ACME_ID, QUERY, DOCS, top_n=None, raw_scores=True, max_length=max_length, instruction=instruction, **FP32
        )
        cached = reranker.rerank(
            ACME_ID, QUERY, DOCS, top_n=None, raw_scores=True, max_length=max_length, instruction=instruction, **FP32
        )
        pairs = reranker.score_pairs(
            ACME_ID, [(QUERY, d) for d in DOCS], max_length=max_length, instruction=instruction, raw_scores=True, **FP32
        )
    assert by_index(response) == pytest.approx(expected, abs=1e-4)
    assert (cached.meta.dheera_local.cache_hits, by_index(cached)) == (len(DOCS), by_index(response))
    assert pairs.logits == pytest.approx(expected, abs=1e-4)


def test_the_family_name_and_its_option_are_the_engines(acme: Path) -> None:
    with Reranker() as reranker:
        plan = reranker.plan(ACME_ID, instruction="judge")
        assert plan.identity.prompt == "acme-judge:judge"  # in every cache key of its scores
        with pytest.raises(InvalidRequestError, match="takes 'instruction', not 'prompt'") as refused:
            reranker.rerank(ACME_ID, QUERY, DOCS, prompt="say yes", **FP32)
    assert refused.value.field == "prompt"


def terse_prompt(instruction: str, query: str, document: str) -> str:
    return f"{query} | {document} | {instruction} yes or no?"


def terse_encode(tokenizer: Any, pairs: list[tuple[str, str]], max_length: int, instruction: str) -> list[list[int]]:
    texts = [terse_prompt(instruction, query, document) for query, document in pairs]
    return tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]


def test_a_loaded_model_follows_its_family_being_registered_again(acme: Path) -> None:
    # Fixing a family's encode in a notebook: unregister, register the new one. The model loaded with the old one
    # must not keep scoring (and caching) with it.
    import dataclasses

    pairs = [(QUERY, d) for d in DOCS]
    with Reranker() as reranker:
        before = reranker.score_pairs(ACME_ID, pairs, cache=False, **FP32).logits
        dheera_local.unregister_llm_family(ACME.name)
        dheera_local.register_llm_family(dataclasses.replace(ACME, encode=terse_encode))
        after = reranker.score_pairs(ACME_ID, pairs, cache=False, **FP32).logits
    assert before == pytest.approx(acme_reference(acme, pairs, INSTRUCTION, 512), abs=1e-4)
    assert after == pytest.approx(acme_reference(acme, pairs, INSTRUCTION, 512, terse_prompt), abs=1e-4)
    assert after != pytest.approx(before, abs=1e-2)


def test_a_family_that_failed_to_load_is_tried_again_once_replaced(acme: Path) -> None:
    # A failed load is remembered for a minute, so requests fail fast; but not past a new family: a fixed
    # encode must be tried at once, not answered with the broken one's error.
    import dataclasses

    def broken(tokenizer: Any, pairs: list[tuple[str, str]], max_length: int, instruction: str) -> list[list[int]]:
        raise RuntimeError("encode bug")

    dheera_local.unregister_llm_family(ACME.name)
    dheera_local.register_llm_family(dataclasses.replace(ACME, encode=broken))
    with Reranker() as reranker:
        with pytest.raises(dheera_local.AllBackendsFailedError, match="encode bug"):
            reranker.rerank(ACME_ID, QUERY, DOCS, backend="local", cache=False, **FP32)
        dheera_local.unregister_llm_family(ACME.name)
        dheera_local.register_llm_family(ACME)
        fixed = reranker.rerank(ACME_ID, QUERY, DOCS, top_n=None, raw_scores=True, cache=False, **FP32)
    expected = acme_reference(acme, [(QUERY, d) for d in DOCS], INSTRUCTION, 512)
    assert by_index(fixed) == pytest.approx(expected, abs=1e-4)


def test_registering_an_equal_family_again_is_a_no_op(acme: Path) -> None:
    import dataclasses

    assert dheera_local.register_llm_family(dataclasses.replace(ACME)) is ACME  # a plugin's import and entry point


def test_a_one_element_tuple_without_its_comma_is_refused() -> None:
    import dataclasses

    # ("Qwen2ForCausalLM") is a str: its letters would match any hub id, or no architecture at all.
    with pytest.raises(TypeError, match=r"write \('Qwen2ForCausalLM',\) with the comma"):
        dheera_local.register_llm_family(dataclasses.replace(ACME, name="acme-3", architectures="Qwen2ForCausalLM"))
    with pytest.raises(TypeError, match="name_hints must be a tuple of non-empty strings"):
        dheera_local.register_llm_family(dataclasses.replace(ACME, name="acme-3", architectures=(), name_hints=("",)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "qwen3"}, "named 'qwen3' is registered already"),
        ({"name": "acme-2", "architectures": ("GemmaForCausalLM",)}, "GemmaForCausalLM is served by 'bge-gemma'"),
        ({"name": "acme-2", "option": "system"}, "option must be one of instruction, prompt"),
        ({"name": "acme-2", "answer_signs": (1.0, -1.0)}, "one sign per answer token"),
    ],
)
def test_a_bad_family_is_refused_when_registered(change: dict[str, Any], message: str) -> None:
    import dataclasses

    with pytest.raises(ValueError, match=message):
        dheera_local.register_llm_family(dataclasses.replace(ACME, **{"architectures": (), **change}))


PLUGIN = """
from dheera_local import LlmFamily

def encode(tokenizer, pairs, max_length, instruction):
    return [tokenizer(f"{instruction} {q} {d}", add_special_tokens=False)["input_ids"] for q, d in pairs]

FAMILY = LlmFamily("plugged-judge", "instruction", "Judge.", ("yes",), (1.0,), encode,
                   architectures=("Qwen2ForCausalLM",), name_hints=("plugged-judge",))
NOT_A_FAMILY = object()
"""

PROBE = """
import logging, sys
logging.basicConfig(level=logging.WARNING)
import dheera_local
print("loaded at import:", "judge_plugin" in sys.modules)
plan = dheera_local.Reranker().plan("org/plugged-judge-v1", api_base="http://127.0.0.1:9")  # a remote: no load
print("loaded on use:", "judge_plugin" in sys.modules)
print("identity prompt:", plan.identity.prompt)
"""


def test_an_installed_package_registers_a_family_through_the_entry_point_group(tmp_path: Path) -> None:
    # What the CLI, the proxy and spawned workers see: no user code runs there, the installed package's family does.
    entries = "plugged = judge_plugin:FAMILY\nbroken = judge_plugin:NOT_A_FAMILY"
    done = run_with_plugin(tmp_path, "judge_plugin", PLUGIN, "dheera_local.llm_families", entries, PROBE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "loaded at import: False", "loaded on use: True", "identity prompt: plugged-judge:Judge."
    ]  # fmt: skip
    assert "skipped LLM family entry point 'broken'" in done.stderr and "not a dheera_local.LlmFamily" in done.stderr
