"""Backend choice, in one place, by the documented rule.

``backend="auto"``: the local backend when the weights are on this machine, then the remote one
(``api_base`` when given: TEI-compatible for ``huggingface/ORG/NAME``, Cohere-compatible for any
name without that prefix, bare ``ORG/NAME`` included; else the HuggingFace hosted API).
``backend="local"`` / ``"remote"`` force one. The plan lists the candidates in the order they are
tried; the orchestrator falls back along it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from ._cache import ModelIdentity
from ._catalog import lookup
from ._discovery import configured_max_length, find_local_weights, hub_cache_dir, hub_offline
from ._errors import ModelNotAvailableError, UnsupportedModelError
from ._model_ref import HF_PREFIX, ModelKind, ModelRef
from ._request import RerankOptions
from .backends.base import Backend
from .backends.local import LocalBackend
from .backends.remote import RemoteFactory

DEFAULT_MAX_LENGTH = 512


@dataclass
class Plan:
    """What will serve a request: the model's identity and the backends to try, in order.

    ``identity`` is the model as planned (its local weights' revision when they are here).
    ``bases[i]`` is the identity candidate ``i`` scores under (local weights, or the remote model);
    :meth:`cache_identity` completes it with that backend's numerics.
    """

    identity: ModelIdentity
    candidates: list[Backend]
    local: LocalBackend | None = None
    bases: list[ModelIdentity] = field(default_factory=list)

    def cache_identity(self, index: int) -> ModelIdentity:
        """What candidate ``index``'s scores are cached under. May load a local model (reduced
        precision: its kernels are part of the numerics); raises BackendError when that fails."""
        return dataclasses.replace(self.bases[index], numerics=self.candidates[index].numerics())


class Selector:
    """Turns a model reference and options into a :class:`Plan`."""

    def __init__(self, remote: RemoteFactory, local_wrapper: Callable[[LocalBackend], Backend] | None = None) -> None:
        self.remote = remote
        self.local_wrapper = local_wrapper

    def plan(self, ref: ModelRef, options: RerankOptions) -> Plan:
        if ref.kind is ModelKind.NAMED:
            return self._plan_named(ref, options)
        _refuse_non_cross_encoders(ref)
        weights = find_local_weights(ref)
        max_length = options.max_length or _default_max_length(ref, weights)
        local = None
        remote_identity = ModelIdentity(ref.hub_id or ref.text, "remote", max_length)
        identity = remote_identity
        if weights is not None:
            local = LocalBackend(
                weights,
                max_length=max_length,
                device=options.device,
                dtype=options.dtype,
                batch_tokens=options.batch_tokens,
            )
            identity = ModelIdentity(weights.model_id, weights.revision, max_length)
        candidates: list[Backend] = []
        bases: list[ModelIdentity] = []
        if options.backend in ("auto", "local") and local is not None:
            candidates.append(self.local_wrapper(local) if self.local_wrapper else local)
            bases.append(identity)
        if options.backend in ("auto", "remote") and ref.kind is ModelKind.HUB:
            remote = self._hub_remote(ref, options)
            if remote is not None:
                candidates.append(remote)
                bases.append(remote_identity)
        if not candidates:
            raise ModelNotAvailableError(_not_available_message(ref, options))
        return Plan(identity, candidates, local, bases)

    def _hub_remote(self, ref: ModelRef, options: RerankOptions) -> Backend | None:
        assert ref.hub_id is not None
        if options.api_base:
            if ref.text.startswith(HF_PREFIX):
                return self.remote.tei(options.api_base, options.api_key, options.timeout)
            # Without the provider prefix the endpoint is Cohere-compatible (e.g. another dheera-local).
            return self.remote.cohere(options.api_base, ref.name, options.api_key, options.timeout)
        if hub_offline():
            return None
        return self.remote.hf_hosted(ref.hub_id, options.api_key, options.timeout)

    def _plan_named(self, ref: ModelRef, options: RerankOptions) -> Plan:
        if options.backend == "local" or not options.api_base:
            raise ModelNotAvailableError(_not_available_message(ref, options))
        backend = self.remote.cohere(options.api_base, ref.name, options.api_key, options.timeout)
        identity = ModelIdentity(f"{options.api_base.rstrip('/')}#{ref.name}", "remote", options.max_length or 0)
        return Plan(identity, [backend], bases=[identity])


def _refuse_non_cross_encoders(ref: ModelRef) -> None:
    known = lookup(ref.hub_id)
    if known is not None and not known.is_cross_encoder:
        raise UnsupportedModelError(
            f"{known.hub_id} is an {known.kind} (an LLM that scores a 'Yes' token), not a cross-encoder; "
            "loading it as one would score with a randomly initialised head. Use a cross-encoder such as "
            "BAAI/bge-reranker-v2-m3 (`dheera-local models` lists them)."
        )


def _default_max_length(ref: ModelRef, weights: object) -> int:
    known = lookup(ref.hub_id)
    if known is not None:
        return known.max_length
    folder = getattr(weights, "path", None)
    configured = configured_max_length(folder) if folder is not None else None
    return min(configured, DEFAULT_MAX_LENGTH * 2) if configured else DEFAULT_MAX_LENGTH


def _not_available_message(ref: ModelRef, options: RerankOptions) -> str:
    if ref.kind is ModelKind.NAMED:
        if options.backend == "local":
            return f"model {ref.text!r} is not a hub id (ORG/NAME) or a local folder, so it cannot run locally"
        return (
            f"model {ref.text!r} is not a hub id (ORG/NAME) or a local model folder. To call a Cohere-compatible "
            "server (e.g. a dheera-local proxy) that serves it, pass api_base"
        )
    if ref.kind is ModelKind.PATH:
        return f"model folder {ref.path} cannot be served remotely; use backend='local' or 'auto'"
    where = hub_cache_dir()
    if options.backend == "local":
        return (
            f"{ref.hub_id}: no weights on this machine (looked in {where}). Fix: run "
            f"`dheera-local pull {ref.hub_id}` while online, or copy a snapshot into that cache (HF_HOME), "
            "or pass a local model folder as model"
        )
    return (
        f"{ref.hub_id}: no weights on this machine (looked in {where}) and HF_HUB_OFFLINE forbids the "
        f"HuggingFace hosted API. Fix: run `dheera-local pull {ref.hub_id}` while online, unset HF_HUB_OFFLINE "
        "and set HF_TOKEN, or pass api_base for your own endpoint"
    )
