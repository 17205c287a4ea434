"""Backend choice, in one place, by the documented rule: a model and options become a :class:`Plan`.

``backend="auto"``: the local backend when the weights are on this machine, then the remote one
(``api_base`` when given, else the HuggingFace hosted API). ``backend="local"`` / ``"remote"``
force one. The plan lists the candidates in the order they are tried; the orchestrator falls back
along it.

The endpoint's wire format is ``api_format`` when given (a registered provider,
:mod:`dheera_local.providers`: ``tei``, ``cohere``, ``hf``, ...), else the spelling's default: TEI for
``huggingface/ORG/NAME``, Cohere-compatible for any other name (bare ``ORG/NAME`` included). Without
``api_base``, a provider with a ``default_api_base`` is called there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .._backend import Backend, ModelBackend
from .._errors import InvalidRequestError, ModelNotAvailableError
from .._models.catalog import check_cross_encoder, lookup
from .._models.discovery import LocalWeights, configured_max_length, did_you_mean, find_local_weights
from .._models.identity import ModelIdentity
from .._models.llm_templates import resolve_prompt, template_for_folder, template_for_name
from .._models.model_ref import HF_PREFIX, ModelKind, ModelRef
from .._options import RerankOptions, normalize_api_base
from .._settings import Settings
from ..providers import get_provider
from .factory import Backends

DEFAULT_MAX_LENGTH = 512
# The spelling's wire format when api_format is not given (LiteLLM's conventions): HF hosted inference for a hub
# model without api_base; with api_base, TEI for ``huggingface/ORG/NAME`` and Cohere's for any other name.
HOSTED = "hf"
HUB_ENDPOINT = "tei"
NAMED_ENDPOINT = "cohere"


@dataclass
class Plan:
    """What will serve a request: the model's identity and the backends to try, in order.

    ``identity`` is the model as planned (its local weights' revision when they are here).
    ``local`` is the local backend when it is a candidate, always the first (``candidates[0]`` may be it
    wrapped);
    ``weights`` are the local weights found, candidate or not (their tokenizer windows documents).
    ``bases[i]`` is the identity candidate ``i`` scores under; :meth:`cache_identity` adds its numerics.
    """

    identity: ModelIdentity
    candidates: list[Backend]
    local: ModelBackend | None = None
    weights: LocalWeights | None = None
    bases: list[ModelIdentity] = field(default_factory=list)

    def cache_identity(self, index: int) -> ModelIdentity:
        """What candidate ``index``'s scores are cached under. May load a local model (reduced
        precision: its kernels are part of the numerics); raises BackendError when that fails."""
        return dataclasses.replace(self.bases[index], numerics=self.candidates[index].numerics())

    @property
    def max_length(self) -> int:
        """Tokens per pair the model reads: its identity's, else (an endpoint's model, not known here) the
        default. Long documents are windowed to it."""
        return self.identity.max_length or DEFAULT_MAX_LENGTH

    @property
    def backend_names(self) -> tuple[str, ...]:
        return tuple(backend.name for backend in self.candidates)


class Selector:
    """Turns a model reference and options into a :class:`Plan` (file checks only: nothing loads)."""

    def __init__(self, backends: Backends, settings: Settings) -> None:
        self.backends = backends
        self.settings = settings

    def plan(self, ref: ModelRef, options: RerankOptions) -> Plan:
        if ref.kind is ModelKind.NAMED:
            return self._plan_named(ref, options)
        weights = find_local_weights(ref, self.settings.hub_cache)
        # An unreadable config is left to the load, which fails inside the fallback loop.
        check_cross_encoder(ref.hub_id, weights.path if weights is not None else None, strict=False)
        if options.max_length and weights is not None and options.backend in ("auto", "local"):
            _check_fits(options.max_length, weights)
        max_length = options.max_length or _default_max_length(ref, weights)
        template = template_for_folder(weights.path) if weights is not None else template_for_name(ref.hub_id)
        prompt = _prompt(template, ref.text, options)
        keyed = f"{template.name}:{prompt}" if template is not None else ""
        remote_identity = ModelIdentity(ref.hub_id or ref.text, "remote", max_length, prompt=keyed)
        identity = remote_identity
        if weights is not None:
            identity = ModelIdentity(weights.model_id, weights.revision, max_length, prompt=keyed)
        plan = Plan(identity, [], weights=weights)
        if options.backend in ("auto", "local") and weights is not None:
            plan.local = self.backends.local(
                weights, max_length=max_length, device=options.device, dtype=options.dtype,
                batch_tokens=options.batch_tokens, prompt=prompt, identity=identity,
            )  # fmt: skip
            plan.candidates.append(self.backends.serve(plan.local))
            plan.bases.append(identity)
        # A remote endpoint applies its own template: it cannot honour an instruction or prompt given here.
        if options.backend in ("auto", "remote") and ref.kind is ModelKind.HUB and not _given_prompt(options):
            remote = self._hub_remote(ref, options)
            if remote is not None:
                plan.candidates.append(remote)
                plan.bases.append(remote_identity)
        if not plan.candidates:
            option = _given_prompt(options)
            if option:
                fix = "use backend='auto' or 'local'" if weights is not None else (
                    f"no weights for {ref.text} are on this machine: run `dheera-local pull {ref.hub_id or ref.text}`"
                )  # fmt: skip
                raise InvalidRequestError(
                    f"{option} is applied by the local engine only (a remote endpoint uses its own template); {fix}",
                    field=option,
                )
            raise ModelNotAvailableError(_not_available_message(ref, options, self.settings))
        return plan

    def _hub_remote(self, ref: ModelRef, options: RerankOptions) -> Backend | None:
        assert ref.hub_id is not None
        if options.api_base:
            default = HUB_ENDPOINT if ref.text.startswith(HF_PREFIX) else NAMED_ENDPOINT
            return self.backends.endpoint(options.api_format or default, options, model=ref.name)
        if options.api_format not in (None, HOSTED):
            if _provider_base(options) is None:
                raise InvalidRequestError(
                    f"api_format={options.api_format!r} needs api_base (the endpoint's URL)", field="api_format"
                )
            return self.backends.endpoint(options.api_format, options, model=ref.name)  # the provider's own API
        if self.settings.hub_offline:
            return None
        return self.backends.endpoint(HOSTED, options, model=ref.hub_id)

    def _plan_named(self, ref: ModelRef, options: RerankOptions) -> Plan:
        api_base = _provider_base(options)
        if options.backend == "local" or not api_base:
            raise ModelNotAvailableError(_not_available_message(ref, options, self.settings))
        option = _given_prompt(options)
        if option:
            raise InvalidRequestError(
                f"{option} is applied by the local engine only; {ref.text!r} is served by an endpoint, which uses "
                "its own template",
                field=option,
            )
        backend = self.backends.endpoint(options.api_format or NAMED_ENDPOINT, options, model=ref.name)
        template = template_for_name(ref.name)
        prompt = _prompt(template, ref.text, options)
        keyed = f"{template.name}:{prompt}" if template is not None else ""
        identity = ModelIdentity(
            f"{normalize_api_base(api_base)}#{ref.name}", "remote", options.max_length or 0, prompt=keyed
        )
        return Plan(identity, [backend], bases=[identity])


def _provider_base(options: RerankOptions) -> str | None:
    """``api_base``, else the default API of the provider ``api_format`` names (None: neither)."""
    if options.api_base or options.api_format is None:
        return options.api_base
    return get_provider(options.api_format).default_api_base


def _prompt(template: object, model: str, options: RerankOptions) -> str | None:
    """An LLM reranker's prompt text (its option, else its default); refuses a prompt option elsewhere."""
    return resolve_prompt(template, model, {"instruction": options.instruction, "prompt": options.prompt})  # type: ignore[arg-type]


def _given_prompt(options: RerankOptions) -> str | None:
    """The name of the prompt option the request sets (``instruction`` or ``prompt``), if any."""
    return "instruction" if options.instruction is not None else "prompt" if options.prompt is not None else None


def _check_fits(max_length: int, weights: LocalWeights) -> None:
    """Rejects a ``max_length`` past the model's positions: torch would fail on the first long document
    only, so a request would work or not depending on its data (and under auto, fall back remote)."""
    limit = configured_max_length(weights.path)
    if limit is not None and max_length > limit:
        raise InvalidRequestError(
            f"max_length {max_length} exceeds the {limit} tokens {weights.model_id} accepts; use max_length <= {limit}",
            field="max_length",
        )


def _default_max_length(ref: ModelRef, weights: LocalWeights | None) -> int:
    known = lookup(ref.hub_id)
    if known is not None:
        return known.max_length
    configured = configured_max_length(weights.path) if weights is not None else None
    return min(configured, DEFAULT_MAX_LENGTH * 2) if configured else DEFAULT_MAX_LENGTH


def _not_available_message(ref: ModelRef, options: RerankOptions, settings: Settings) -> str:
    if ref.kind is ModelKind.NAMED:
        if options.backend == "local":
            return f"model {ref.text!r} is not a hub id (ORG/NAME) or a local folder, so it cannot run locally"
        return (
            f"model {ref.text!r} is not a hub id (ORG/NAME) or a local model folder. To call a Cohere-compatible "
            "server (e.g. a dheera-local proxy) that serves it, pass api_base"
        )
    if ref.kind is ModelKind.PATH:
        return f"model folder {ref.path} cannot be served remotely; use backend='local' or 'auto'"
    where = settings.hub_cache
    suggestion = did_you_mean(ref.hub_id, where) if ref.hub_id else ""
    if options.backend == "local":
        return (
            f"{ref.hub_id}: no weights on this machine (looked in {where}).{suggestion} Fix: run "
            f"`dheera-local pull {ref.hub_id}` while online, or copy a snapshot into that cache (HF_HOME), "
            "or pass a local model folder as model"
        )
    return (
        f"{ref.hub_id}: no weights on this machine (looked in {where}) and HF_HUB_OFFLINE forbids the "
        f"HuggingFace hosted API.{suggestion} Fix: run `dheera-local pull {ref.hub_id}` while online, "
        "unset HF_HUB_OFFLINE "
        "and set HF_TOKEN, or pass api_base for your own endpoint"
    )
