"""The families of decoder-only (LLM) rerankers — each one's prompt, answer tokens and the models it
serves — in one registry, :func:`register_llm_family`, which the built-ins use as a third party would.

An LLM reranker scores a pair by the logit of an answer token after a prompt; without its exact prompt
its scores are close to random. Two built-in families, each tokenized exactly as its reference code does:

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
import logging
import threading
from collections.abc import Callable
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

PROMPT_OPTIONS = ("instruction", "prompt")  # the engine options a family's prompt text may be set by

Encoder = Callable[[Any, list[tuple[str, str]], int, str], list[list[int]]]


@dataclass(frozen=True)
class LlmFamily:
    """One family of LLM rerankers: how a pair becomes token ids, which answer logits make the score, and
    which models it serves.

    Args:
        name: The family's name; part of every cache key of its scores (with the prompt text).
        option: The engine option that overrides its prompt text: ``instruction`` or ``prompt``.
        default: That text when the request gives none.
        answer_tokens: The tokens whose next-token logits make the score: ``raw = sum(sign * logit)``.
        answer_signs: One sign per answer token (Qwen3: logit(yes) - logit(no) is ``(-1, 1)`` over (no, yes)).
        encode: ``(tokenizer, pairs, max_length, text) -> token ids per pair``: the full prompt, exactly as the
            family's reference code builds it (truncation included). The model scores the last position.
        architectures: config.json ``architectures`` served by this family when the weights are here.
        name_hints: Lower-case parts of hub ids that name the family when no weights are here (a remote
            candidate's cache identity); keep them specific enough not to catch a cross-encoder.
        answer_ids_of: ``tokenizer -> ids`` of the answer tokens, when the reference looks them up otherwise than
            ``convert_tokens_to_ids`` (FlagEmbedding: the first id of tokenizing "Yes").
    """

    name: str
    option: str
    default: str
    answer_tokens: tuple[str, ...]
    answer_signs: tuple[float, ...]
    encode: Encoder
    architectures: tuple[str, ...] = ()
    name_hints: tuple[str, ...] = ()
    answer_ids_of: Callable[[Any], list[int]] | None = None

    def text(self, value: str | None) -> str:
        """The prompt or instruction a request uses: ``value``, else the default."""
        return self.default if value is None else value

    def answer_ids(self, tokenizer: Any) -> list[int]:
        """The ids of :attr:`answer_tokens`, looked up as the reference code does."""
        if self.answer_ids_of is not None:
            return self.answer_ids_of(tokenizer)
        ids = [tokenizer.convert_tokens_to_ids(token) for token in self.answer_tokens]
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise ValueError(f"the tokenizer lacks the answer tokens {self.answer_tokens}")
        return ids


LlmTemplate = LlmFamily  # the engine's word for the family a model is scored with

ENTRY_POINT_GROUP = "dheera_local.llm_families"  # an installed package's LlmFamily objects, loaded on first use
logger = logging.getLogger("dheera_local")

_FAMILIES: dict[str, LlmFamily] = {}
_LOCK = threading.Lock()  # held only to read or change _FAMILIES, never while importing a plugin
_PLUGINS = threading.Lock()  # one thread loads the entry points; register_llm_family never waits for it
_plugins_loaded = False
_generation = 0  # bumped by every change, so a loaded model can tell that its family may have changed


def register_llm_family(family: LlmFamily) -> LlmFamily:
    """Serve ``family``'s models (by architecture when their weights are here, by hub id otherwise).
    Registering an equal family again is a no-op (a plugin that registers at import and by entry point).

    Raises:
        ValueError: The name is taken by another family, an architecture is another family's, the option is not
            ``instruction`` or ``prompt``, or the answer tokens and signs differ in number.
        TypeError: ``architectures``, ``name_hints`` or ``answer_tokens`` is not a tuple of non-empty strings.
    """
    global _generation
    if not isinstance(family, LlmFamily):
        raise TypeError(f"expected a dheera_local.LlmFamily, got {type(family).__name__}")
    for field_name in ("architectures", "name_hints", "answer_tokens"):
        _check_names(family, field_name)
    if family.option not in PROMPT_OPTIONS:
        raise ValueError(f"family {family.name!r}: option must be one of {', '.join(PROMPT_OPTIONS)}")
    if not family.answer_tokens or len(family.answer_tokens) != len(family.answer_signs):
        raise ValueError(f"family {family.name!r}: one sign per answer token, and at least one token")
    if not callable(family.encode):
        raise ValueError(f"family {family.name!r}: encode must be callable")
    if family.name not in _BUILT_IN:
        _load_plugins(wait=False)  # installed families first, so a conflict is refused the same way in any order
    with _LOCK:
        if _FAMILIES.get(family.name) == family:
            return _FAMILIES[family.name]
        if family.name in _FAMILIES:
            raise ValueError(f"an LLM reranker family named {family.name!r} is registered already")
        for other in _FAMILIES.values():
            taken = set(family.architectures) & set(other.architectures)
            if taken:
                raise ValueError(f"family {family.name!r}: {', '.join(sorted(taken))} is served by {other.name!r}")
        _FAMILIES[family.name] = family
        _generation += 1
    return family


def _check_names(family: LlmFamily, field_name: str) -> None:
    value = getattr(family, field_name)
    if isinstance(value, str):  # ("Qwen2ForCausalLM") without its comma: a str, whose letters would match anything
        raise TypeError(f"family {family.name!r}: {field_name} must be a tuple of strings, got the string {value!r} "
                        f"(write ({value!r},) with the comma)")  # fmt: skip
    if not isinstance(value, tuple) or not all(isinstance(item, str) and item for item in value):
        raise TypeError(f"family {family.name!r}: {field_name} must be a tuple of non-empty strings, got {value!r}")


def unregister_llm_family(name: str) -> None:
    """Forget family ``name`` (a test's, or a plugin's being unloaded); unknown names are ignored. A model
    loaded with it is loaded again on its next use (:func:`family_generation`)."""
    global _generation
    with _LOCK:
        if _FAMILIES.pop(name, None) is not None:
            _generation += 1


def family_generation() -> int:
    """A number that changes whenever a family is registered or unregistered: the model store compares it with
    the one a model was loaded under, and asks again which family scores that model only when it differs."""
    return _generation


def llm_families() -> dict[str, LlmFamily]:
    """The registered families, by name (a copy); the entry-point group's are loaded on the first call."""
    _load_plugins(wait=True)
    with _LOCK:
        return dict(_FAMILIES)


def _load_plugins(*, wait: bool) -> None:
    """Register the families installed packages declare (``[project.entry-points."dheera_local.llm_families"]``),
    so the CLI, the proxy and spawned workers know them as the user's script does. A broken one is logged and
    skipped, never fatal. Imports run holding no lock a registration needs: a plugin module that another thread
    is importing may register meanwhile (``wait=False`` from register_llm_family: never block on the loader)."""
    global _plugins_loaded
    if _plugins_loaded or not _PLUGINS.acquire(blocking=wait):
        return
    try:
        if _plugins_loaded:
            return
        _plugins_loaded = True  # first: the families below register through register_llm_family
        from importlib.metadata import entry_points  # ~50 ms of imports: paid on first use, not at import

        for point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                family = point.load()
                if not isinstance(family, LlmFamily):
                    raise TypeError(f"{point.value} is a {type(family).__name__}, not a dheera_local.LlmFamily")
                register_llm_family(family)
            except Exception as exc:  # noqa: BLE001 - someone else's package must not break every rerank
                logger.warning("dheera_local: skipped LLM family entry point %r (%s): %s", point.name, point.value, exc)
    finally:
        _PLUGINS.release()


def llm_architectures() -> frozenset[str]:
    """The causal-LM architectures scored through a family's prompt (their full-vocabulary head is otherwise
    meaningless here; catalog.py's cross-encoder rule lets them through)."""
    return frozenset(a for family in llm_families().values() for a in family.architectures if "ForCausalLM" in a)


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
    """The family of the model in ``folder`` (by its config's architecture), or None (a cross-encoder)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    families = llm_families().values()
    for architecture in config.get("architectures") or []:
        for family in families:
            if architecture in family.architectures:
                return family
    return None


def template_for_name(model_id: str | None) -> LlmTemplate | None:
    """The family a hub id names (for a remote candidate, whose weights are not here), or None."""
    lowered = (model_id or "").lower()
    for family in llm_families().values():
        if any(hint in lowered for hint in family.name_hints):
            return family
    return None


def _first_yes_id(tokenizer: Any) -> list[int]:
    # FlagEmbedding: the first id of tokenizing "Yes" without special tokens.
    return [tokenizer("Yes", add_special_tokens=False)["input_ids"][0]]


# The built-ins, registered as any family is (before the entry points: those load on first use).
_BUILT_IN = ("bge-gemma", "qwen3")
BGE_GEMMA = register_llm_family(LlmFamily(
    "bge-gemma", "prompt", GEMMA_PROMPT, ("Yes",), (1.0,), _encode_gemma,
    architectures=("GemmaForCausalLM",), name_hints=("bge-reranker-v2-gemma",), answer_ids_of=_first_yes_id,
))  # fmt: skip
QWEN3 = register_llm_family(LlmFamily(
    "qwen3", "instruction", QWEN3_INSTRUCTION, ("no", "yes"), (-1.0, 1.0), _encode_qwen3,
    architectures=("Qwen3ForCausalLM", "Qwen3ForSequenceClassification"), name_hints=("qwen3-reranker",),
))  # fmt: skip


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
