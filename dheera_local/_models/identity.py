"""A model as the engine plans it: the one identity type the cache key, the model store and the
micro-batcher read.

Planning makes it (:mod:`dheera_local._engine.plan`: which weights, read how); the local backend adds
where and how they run (device, precision, kernels, token budget). Each reader takes the fields that
decide its question, so one planned model has one identity, not three spellings of it:

* the score cache (:func:`dheera_local._cache.store.cache_key`): ``model_id``, ``revision``, ``max_length``,
  ``numerics``, ``prompt`` — what makes two scores interchangeable;
* the model store (:meth:`ModelIdentity.loaded`): ``path``, ``revision``, ``device``, ``dtype``, ``cpu_kernels``
  — what makes two loaded models one copy in memory;
* the proxy's micro-batcher: all of it — one queue per model and token budget.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelIdentity:
    """What makes two scores interchangeable (the first five fields), and where a local model runs.

    ``numerics`` is ``float32`` for local fp32 (any device), ``<dtype>/<device>/<kernels>`` for local
    reduced precision, ``<backend>:<endpoint>`` for a remote one; empty while not yet decided.
    ``prompt``: an LLM reranker's template and prompt text (``qwen3:<instruction>``); empty for a
    cross-encoder, whose keys then stay as they were. The local fields are empty for a remote model and
    never part of a cache key (scores do not depend on the folder they were read from).
    """

    model_id: str
    revision: str
    max_length: int
    numerics: str = ""
    prompt: str = ""
    # Where and how a local model runs, filled by the local backend.
    path: str = ""
    device: str = ""
    dtype: str = ""  # the torch dtype's name: float32, bfloat16, float16, int8
    cpu_kernels: str = ""
    batch_tokens: int = 0

    def loaded(self) -> ModelIdentity:
        """The fields that make one loaded model (the model store's key): the same weights, device,
        precision and kernels share one copy, whatever the max_length, prompt or token budget."""
        return ModelIdentity(
            self.model_id, self.revision, 0,
            path=self.path, device=self.device, dtype=self.dtype, cpu_kernels=self.cpu_kernels,
        )  # fmt: skip
