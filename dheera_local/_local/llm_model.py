"""A loaded decoder-only (LLM) reranker: transformers' base model, its final norm and the answer rows of
its output head; imported only when such a model loads.

What the reference loops (FlagEmbedding's FlagLLMReranker, the Qwen3-Reranker card) waste, and this
does not:

* the output head: they project every position onto the 150k-256k-token vocabulary, then read one or
  two logits at the last position. Here only each pair's last hidden state goes through the final norm,
  and only the answer tokens' rows of the head (2 for Qwen3, 1 for gemma; the classifier row of a
  ``*ForSequenceClassification`` conversion) are kept: the head of an untied model is never loaded;
* the shared prefix: a query's documents share their first tokens (system prompt, instruction, query).
  Attention is causal, so that prefix's keys and values are computed once and every document of the
  query continues from them;
* the batches: pairs go longest first into batches bounded by a padded-token budget (the reference:
  fixed counts, in input order for Qwen3). Right padding needs no attention mask under causal attention
  (no real token sees a pad), so SDPA runs its causal kernel; left padding is kept for tests;
* the linears, on CPU: every projection's weight is laid out once for oneDNN at load
  (:mod:`dheera_local._local.cpu_kernels`) instead of at every call, kept only if a probe pair scores as it
  did before packing.

Scores are the reference's because the prompt's token ids are built by its procedure
(:mod:`dheera_local._models.llm_templates`), and the arithmetic is the same up to float rounding.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._backend import Logits
from .._errors import LocalBackendError
from .._models.discovery import LocalWeights
from .._models.llm_templates import LlmTemplate
from .cpu_kernels import EAGER, PACKED, checked_pack_scored, packing_available
from .hardware import dtype_name
from .token_budget import plan_batches
from .torch_model import no_weight_loading_bar

logger = logging.getLogger("dheera_local")

# A query's documents reuse its prefix when they share at least this many tokens (below it the saving
# is smaller than the cost of the extra forward pass and the cache copies).
MIN_SHARED_PREFIX = 8
# The packing check's probe: two pairs sharing a query, so the prefix-reuse path is what is checked.
_PROBE_PAIRS = [
    ("what is the capital of france", "Paris is the capital and largest city of France."),
    ("what is the capital of france", "The Loire is the longest river in France."),
]
# Memory a load may use beyond the weights (activations, the tokenizer, allocator slack), as a fraction.
LOAD_HEADROOM = 0.10


@dataclass
class _Group:
    """Pairs (indices) continuing one shared prefix of ``prefix_len`` tokens (0: no reuse)."""

    indices: list[int]
    prefix_len: int


class LlmModel:
    """A loaded LLM reranker. ``logits`` is thread-safe; forward passes run one at a time.

    Args:
        weights: The model folder.
        device, dtype: Where and in which precision to run.
        template: Its family (:func:`dheera_local._models.llm_templates.llm_families`).
        prefix_reuse: Compute each query's shared prefix once (False: every pair in full; for tests).
        padding_side: "right" (no mask: the causal kernel) or "left" (explicit mask and positions).
        cpu_kernels: "auto" (oneDNN packed linears where the CPU and the probe allow) or "eager".
    """

    def __init__(
        self,
        weights: LocalWeights,
        device: str,
        dtype: torch.dtype,
        template: LlmTemplate,
        *,
        prefix_reuse: bool = True,
        padding_side: str = "right",
        cpu_kernels: str = "auto",
    ) -> None:
        from transformers import AutoTokenizer

        self.weights = weights
        self.device = device
        self.dtype = dtype
        self.template = template
        self.prefix_reuse = prefix_reuse
        self.padding_side = padding_side
        self.kernels = "sdpa"
        config = _read_config(weights.path)
        check_fits_memory(weights, config, device, dtype)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(weights.path), local_files_only=True)
            body = _load_body(weights.path, dtype)
        except Exception as exc:  # transformers raises many types for a broken folder
            raise LocalBackendError(
                f"{weights.model_id}: weights at {weights.path} could not be loaded: {exc}"
            ) from exc
        self.norm = body.norm
        body.norm = torch.nn.Identity()  # applied below to the last positions only
        self.body = body.to(device).eval()
        self.norm = self.norm.to(device)
        self.head, self.signs = self._head_rows(body, config)
        self._cache_arg = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"
        self._lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        if packing_available(device, dtype, cpu_kernels):
            self.kernels = f"sdpa, {self._pack()}"

    def _pack(self) -> str:
        """Pack the body's linears for oneDNN if a probe pair then scores as before; returns the kernels."""

        def score() -> torch.Tensor:
            return torch.tensor(self.logits(_PROBE_PAIRS, max_length=256, batch_tokens=512))

        verdict = checked_pack_scored(self.body, score)
        return PACKED if verdict.kernels == PACKED else EAGER

    def _head_rows(self, body: torch.nn.Module, config: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The output head's rows that make the score, [k, hidden], and each row's sign."""
        architectures = config.get("architectures") or []
        if any(a.endswith("ForSequenceClassification") for a in architectures):
            rows = _read_tensor(self.weights.path, "score.weight")
            labels = rows.shape[0]
            if labels not in (1, 2):
                raise LocalBackendError(f"{self.weights.model_id} has {labels} labels; rerankers have 1 (or 2)")
            signs = [1.0] if labels == 1 else [-1.0, 1.0]  # two classes: the log-odds of "relevant"
        else:
            ids = self.template.answer_ids(self.tokenizer)
            if config.get("tie_word_embeddings", True):
                rows = body.get_input_embeddings().weight.detach()[ids].float().cpu()
            else:
                rows = _read_tensor(self.weights.path, "lm_head.weight", ids)
            signs = list(self.template.answer_signs)
        return rows.to(self.device, self.dtype), torch.tensor(signs, dtype=torch.float32, device=self.device)

    def logits(
        self, pairs: list[tuple[str, str]], max_length: int, batch_tokens: int, prompt: str | None = None
    ) -> list[float]:
        """Raw scores for ``pairs`` in input order (fp32): the gemma ``Yes`` logit, Qwen3's
        logit(yes) - logit(no), a conversion's classifier logit."""
        if not pairs:
            return Logits(pair_tokens=[])
        with self._tokenizer_lock:
            encoded = self.template.encode(self.tokenizer, pairs, max_length, self.template.text(prompt))
        out = [0.0] * len(pairs)
        with self._lock:
            for group in self._groups(pairs, encoded):
                for index, value in self._score_group(encoded, group, batch_tokens):
                    out[index] = value
        # Each pair's whole prompt, as the model reads it (a shared prefix computed once still counts per pair).
        return Logits(out, pair_tokens=[len(ids) for ids in encoded])

    def _groups(self, pairs: list[tuple[str, str]], encoded: list[list[int]]) -> list[_Group]:
        """Pairs by query, with their shared prefix; pairs that share too little go together, unprefixed."""
        by_query: dict[str, list[int]] = {}
        for index, (query, _) in enumerate(pairs):
            by_query.setdefault(query, []).append(index)
        groups, alone = [], []
        for indices in by_query.values():
            shared = _shared_prefix([encoded[i] for i in indices]) if self.prefix_reuse and len(indices) > 1 else 0
            if shared >= MIN_SHARED_PREFIX:
                groups.append(_Group(indices, shared))
            else:
                alone.extend(indices)
        if alone:
            groups.append(_Group(alone, 0))
        return groups

    @torch.inference_mode()
    def _score_group(self, encoded: list[list[int]], group: _Group, batch_tokens: int) -> list[tuple[int, float]]:
        start = group.prefix_len
        prefix = None
        if start:
            ids = torch.tensor([encoded[group.indices[0]][:start]], device=self.device)
            prefix = getattr(self.body(input_ids=ids, use_cache=True), self._cache_arg)
        tails = [encoded[i][start:] for i in group.indices]
        scored = []
        # Each row holds the prefix's keys and values beside its own: planned at its full length.
        for batch in plan_batches([start + len(tail) for tail in tails], batch_tokens):
            values = self._forward_fitting([tails[j] for j in batch], prefix, start)
            scored.extend((group.indices[j], value) for j, value in zip(batch, values, strict=True))
        return scored

    def _forward_fitting(self, rows: list[list[int]], prefix: Any, start: int) -> list[float]:
        """:meth:`_forward`, splitting the batch in halves while the device runs out of memory."""
        try:
            return self._forward(rows, prefix, start)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not _is_out_of_memory(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(rows) == 1:
                raise LocalBackendError(
                    f"{self.weights.model_id}: out of memory on {self.device} even for one pair of "
                    f"{start + len(rows[0])} tokens; lower max_length or use another device"
                ) from exc
            half = len(rows) // 2
            model_id = self.weights.model_id
            logger.warning("%s: out of memory on %s; splitting a batch of %d", model_id, self.device, len(rows))
            return self._forward_fitting(rows[:half], prefix, start) + self._forward_fitting(rows[half:], prefix, start)

    def _forward(self, rows: list[list[int]], prefix: Any, start: int) -> list[float]:
        """One batch: ``rows`` continue ``prefix`` (the cache of ``start`` tokens, or None)."""
        from transformers import DynamicCache

        width = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id or 0
        lengths = torch.tensor([len(row) for row in rows], device=self.device)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            span = slice(width - len(row), width) if self.padding_side == "left" else slice(0, len(row))
            ids[r, span] = torch.tensor(row)
            mask[r, span] = 1
        kwargs: dict[str, Any] = {"input_ids": ids.to(self.device)}
        if prefix is not None:
            # Every row continues the same prefix: its tensors expanded (a view, no copy) to the batch.
            shape = (len(rows), -1, -1, -1)
            kwargs[self._cache_arg] = DynamicCache(
                [(layer.keys.expand(*shape), layer.values.expand(*shape)) for layer in prefix.layers]
            )
        if self.padding_side == "left":
            mask = mask.to(self.device)
            kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0) + start
            if prefix is not None:
                mask = torch.cat([torch.ones((len(rows), start), dtype=mask.dtype, device=self.device), mask], dim=1)
            kwargs["attention_mask"] = mask
            last = torch.full_like(lengths, width - 1)
        else:
            last = lengths - 1  # right padding: causal attention alone keeps pads out of every real token
        hidden = self.body(**kwargs, use_cache=prefix is not None).last_hidden_state
        final = self.norm(hidden[torch.arange(len(rows), device=self.device), last])
        answers = (final @ self.head.T).float()  # upcast before anything else
        return (answers * self.signs).sum(dim=1).tolist()


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _shared_prefix(rows: list[list[int]]) -> int:
    """Tokens every row starts with, leaving each row at least its last token of its own."""
    shortest = min(len(row) for row in rows)
    first = rows[0]
    shared = 0
    while shared < shortest - 1 and all(row[shared] == first[shared] for row in rows):
        shared += 1
    return shared


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LocalBackendError(f"cannot read {folder / 'config.json'}: {exc}") from exc


def _load_body(folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The base model (no head) in ``dtype``, SDPA attention; the checkpoint's head is left on disk."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the head's weights are "unexpected" for the base model: by design
    try:
        with no_weight_loading_bar():
            return AutoModel.from_pretrained(
                str(folder), dtype=dtype, attn_implementation="sdpa", local_files_only=True
            )
    finally:
        hf_logging.set_verbosity(verbosity)


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / shard for shard in shards]
    return [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else []


def _read_tensor(folder: Path, name: str, rows: list[int] | None = None) -> torch.Tensor:
    """Tensor ``name`` (only ``rows`` of it, read from the memory-mapped file) from the checkpoint, fp32."""
    from safetensors import safe_open

    for path in _weight_files(folder):
        with safe_open(str(path), framework="pt") as handle:
            if name not in handle.keys():
                continue
            if rows is None:
                return handle.get_tensor(name).float()
            tensor = handle.get_slice(name)
            return torch.cat([tensor[row : row + 1] for row in rows]).float()
    if (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", mmap=True, weights_only=True)
        tensor = state[name]
        return (tensor if rows is None else tensor[rows]).float()
    raise LocalBackendError(f"{folder}: no tensor {name!r} in the checkpoint")


def parameter_count(folder: Path, config: dict[str, Any]) -> int:
    """Parameters the body and head rows hold (safetensors headers: nothing is loaded); 0 if unknown.
    An untied output head is left out: only its answer rows are ever read."""
    from safetensors import safe_open

    total = 0
    for path in _weight_files(folder):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                if name == "lm_head.weight" and not config.get("tie_word_embeddings", True):
                    continue
                shape = handle.get_slice(name).get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
    return total


def available_memory(device: str) -> int | None:
    """Bytes free on ``device`` now (CUDA: the driver's count; CPU: MemAvailable), or None if unknown."""
    kind = torch.device(device).type
    if kind == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    if kind == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_fits_memory(
    weights: LocalWeights, config: dict[str, Any], device: str, dtype: torch.dtype, free: int | None = None
) -> None:
    """Refuse, before loading, a model whose weights in ``dtype`` would not fit the free memory of ``device``
    (``free``: measured now unless given): an out-of-memory at load, or worse mid-request, otherwise."""
    params = parameter_count(weights.path, config)
    free = free if free is not None else available_memory(device)
    if not params or free is None:
        return
    needed = int(params * torch.empty((), dtype=dtype).element_size() * (1 + LOAD_HEADROOM))
    if needed > free:
        raise LocalBackendError(
            f"{weights.model_id}: {params / 1e9:.2f}B parameters need {needed / 2**30:.1f} GiB as "
            f"{dtype_name(dtype)} on {device}, but only {free / 2**30:.1f} GiB is free; use a smaller model, "
            "a lower precision (dtype), another device, or an endpoint (api_base)"
        )
