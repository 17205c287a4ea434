"""The prompt templates of decoder-only (LLM) rerankers, and which model uses which.

An LLM reranker scores a pair by the logit of an answer token after a prompt; without its exact prompt
its scores are close to random. Two families, each tokenized exactly as its reference code does:

* ``bge-gemma`` (BAAI/bge-reranker-v2-gemma, ``GemmaForCausalLM``), after FlagEmbedding's
  ``FlagLLMReranker`` (``FlagEmbedding/inference/reranker/decoder_only/base.py``): ``<bos>A: {query}``
  (cut at 3/4 of ``max_length`` tokens), ``\\nB: {passage}`` (cut to ``max_length`` tokens, then so that
  the pair fits ``max_length`` + the separator and prompt), ``\\n{prompt}``. Score: the ``Yes`` logit.
  The engine option ``prompt`` replaces the default prompt.
* ``qwen3`` (Qwen/Qwen3-Reranker-*, ``Qwen3ForCausalLM``, and ``Qwen3ForSequenceClassification``
  conversions), after the model card's ``format_instruction``/``process_inputs``: a system prefix,
  ``<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}`` cut to fit ``max_length`` with
  the prefix and the assistant/think suffix. Score: logit(yes) - logit(no), whose sigmoid is the card's
  P(yes). The engine option ``instruction`` replaces the default instruction.

Pure Python over a tokenizer object: nothing here imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import InvalidRequestError

# The texts below are the reference code's, character for character.
GEMMA_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

# The architectures each family is served from (config.json's ``architectures``).
_ARCHITECTURES = {
    "GemmaForCausalLM": "bge-gemma",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3ForSequenceClassification": "qwen3",
}
# The causal LMs scored through their template (their full-vocabulary head is otherwise meaningless here).
LLM_ARCHITECTURES = tuple(name for name in _ARCHITECTURES if name.endswith("ForCausalLM"))
# Hub ids that name a family when no weights are on the machine (a remote candidate's cache identity).
_NAME_HINTS = {"bge-reranker-v2-gemma": "bge-gemma", "qwen3-reranker": "qwen3"}


@dataclass(frozen=True)
class LlmTemplate:
    """One family's prompt: the engine option that overrides its text, that text's default, the answer
    tokens whose logits make the score (``raw = sum(sign * logit)``)."""

    name: str
    option: str
    default: str
    answer_tokens: tuple[str, ...]
    answer_signs: tuple[float, ...]

    def text(self, value: str | None) -> str:
        """The prompt or instruction a request uses: ``value``, else the default."""
        return self.default if value is None else value

    def answer_ids(self, tokenizer: Any) -> list[int]:
        """The ids of :attr:`answer_tokens`, looked up as the reference code does."""
        if self.name == "bge-gemma":  # FlagEmbedding: the first id of tokenizing "Yes" without specials
            return [tokenizer("Yes", add_special_tokens=False)["input_ids"][0]]
        ids = [tokenizer.convert_tokens_to_ids(token) for token in self.answer_tokens]
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise ValueError(f"the tokenizer lacks the answer tokens {self.answer_tokens}")
        return ids

    def encode(self, tokenizer: Any, pairs: list[tuple[str, str]], max_length: int, text: str) -> list[list[int]]:
        """Token ids of each pair's full prompt, exactly as the reference code builds them."""
        if self.name == "bge-gemma":
            return _encode_gemma(tokenizer, pairs, max_length, text)
        return _encode_qwen3(tokenizer, pairs, max_length, text)


BGE_GEMMA = LlmTemplate("bge-gemma", "prompt", GEMMA_PROMPT, ("Yes",), (1.0,))
QWEN3 = LlmTemplate("qwen3", "instruction", QWEN3_INSTRUCTION, ("no", "yes"), (-1.0, 1.0))
TEMPLATES = {template.name: template for template in (BGE_GEMMA, QWEN3)}
PROMPT_OPTIONS = ("instruction", "prompt")


def _encode_gemma(tokenizer: Any, pairs: list[tuple[str, str]], max_length: int, prompt: str) -> list[list[int]]:
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    sep_ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    budget = max_length + len(sep_ids) + len(prompt_ids)
    bos = tokenizer.bos_token_id
    lead = [bos] if bos is not None and bos != tokenizer.pad_token_id else []
    # Each distinct query is tokenized once (a request repeats it beside every document).
    queries = list(dict.fromkeys(query for query, _ in pairs))
    query_ids = tokenizer(
        [f"A: {query}" for query in queries], add_special_tokens=False, max_length=max_length * 3 // 4, truncation=True
    )["input_ids"]
    by_query = dict(zip(queries, query_ids, strict=True))
    passages = tokenizer(
        [f"B: {passage}" for _, passage in pairs], add_special_tokens=False, max_length=max_length, truncation=True
    )["input_ids"]
    encoded = []
    for (query, _), passage_ids in zip(pairs, passages, strict=True):
        first = lead + by_query[query]
        second = sep_ids + passage_ids
        # truncation="only_second" to ``budget``: drop the second sequence's tail.
        over = len(first) + len(second) - budget
        if over > 0:
            second = second[:-over] if over < len(second) else second
        encoded.append(first + second + sep_ids + prompt_ids)
    return encoded


def _encode_qwen3(tokenizer: Any, pairs: list[tuple[str, str]], max_length: int, instruction: str) -> list[list[int]]:
    prefix_ids = tokenizer.encode(QWEN3_PREFIX, add_special_tokens=False)
    suffix_ids = tokenizer.encode(QWEN3_SUFFIX, add_special_tokens=False)
    room = max_length - len(prefix_ids) - len(suffix_ids)
    if room < 1:
        raise InvalidRequestError(
            f"max_length {max_length} leaves no room for the pair after the prompt's "
            f"{len(prefix_ids) + len(suffix_ids)} tokens; use a larger max_length",
            field="max_length",
        )
    texts = [f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}" for query, doc in pairs]
    body = tokenizer(texts, padding=False, truncation="longest_first", return_attention_mask=False, max_length=room)
    return [prefix_ids + ids + suffix_ids for ids in body["input_ids"]]


def template_for_folder(folder: Path) -> LlmTemplate | None:
    """The template of the model in ``folder`` (by its config's architecture), or None (a cross-encoder)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for architecture in config.get("architectures") or []:
        if architecture in _ARCHITECTURES:
            return TEMPLATES[_ARCHITECTURES[architecture]]
    return None


def template_for_name(model_id: str | None) -> LlmTemplate | None:
    """The template a hub id names (for a remote candidate, whose weights are not here), or None."""
    lowered = (model_id or "").lower()
    for hint, name in _NAME_HINTS.items():
        if hint in lowered:
            return TEMPLATES[name]
    return None


def resolve_prompt(template: LlmTemplate | None, model: str, values: dict[str, str | None]) -> str | None:
    """The prompt text a request uses (``values``: the ``instruction``/``prompt`` options), or None for a
    cross-encoder. An option the model does not take is refused, naming it."""
    for option, value in values.items():
        if value is None:
            continue
        if template is None:
            raise InvalidRequestError(
                f"{option} is for LLM rerankers (Qwen3-Reranker: instruction; bge-reranker-v2-gemma: prompt); "
                f"{model} is a cross-encoder and takes no prompt",
                field=option,
            )
        if option != template.option:
            raise InvalidRequestError(
                f"{model} takes {template.option!r}, not {option!r} (its template: {template.name})", field=option
            )
    if template is None:
        return None
    return template.text(values.get(template.option))
