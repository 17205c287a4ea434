"""The built-in providers, registered as a plugin registers its own (:func:`dheera_local.register_provider`).

Each ``make`` imports its backend module when first called: listing the providers (``--help``, the
``api_format`` check) imports no HTTP machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..providers import Endpoint, Provider, register_provider

if TYPE_CHECKING:
    from .cohere import CohereBackend
    from .hf_hosted import HFHostedBackend
    from .tei import TEIBackend


def make_tei(endpoint: Endpoint) -> TEIBackend:
    """TEI serves one model and ignores the name; its batch limits are read once per endpoint."""
    from .tei import EndpointLimits, TEIBackend

    assert endpoint.api_base is not None  # no default_api_base: the planner asks for one
    limits = endpoint.state.setdefault("limits", EndpointLimits())
    return TEIBackend(endpoint.api_base, limits, endpoint.clients, endpoint.retry, endpoint.api_key, endpoint.timeout)


def make_hf(endpoint: Endpoint) -> HFHostedBackend:
    """Text classification for ``model``: at ``api_base`` (an Inference Endpoint), else on HF hosted
    inference (the settings' URL). The token is ``api_key``, else the settings' HF token when the URL is
    HuggingFace's (:func:`~.hf_hosted.is_hf_host`): another server is not sent a token it was not made for."""
    from .hf_hosted import HFHostedBackend, is_hf_host

    settings = endpoint.settings
    url = endpoint.api_base or f"{settings.hf_inference_url}/models/{endpoint.model}"
    token = endpoint.api_key
    if token is None and is_hf_host(url, settings.hf_inference_url):
        token = settings.hf_token  # the environment's token goes to HuggingFace only
    return HFHostedBackend(url, endpoint.clients, endpoint.retry, token, endpoint.timeout)


def make_cohere(endpoint: Endpoint) -> CohereBackend:
    """A Cohere-compatible endpoint, sent ``model`` as the server knows it."""
    from .cohere import CohereBackend

    assert endpoint.api_base is not None
    return CohereBackend(
        endpoint.api_base, endpoint.model, endpoint.clients, endpoint.retry, endpoint.api_key, endpoint.timeout
    )


def is_cohere_api(api_base: str) -> bool:
    """True for Cohere's own API (https, its hosts), where ``CO_API_KEY`` belongs."""
    from .cohere import is_cohere_api as check

    return check(api_base)


register_provider(Provider("tei", make_tei, description="text-embeddings-inference's /rerank (and compatibles)"))
register_provider(
    Provider(
        "cohere", make_cohere, key_env=("CO_API_KEY", "COHERE_API_KEY"), key_hosts=is_cohere_api,
        description="a Cohere-compatible /rerank: Cohere, another dheera-local, infinity, Voyage",
    )
)  # fmt: skip
register_provider(
    Provider("hf", make_hf, description="HF text classification: hosted inference, or an Inference Endpoint's URL")
)
