"""Downloading weights into the huggingface_hub cache, so later runs work offline."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from urllib.parse import urlsplit

from .._errors import ModelNotAvailableError
from .._secrets import quote
from .._settings import Settings
from .catalog import check_cross_encoder
from .discovery import LocalWeights, did_you_mean, find_in_hub_cache, missing_files
from .model_ref import ModelKind, parse_model

logger = logging.getLogger("dheera_local")

# What the local backend reads; ONNX/OpenVINO exports and training files stay on the hub.
_ALWAYS = ["*.json", "*.txt", "*.model", "*.tiktoken"]


def _weight_patterns(files: list[str]) -> list[str]:
    top_level = [f for f in files if "/" not in f]
    if any(f.endswith(".safetensors") for f in top_level):
        return ["*.safetensors"]
    return ["*.bin"]


def offline_hint(hub_id: str, hub_cache: Path) -> str:
    """How to provide weights without network, in one sentence."""
    return (
        f"To provide them offline, copy a snapshot of {hub_id} into {hub_cache} "
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


def pull(model: str, settings: Settings, revision: str | None = None) -> LocalWeights:
    """Download ``model``'s weights, config and tokenizer into the HF cache (with a progress bar).

    Raises:
        ModelNotAvailableError: Offline, unknown repo, gated without a token, or incomplete download.
    """
    ref = parse_model(model)
    if ref.kind is not ModelKind.HUB or ref.hub_id is None:
        raise ModelNotAvailableError(f"{model!r} is not a hub id (ORG/NAME); nothing to pull")
    hub_id = ref.hub_id
    check_cross_encoder(hub_id)
    hint = offline_hint(hub_id, settings.hub_cache)
    offline = "HF_HUB_OFFLINE is set" if settings.hub_offline else _hub_unreachable()
    if offline:
        here = find_in_hub_cache(hub_id, settings.hub_cache)
        if here is not None:  # nothing to copy in: say it is here, and that no newer revision was looked for
            logger.warning("%s is already on this machine; not checked for a newer revision (%s)", hub_id, offline)
            return here
        suggestion = did_you_mean(hub_id, settings.hub_cache)
        raise ModelNotAvailableError(
            f"cannot download {hub_id}: {offline}, and it is not in {settings.hub_cache} either.{suggestion} {hint}"
        )
    try:
        from huggingface_hub import HfApi, snapshot_download

        files = HfApi().list_repo_files(hub_id, revision=revision)
        patterns = _ALWAYS + _weight_patterns(files)
        cache_dir = str(settings.hub_cache)
        folder = snapshot_download(hub_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns)
    except Exception as exc:  # huggingface_hub and httpx raise many types; all mean "not downloaded"
        reason = quote(" ".join(str(exc).split()), 200) or type(exc).__name__
        suggestion = did_you_mean(hub_id, settings.hub_cache)
        raise ModelNotAvailableError(f"cannot download {hub_id} ({reason}).{suggestion} {hint}") from exc
    weights = find_in_hub_cache(hub_id, settings.hub_cache)
    if weights is None:
        lacking = ", ".join(missing_files(Path(folder)))
        raise ModelNotAvailableError(f"{hub_id} downloaded to {folder} but lacks {lacking}; it cannot be loaded")
    return weights
