"""Finding model weights on this machine, without any network call.

The hub cache folder comes from the settings (:mod:`.._settings`); without one, from the environment.

A model is "on the machine" when a local folder, or a snapshot in the huggingface_hub cache,
holds its config, its weights and its tokenizer. The revision found on disk (the snapshot's
commit, or a fingerprint of a plain folder's weight files) becomes part of the score-cache key,
so scores from different weights never mix.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .._settings import hub_cache_dir
from .model_ref import ModelKind, ModelRef

logger = logging.getLogger("dheera_local")

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "vocab.txt", "spm.model", "spiece.model")


@dataclass(frozen=True)
class LocalWeights:
    """A complete model folder on disk. ``model_id`` + ``revision`` identify the weights."""

    path: Path
    model_id: str
    revision: str


def missing_files(folder: Path) -> list[str]:
    """What a folder lacks to be a loadable model: config, weights, tokenizer."""
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not _has_weights(folder):
        missing.append(" or ".join(WEIGHT_FILES))
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append("a tokenizer (" + ", ".join(TOKENIZER_FILES) + ")")
    return missing


def _has_weights(folder: Path) -> bool:
    if any((folder / name).is_file() for name in WEIGHT_FILES):
        return True
    for index_name in SHARD_INDEXES:
        index = folder / index_name
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError):
                return False
            return all((folder / shard).is_file() for shard in shards)
    return False


def find_local_weights(ref: ModelRef, hub_cache: Path | None = None) -> LocalWeights | None:
    """The complete weights for ``ref`` on this machine (a folder, or a snapshot in ``hub_cache``), or None."""
    if ref.kind is ModelKind.PATH and ref.path is not None:
        if missing_files(ref.path):
            return None
        return LocalWeights(ref.path, str(ref.path), folder_fingerprint(ref.path))
    if ref.kind is ModelKind.HUB and ref.hub_id is not None:
        return find_in_hub_cache(ref.hub_id, hub_cache)
    return None


def repo_folder(hub_id: str, cache_dir: Path | None = None) -> Path:
    """Where huggingface_hub keeps a model repo: ``models--ORG--NAME``."""
    return (cache_dir or hub_cache_dir()) / ("models--" + hub_id.replace("/", "--"))


def find_in_hub_cache(hub_id: str, cache_dir: Path | None = None) -> LocalWeights | None:
    """The snapshot ``refs/main`` points at, else the newest complete snapshot on disk."""
    from huggingface_hub import try_to_load_from_cache

    cache_dir = cache_dir or hub_cache_dir()
    found = try_to_load_from_cache(hub_id, "config.json", cache_dir=str(cache_dir))
    if isinstance(found, str):
        snapshot = Path(found).parent
        if not missing_files(snapshot):
            return LocalWeights(snapshot, hub_id, snapshot.name)
    return _newest_complete_snapshot(hub_id, cache_dir)


def _newest_complete_snapshot(hub_id: str, cache_dir: Path) -> LocalWeights | None:
    # A snapshot copied in by hand often comes without refs/main; it is still the user's weights.
    snapshots = repo_folder(hub_id, cache_dir) / "snapshots"
    if not snapshots.is_dir():
        return None
    complete = [s for s in snapshots.iterdir() if s.is_dir() and not missing_files(s)]
    if not complete:
        return None
    newest = max(complete, key=lambda s: s.stat().st_mtime)
    logger.info("%s: refs/main does not name a complete snapshot; using %s", hub_id, newest.name)
    return LocalWeights(newest, hub_id, newest.name)


def folder_fingerprint(folder: Path) -> str:
    """A revision for a plain folder: name, size and mtime of its weight and config files."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and (path.suffix in (".safetensors", ".bin", ".json") or path.name in TOKENIZER_FILES):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return "local-" + digest.hexdigest()[:16]


def configured_max_length(folder: Path) -> int | None:
    """The longest input the model accepts, from its tokenizer and config files (no model load)."""
    limits = []
    tokenizer_config = _read_json(folder / "tokenizer_config.json")
    model_max = tokenizer_config.get("model_max_length")
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:
        limits.append(model_max)
    config = _read_json(folder / "config.json")
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and positions > 0:
        # RoBERTa-family models reserve pad_token_id + 1 position slots.
        offset = config.get("pad_token_id", 0) + 1 if "roberta" in str(config.get("model_type", "")) else 0
        limits.append(positions - offset)
    return min(limits) if limits else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class CachedModel:
    """A model in the huggingface_hub cache: the snapshot dheera_local would load, and its size."""

    hub_id: str
    revision: str
    size_bytes: int
    path: Path


def cached_models(hub_cache: Path) -> list[CachedModel]:
    """Every model repo in the hub cache with a complete snapshot (huggingface_hub's ``scan_cache_dir``),
    at the revision discovery picks; sorted by hub id."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(hub_cache)
    except CacheNotFound:
        return []
    found = []
    for repo in info.repos:
        weights = find_in_hub_cache(repo.repo_id, hub_cache) if repo.repo_type == "model" else None
        if weights is None:
            continue
        sizes = {revision.commit_hash: revision.size_on_disk for revision in repo.revisions}
        found.append(CachedModel(repo.repo_id, weights.revision, sizes.get(weights.revision, 0), weights.path))
    return sorted(found, key=lambda model: model.hub_id.lower())


# How alike a hub id must be to a known one to be suggested (difflib's ratio): a typo or a version off by
# one, not a sibling model (bge-reranker-base vs -large is 0.8).
SUGGEST_CUTOFF = 0.88


def did_you_mean(hub_id: str, hub_cache: Path) -> str:
    """`` Did you mean ORG/NAME?`` for a hub id close to a cross-encoder of models.txt or to a model in the hub
    cache (a misspelling, a wrong case), else ``""``."""
    from .catalog import known_models

    names = {model.hub_id for model in known_models().values() if model.kind == "cross-encoder"}
    try:
        names |= {d.name[len("models--") :].replace("--", "/", 1) for d in hub_cache.glob("models--*--*")}
    except OSError:  # an unreadable cache: suggest from models.txt alone
        pass
    by_lower = {name.lower(): name for name in names if name != hub_id}
    close = difflib.get_close_matches(hub_id.lower(), list(by_lower), n=1, cutoff=SUGGEST_CUTOFF)
    return f" Did you mean {by_lower[close[0]]}?" if close else ""
