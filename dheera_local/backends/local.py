"""The local backend: a sentence-transformers CrossEncoder on this machine's CPU or GPU.

Pairs are tokenized once, sorted by length and grouped by a padded-token budget, so long
documents never blow up memory and short ones are not padded to long ones. A GPU out-of-memory
halves the budget and retries. One model is loaded per (weights, device, dtype) per process and
shared by every thread; forward passes on one model are serialized (torch already uses every core).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from .._catalog import lookup
from .._cpu_kernels import EAGER, pack_linears, packing_available
from .._discovery import LocalWeights
from .._errors import DheeraError, LocalBackendError, UnsupportedModelError
from .._hardware import dtype_name, resolve_device, resolve_dtype
from .._token_budget import plan_batches

logger = logging.getLogger("dheera_local")

DEFAULT_BATCH_TOKENS = {"cuda": 32768, "mps": 8192, "cpu": 4096}
# A query longer than this many characters per window token is cut before pairing (see _bounded);
# the margin keeps the tokens near the cut, whose split may depend on what follows, out of the window.
QUERY_CHARS_PER_TOKEN = 4
QUERY_CUT_MARGIN = 8


def default_batch_tokens(device: str) -> int:
    """Padded tokens per forward pass: large on GPUs, cache-friendly on CPUs."""
    return DEFAULT_BATCH_TOKENS.get(torch.device(device).type, 4096)


def check_cross_encoder(weights: LocalWeights) -> None:
    """Refuse models that a CrossEncoder would load with a random or wrong scoring head."""
    known = lookup(weights.model_id)
    if known is not None and not known.is_cross_encoder:
        raise UnsupportedModelError(
            f"{weights.model_id} is a {known.kind} (an LLM scoring a 'Yes' token), not a cross-encoder; "
            "dheera_local would score it with a randomly initialised head. Use a cross-encoder such as "
            "BAAI/bge-reranker-v2-m3 (see `dheera-local models`)."
        )
    try:
        config = json.loads((weights.path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LocalBackendError(f"{weights.model_id}: cannot read {weights.path / 'config.json'}: {exc}") from exc
    architectures = config.get("architectures") or []
    if architectures and not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise UnsupportedModelError(
            f"{weights.model_id} has architecture {architectures[0]}, not a *ForSequenceClassification "
            "cross-encoder; loading it would score with a randomly initialised head"
        )
    labels = config.get("num_labels", len(config.get("id2label") or {}) or 1)
    if labels > 2:
        raise UnsupportedModelError(f"{weights.model_id} has {labels} labels; rerankers have 1 (or 2) outputs")


@dataclass(frozen=True)
class _LoadKey:
    path: str
    revision: str
    device: str
    dtype: torch.dtype


class LocalModel:
    """A loaded cross-encoder. ``logits`` is thread-safe; forward passes run one at a time."""

    def __init__(self, weights: LocalWeights, device: str, dtype: torch.dtype) -> None:
        from sentence_transformers import CrossEncoder

        check_cross_encoder(weights)
        self.weights = weights
        self.device = device
        self.dtype = dtype
        try:
            encoder = CrossEncoder(str(weights.path), device=device, local_files_only=True)
        except Exception as exc:  # transformers raises many types for a broken folder
            raise LocalBackendError(
                f"{weights.model_id}: weights at {weights.path} could not be loaded: {exc}"
            ) from exc
        self.encoder = encoder
        self.tokenizer = encoder.tokenizer
        self.network = encoder.model.to(dtype=dtype).eval()
        self.num_labels = int(self.network.config.num_labels)
        self.kernels = EAGER
        if packing_available(device, dtype):
            self.kernels = pack_linears(self.network, self._probe_batch())
        self._lock = threading.Lock()
        # The fast tokenizer keeps truncation settings as mutable state: calls with different
        # max_length from two threads would race. Separate from _lock so tokenizing the next
        # request overlaps the current forward pass.
        self._tokenizer_lock = threading.Lock()

    def _probe_batch(self) -> dict[str, torch.Tensor]:
        texts = ["a short probe document", "a somewhat longer probe document with a few more words in it"]
        encoded = self.tokenizer(["probe query"] * 2, texts, truncation=True, max_length=64, padding=False)
        return self._pad(encoded, [0, 1])

    def logits(self, pairs: list[tuple[str, str]], max_length: int, batch_tokens: int) -> list[float]:
        """Raw logits for ``pairs`` in input order (fp32, whatever the weights' precision)."""
        if not pairs:
            return []
        encoded = self._tokenize(pairs, max_length)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        out: list[float] = [0.0] * len(pairs)
        with self._lock:
            pending = plan_batches(lengths, batch_tokens)
            while pending:
                batch = pending.pop(0)
                try:
                    values = self._forward(encoded, batch)
                except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                    if not _is_out_of_memory(exc):
                        raise
                    batch_tokens = self._shrink_budget(batch_tokens, lengths[batch[0]], exc)
                    pending = plan_batches_subset(lengths, batch, batch_tokens) + pending
                    continue
                for index, value in zip(batch, values, strict=True):
                    out[index] = value
        return out

    def _tokenize(self, pairs: list[tuple[str, str]], max_length: int) -> dict[str, list[list[int]]]:
        texts = [text for _, text in pairs]
        # "longest_first" truncation, as CrossEncoder.predict does, so scores match it exactly.
        with self._tokenizer_lock:
            bounded: dict[str, str] = {}
            queries = []
            for query, _ in pairs:
                if query not in bounded:
                    bounded[query] = self._bounded(query, max_length)
                queries.append(bounded[query])
            return self.tokenizer(queries, texts, truncation="longest_first", max_length=max_length, padding=False)

    def _bounded(self, query: str, max_length: int) -> str:
        """``query`` cut a few tokens past ``max_length`` (once per request, not once per pair).

        Truncation keeps at most ``max_length`` of its tokens, so the cut changes no score; without it
        a long query would be tokenized in full beside every document (memory x documents).
        """
        if len(query) <= QUERY_CHARS_PER_TOKEN * max_length or not getattr(self.tokenizer, "is_fast", False):
            return query
        keep = max_length + QUERY_CUT_MARGIN
        encoded = self.tokenizer(
            query, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=keep
        )
        offsets = encoded["offset_mapping"]
        return query[: offsets[-1][1]] if len(offsets) >= keep else query

    @torch.inference_mode()
    def _forward(self, encoded: dict[str, list[list[int]]], batch: list[int]) -> list[float]:
        features = self._pad(encoded, batch)
        logits = self.network(**features).logits.float()  # upcast before anything else: fp16 ties
        if self.num_labels == 2:
            # Two-class rerankers: the log-odds of "relevant", so sigmoid() gives its softmax probability.
            return (logits[:, 1] - logits[:, 0]).tolist()
        return logits[:, 0].tolist()

    def _pad(self, encoded: dict[str, list[list[int]]], batch: list[int]) -> dict[str, torch.Tensor]:
        width = max(len(encoded["input_ids"][i]) for i in batch)
        pad_ids = {"input_ids": self.tokenizer.pad_token_id or 0, "token_type_ids": 0, "attention_mask": 0}
        features = {}
        for name in ("input_ids", "token_type_ids", "attention_mask"):
            if name not in encoded:
                continue
            tensor = torch.full((len(batch), width), pad_ids[name], dtype=torch.long)
            for row, index in enumerate(batch):
                values = encoded[name][index]
                tensor[row, : len(values)] = torch.tensor(values, dtype=torch.long)
            features[name] = tensor.to(self.device, non_blocking=True)
        return features

    def _shrink_budget(self, batch_tokens: int, longest: int, exc: BaseException) -> int:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if batch_tokens <= longest:
            raise LocalBackendError(
                f"{self.weights.model_id}: out of memory on {self.device} even for one pair of {longest} tokens; "
                "lower max_length or use another device"
            ) from exc
        smaller = max(batch_tokens // 2, longest)
        logger.warning(
            "%s: out of memory on %s; batch budget %d -> %d tokens",
            self.weights.model_id,
            self.device,
            batch_tokens,
            smaller,
        )
        return smaller


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def plan_batches_subset(lengths: list[int], indices: list[int], max_tokens: int) -> list[list[int]]:
    """Re-plan only ``indices`` (a batch that failed) under a smaller budget."""
    sub = plan_batches([lengths[i] for i in indices], max_tokens)
    return [[indices[j] for j in batch] for batch in sub]


_loaded: dict[_LoadKey, LocalModel] = {}
_load_locks: dict[_LoadKey, threading.Lock] = {}
_registry_lock = threading.Lock()


def load_model(weights: LocalWeights, device: str, dtype: torch.dtype) -> LocalModel:
    """The process-wide model for (weights, device, dtype), loaded once even under concurrency."""
    key = _LoadKey(str(weights.path), weights.revision, device, dtype)
    with _registry_lock:
        if key in _loaded:
            return _loaded[key]
        lock = _load_locks.setdefault(key, threading.Lock())
    with lock:
        with _registry_lock:
            if key in _loaded:
                return _loaded[key]
        try:
            model = LocalModel(weights, device, dtype)
        except DheeraError:
            raise
        except Exception as exc:  # torch, transformers and oneDNN raise many types: translated here, once
            raise LocalBackendError(
                f"{weights.model_id}: could not be prepared on {device} as {dtype_name(dtype)}: {exc}"
            ) from exc
        with _registry_lock:
            _loaded[key] = model
        logger.info("loaded %s on %s as %s", weights.model_id, device, dtype_name(dtype))
        return model


def unload_all() -> None:
    """Forget every loaded model (frees memory once callers drop their references)."""
    with _registry_lock:
        _loaded.clear()
        _load_locks.clear()


class LocalBackend:
    """Scores with local weights. The model loads on first use, not at construction."""

    name = "local"

    def __init__(
        self,
        weights: LocalWeights,
        *,
        max_length: int,
        device: str | None = None,
        dtype: str | None = None,
        batch_tokens: int | None = None,
    ) -> None:
        self.weights = weights
        self.max_length = max_length
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_tokens = batch_tokens or default_batch_tokens(self.device)

    def model(self) -> LocalModel:
        """The loaded model (loading it now if this process has not yet); raises LocalBackendError."""
        return load_model(self.weights, self.device, self.dtype)

    def is_loaded(self) -> bool:
        """True when this process already holds the model (``model()`` returns at once)."""
        with _registry_lock:
            return self._load_key() in _loaded

    def numerics_known(self) -> bool:
        """True when :meth:`numerics` returns without loading the model."""
        return self.dtype == torch.float32 or self.is_loaded()

    def numerics(self) -> str:
        """``float32`` on any device; reduced precision also names the device type and the kernels
        (known once loaded: the load-time check may turn packing off)."""
        if self.dtype == torch.float32:
            return "float32"
        return f"{dtype_name(self.dtype)}/{torch.device(self.device).type}/{self.model().kernels}"

    def score(self, query: str, texts: list[str]) -> list[float]:
        return self.score_pairs([(query, text) for text in texts])

    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Raw logits for pairs with any queries (the server's micro-batcher merges requests).

        Every failure is a LocalBackendError, so ``backend="auto"`` falls back to the next candidate.
        """
        model = self.model()
        try:
            return model.logits(pairs, self.max_length, self.batch_tokens)
        except DheeraError:
            raise
        except Exception as exc:  # torch raises RuntimeError, IndexError, ...: the one boundary
            raise LocalBackendError(
                f"{self.weights.model_id}: inference failed on {self.device}: {type(exc).__name__}: {exc}"
            ) from exc

    def _load_key(self) -> _LoadKey:
        return _LoadKey(str(self.weights.path), self.weights.revision, self.device, self.dtype)

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        return await asyncio.to_thread(self.score, query, texts)

    async def ascore_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        return await asyncio.to_thread(self.score_pairs, pairs)

    def describe(self) -> dict[str, str]:
        details = {"device": self.device, "dtype": dtype_name(self.dtype), "path": str(Path(self.weights.path))}
        with _registry_lock:
            loaded = _loaded.get(self._load_key())
        if loaded is not None:
            details["kernels"] = loaded.kernels
        return details
