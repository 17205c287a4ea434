"""Downloading weights into the huggingface_hub cache, so later runs work offline."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from ._catalog import lookup
from ._discovery import LocalWeights, find_in_hub_cache, hub_cache_dir, hub_offline, missing_files
from ._errors import ModelNotAvailableError, UnsupportedModelError
from ._model_ref import ModelKind, parse_model
from ._secrets import quote

# What the local backend reads; ONNX/OpenVINO exports and training files stay on the hub.
_ALWAYS = ["*.json", "*.txt", "*.model", "*.tiktoken"]


def _weight_patterns(files: list[str]) -> list[str]:
    top_level = [f for f in files if "/" not in f]
    if any(f.endswith(".safetensors") for f in top_level):
        return ["*.safetensors"]
    return ["*.bin"]


def offline_hint(hub_id: str) -> str:
    """How to provide weights without network, in one sentence."""
    return (
        f"to provide them offline, copy a snapshot of {hub_id} into {hub_cache_dir()} "
        "(models--ORG--NAME/snapshots/<rev>/ plus refs/main), or pass a local model folder as the model"
    )


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached, when its name does not even resolve (fails in ms, not retries)."""
    from huggingface_hub import constants

    host = urlsplit(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        return f"{host} cannot be resolved ({exc.strerror or exc}), this machine looks offline"
    return None


def pull(model: str, revision: str | None = None) -> LocalWeights:
    """Download ``model``'s weights, config and tokenizer into the HF cache (with a progress bar).

    Raises:
        ModelNotAvailableError: Offline, unknown repo, gated without a token, or incomplete download.
    """
    ref = parse_model(model)
    if ref.kind is not ModelKind.HUB or ref.hub_id is None:
        raise ModelNotAvailableError(f"{model!r} is not a hub id (ORG/NAME); nothing to pull")
    hub_id = ref.hub_id
    known = lookup(hub_id)
    if known is not None and not known.is_cross_encoder:
        raise UnsupportedModelError(f"{hub_id} is an {known.kind}, not a cross-encoder dheera_local can score")
    if hub_offline():
        raise ModelNotAvailableError(f"cannot download {hub_id}: HF_HUB_OFFLINE is set; {offline_hint(hub_id)}")
    unreachable = _hub_unreachable()
    if unreachable:
        raise ModelNotAvailableError(f"cannot download {hub_id}: {unreachable}; {offline_hint(hub_id)}")
    try:
        from huggingface_hub import HfApi, snapshot_download

        files = HfApi().list_repo_files(hub_id, revision=revision)
        folder = snapshot_download(
            hub_id, revision=revision, cache_dir=str(hub_cache_dir()), allow_patterns=_ALWAYS + _weight_patterns(files)
        )
    except Exception as exc:  # huggingface_hub and httpx raise many types; all mean "not downloaded"
        reason = quote(" ".join(str(exc).split()), 200) or type(exc).__name__
        raise ModelNotAvailableError(f"cannot download {hub_id} ({reason}); {offline_hint(hub_id)}") from exc
    weights = find_in_hub_cache(hub_id)
    if weights is None:
        from pathlib import Path

        lacking = ", ".join(missing_files(Path(folder)))
        raise ModelNotAvailableError(f"{hub_id} downloaded to {folder} but lacks {lacking}; it cannot be loaded")
    return weights
