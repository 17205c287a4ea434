"""The local backend: a cross-encoder on this machine's CPU or GPU, loaded on first use.

Planning a local model resolves its device and precision (that imports torch); the model itself
(sentence-transformers, :mod:`dheera_local._local.torch_model`) loads on the first score. Loaded models live in a
:class:`ModelStore`, one per (weights, device, dtype), shared by every thread of the process; the
runtime owns the shared store and closes it (:func:`dheera_local.close_all`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .._errors import DheeraError, LocalBackendError
from .._models.discovery import LocalWeights
from .._models.identity import ModelIdentity
from .._models.llm_templates import family_generation, template_for_folder
from .hardware import dtype_name, resolve_device, resolve_dtype
from .kernel_verdicts import VerdictStore

if TYPE_CHECKING:
    from .torch_model import LocalModel

logger = logging.getLogger("dheera_local")

# CPU: 2,048 padded tokens keep a batch's activations near the cores' caches and its padding near 5%
# (12.9% at 4,096 on mixed-length documents); measured 1.08-1.20x the pairs/s of 4,096 on a MiniLM body
# and a bge-reranker-base twin, AVX-512 and AVX2 alike (README, Batching).
DEFAULT_BATCH_TOKENS = {"cuda": 32768, "mps": 8192, "cpu": 2048}


def default_batch_tokens(device: str) -> int:
    """Padded tokens per forward pass: large on GPUs, cache-friendly on CPUs."""
    return DEFAULT_BATCH_TOKENS.get(device.split(":", 1)[0], DEFAULT_BATCH_TOKENS["cpu"])


class ModelStore:
    """Loaded models, each loaded once even under concurrency, keyed by :meth:`ModelIdentity.loaded`.
    Thread-safe; ``clear`` forgets them all.

    A failed load is remembered for ``retry_failed_after`` seconds, or until an LLM family is registered or
    unregistered (a fixed ``encode`` is tried at once): requests meanwhile fail at once
    (and fall back) instead of reading broken weights again each time.
    """

    def __init__(self, retry_failed_after: float = 60.0) -> None:
        self._loaded: dict[ModelIdentity, LocalModel] = {}
        # When, why, and under which family generation each load failed.
        self._failed: dict[ModelIdentity, tuple[float, LocalBackendError, int]] = {}
        self._locks: dict[ModelIdentity, threading.Lock] = {}
        self._lock = threading.Lock()
        # Bumped by clear(): a load that started before it hands its model to its caller but does not keep it.
        self._generation = 0
        # The LLM family registry's generation each model was last known to be scored right under.
        self._families: dict[ModelIdentity, int] = {}
        self.retry_failed_after = retry_failed_after

    def get(self, key: ModelIdentity) -> LocalModel | None:
        """The model for ``key`` if it is loaded, else None (never loads)."""
        with self._lock:
            return self._loaded.get(key)

    def recent_failure(self, key: ModelIdentity) -> LocalBackendError | None:
        """Why loading ``key`` failed, if it did less than ``retry_failed_after`` seconds ago."""
        with self._lock:
            failed = self._failed.get(key)
        if failed is None or time.monotonic() - failed[0] >= self.retry_failed_after:
            return None
        if failed[2] != family_generation():  # a family was (re)registered since: it may load now
            return None
        return LocalBackendError(f"{failed[1]} (failed to load {time.monotonic() - failed[0]:.0f} s ago)")

    def load(self, weights: LocalWeights, key: ModelIdentity, verdicts: VerdictStore | None = None) -> LocalModel:
        """The model for ``key``, loading it now if needed; every failure is a LocalBackendError.
        ``verdicts``: where the kernel check's verdicts are remembered (None: the check always runs)."""
        while True:
            with self._lock:
                if key in self._loaded and self._family_current(key):
                    return self._loaded[key]
                lock = self._locks.setdefault(key, threading.Lock())
                generation = self._generation
            with lock:
                with self._lock:
                    stale = generation != self._generation  # cleared while waiting: queue on the new lock
                if not stale:
                    return self._load_once(weights, key, generation, verdicts)

    def _load_once(
        self, weights: LocalWeights, key: ModelIdentity, generation: int, verdicts: VerdictStore | None = None
    ) -> LocalModel:
        """Load ``key`` (its lock held), keeping the result unless the store was cleared meanwhile."""
        with self._lock:
            if key in self._loaded and self._family_current(key):
                return self._loaded[key]
        failure = self.recent_failure(key)
        if failure is not None:
            raise failure
        families = family_generation()  # read before the load looks the family up: a change meanwhile is rechecked
        try:
            model = _load(weights, key, verdicts)
        except LocalBackendError as exc:
            with self._lock:
                if generation == self._generation:
                    self._failed[key] = (time.monotonic(), exc, families)
            raise
        with self._lock:
            if generation == self._generation:
                self._loaded[key] = model
                self._families[key] = families
                self._failed.pop(key, None)
        logger.info("loaded %s on %s as %s", weights.model_id, key.device, key.dtype)
        return model

    def clear(self) -> None:
        """Forget every loaded model (frees memory once callers drop their references)."""
        with self._lock:
            self._generation += 1
            self._loaded.clear()
            self._failed.clear()
            self._locks.clear()
            self._families.clear()

    def _family_current(self, key: ModelIdentity) -> bool:
        """True unless the LLM family registry changed since ``key`` loaded and now scores its folder with another
        family (or none): a re-registered family's model must not keep the old prompt and write its scores under
        the new family's cache keys. Then the model is dropped, to load again. Called with the lock held; reads
        config.json only after a registry change."""
        current = family_generation()
        if self._families.get(key) == current:
            return True
        if template_for_folder(Path(key.path)) is getattr(self._loaded[key], "template", None):
            self._families[key] = current
            return True
        del self._loaded[key]
        self._families.pop(key, None)
        return False


def _load(weights: LocalWeights, key: ModelIdentity, verdicts: VerdictStore | None) -> LocalModel:
    try:
        dtype = resolve_dtype(key.dtype, key.device)
        template = template_for_folder(weights.path)
        if template is not None:  # a decoder-only reranker: scored through its prompt template
            from .llm_model import LlmModel

            model = LlmModel(weights, key.device, dtype, template, cpu_kernels=key.cpu_kernels)
            return model  # type: ignore[return-value]
        from .torch_model import LocalModel

        return LocalModel(weights, key.device, dtype, key.cpu_kernels, verdicts)
    except DheeraError:
        raise
    except Exception as exc:  # torch, transformers and oneDNN raise many types: translated here, once
        raise LocalBackendError(
            f"{weights.model_id}: could not be prepared on {key.device} as {key.dtype}: {exc}"
        ) from exc


SHARED_MODELS = ModelStore()  # the process's store; the runtime owns it (dheera_local.close_all)


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
        cpu_kernels: str = "auto",
        models: ModelStore | None = None,
        prompt: str | None = None,
        verdicts: VerdictStore | None = None,
        identity: ModelIdentity | None = None,
    ) -> None:
        self.weights = weights
        # An LLM reranker's prompt or instruction (None: a cross-encoder, or the template's default).
        self.prompt = prompt
        self.max_length = max_length
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_tokens = batch_tokens or default_batch_tokens(self.device)
        self.models = models if models is not None else SHARED_MODELS
        self.verdicts = verdicts
        # The plan's identity (the cache's fields), completed with where and how the model runs.
        planned = identity or ModelIdentity(weights.model_id, weights.revision, max_length, prompt=prompt or "")
        self.identity = dataclasses.replace(
            planned, path=str(weights.path), device=self.device, dtype=dtype_name(self.dtype),
            cpu_kernels=cpu_kernels, batch_tokens=self.batch_tokens,
        )  # fmt: skip
        self._key = self.identity.loaded()

    def model(self) -> LocalModel:
        """The loaded model (loading it now if this process has not yet); raises LocalBackendError."""
        return self.models.load(self.weights, self._key, self.verdicts)

    def prepare(self) -> None:
        """Load the model now (a server's startup, a Ray actor), not inside the first request."""
        self.model()

    def is_loaded(self) -> bool:
        """True when the store already holds the model (``model()`` returns at once)."""
        return self.models.get(self._key) is not None

    def numerics_known(self) -> bool:
        """True when :meth:`numerics` returns without loading the model."""
        return dtype_name(self.dtype) == "float32" or self.is_loaded()

    def numerics(self) -> str:
        """``float32`` on any device; reduced precision also names the device type and the kernels
        (known once loaded: the load-time check may turn packing off). Raises LocalBackendError while
        the model recently failed to load, so a cached fallback's scores are found without it."""
        if dtype_name(self.dtype) == "float32":
            failure = self.models.recent_failure(self._key)
            if failure is not None:
                raise failure
            return "float32"
        return f"{dtype_name(self.dtype)}/{self.device.split(':', 1)[0]}/{self.model().kernels}"

    def score(self, query: str, texts: list[str]) -> list[float]:
        return self.score_pairs([(query, text) for text in texts])

    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Raw logits for pairs with any queries (the server's micro-batcher merges requests).

        Every failure is a LocalBackendError, so ``backend="auto"`` falls back to the next candidate.
        """
        model = self.model()
        try:
            if self.prompt is not None:
                return model.logits(pairs, self.max_length, self.batch_tokens, prompt=self.prompt)  # type: ignore[call-arg]
            return model.logits(pairs, self.max_length, self.batch_tokens)
        except DheeraError:
            raise
        except Exception as exc:  # torch raises RuntimeError, IndexError, ...: the one boundary
            raise LocalBackendError(
                f"{self.weights.model_id}: inference failed on {self.device}: {type(exc).__name__}: {exc}"
            ) from exc

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        return await asyncio.to_thread(self.score, query, texts)

    async def ascore_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        return await asyncio.to_thread(self.score_pairs, pairs)

    def describe(self) -> dict[str, str]:
        details = {"device": self.device, "dtype": dtype_name(self.dtype), "path": str(Path(self.weights.path))}
        loaded = self.models.get(self._key)
        if loaded is not None:
            details["kernels"] = loaded.kernels
        return details
