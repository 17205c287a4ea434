"""The kernel check's verdict, remembered on disk: a second load runs no probe pass, a verdict is never
reused for other weights, dtype, CPU or torch, and a corrupt or planted one is ignored and rewritten."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from dheera_local._local.cpu_kernels import EAGER, PACKED, packing_available, probe_passes
from dheera_local._local.kernel_verdicts import FOLDER, ProbeKey, VerdictStore, probe_key
from dheera_local._local.torch_model import LocalModel
from dheera_local._models.discovery import LocalWeights, folder_fingerprint

pytestmark = pytest.mark.skipif(
    not packing_available("cpu", torch.float32), reason="oneDNN cannot pack fp32 linears with this torch build"
)
PAIRS = [("which city", "the city of paris has a famous museum"), ("which city", "tea and coffee")]


@pytest.fixture
def folder(tiny_bert: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model (tests change its files)."""
    return Path(shutil.copytree(tiny_bert, tmp_path / "model"))


def weights(folder: Path) -> LocalWeights:
    return LocalWeights(folder, str(folder), folder_fingerprint(folder))


def load(folder: Path, store: VerdictStore) -> tuple[LocalModel, int]:
    """The model, and how many probe forward passes loading it ran."""
    before = probe_passes()
    model = LocalModel(weights(folder), "cpu", torch.float32, "auto", store)
    return model, probe_passes() - before


def verdict_files(store: VerdictStore) -> list[Path]:
    return sorted(store.folder.glob("*.json"))


def test_a_second_load_reads_the_verdict_and_runs_no_probe(folder: Path, tmp_path: Path) -> None:
    store = VerdictStore(tmp_path / "cache")
    first, passes = load(folder, store)
    assert passes == 3  # fp32 reference, eager, packed
    assert len(verdict_files(store)) == 1
    second, passes = load(folder, store)
    assert passes == 0
    assert second.kernels == first.kernels == PACKED
    assert second.logits(PAIRS, 128, 2048) == first.logits(PAIRS, 128, 2048)
    assert oct(verdict_files(store)[0].stat().st_mode & 0o777) == "0o600"


def test_without_a_store_the_check_always_runs(folder: Path) -> None:
    before = probe_passes()
    LocalModel(weights(folder), "cpu", torch.float32, "auto", None)
    assert probe_passes() - before == 3


def test_changed_weights_are_checked_again(folder: Path, tmp_path: Path) -> None:
    store = VerdictStore(tmp_path / "cache")
    load(folder, store)
    weight_file = folder / "model.safetensors"
    os.utime(weight_file, ns=(weight_file.stat().st_atime_ns, weight_file.stat().st_mtime_ns + 10**9))
    _, passes = load(folder, store)
    assert passes == 3
    assert len(verdict_files(store)) == 2


@pytest.mark.parametrize(
    "field, other",
    [("torch", "0.0.1"), ("dtype", "bfloat16"), ("cpu", "x86_64|Another CPU|avx2 fma"), ("revision", "abc123"),
     ("files", "local-0000"), ("model_id", "org/other"), ("rule", "0")],
)  # fmt: skip
def test_a_verdict_is_not_reused_for_another_key(folder: Path, tmp_path: Path, field: str, other: str) -> None:
    store = VerdictStore(tmp_path / "cache")
    key = probe_key(weights(folder), "float32", torch.__version__)
    assert key is not None
    store.write(key, EAGER, "test")
    assert store.read(key) == EAGER
    assert store.read(dataclasses.replace(key, **{field: other})) is None


def test_a_remembered_failing_verdict_means_eager_kernels(folder: Path, tmp_path: Path) -> None:
    store = VerdictStore(tmp_path / "cache")
    key = probe_key(weights(folder), "float32", torch.__version__)
    assert key is not None
    store.write(key, EAGER, "packed differs from fp32 by 9 logits")
    model, passes = load(folder, store)
    assert passes == 0 and model.kernels == EAGER


@pytest.mark.parametrize(
    "planted",
    [b"", b"{not json", b"[]", json.dumps({"kernels": PACKED}).encode(), b"x" * 10_000],
    ids=["empty", "garbage", "a list", "unsigned", "too long"],
)
def test_a_corrupt_verdict_is_ignored_and_rewritten(folder: Path, tmp_path: Path, planted: bytes) -> None:
    store = VerdictStore(tmp_path / "cache")
    load(folder, store)
    (path,) = verdict_files(store)
    path.write_bytes(planted)
    model, passes = load(folder, store)
    assert passes == 3 and model.kernels == PACKED
    key = probe_key(weights(folder), "float32", torch.__version__)
    assert key is not None and store.read(key) == PACKED  # rewritten whole


def test_a_verdict_signed_with_another_secret_is_ignored(folder: Path, tmp_path: Path) -> None:
    # A verdict made in another cache folder (another secret), copied in: well formed, but not ours.
    elsewhere = VerdictStore(tmp_path / "elsewhere")
    key = probe_key(weights(folder), "float32", torch.__version__)
    assert key is not None
    elsewhere.write(key, EAGER, "planted")
    store = VerdictStore(tmp_path / "cache")
    load(folder, store)  # makes this folder's secret and its own verdict
    (path,) = verdict_files(store)
    shutil.copyfile(verdict_files(elsewhere)[0], path)
    assert store.read(key) is None
    model, passes = load(folder, store)
    assert passes == 3 and model.kernels == PACKED


def test_a_symlinked_verdict_is_not_followed(folder: Path, tmp_path: Path) -> None:
    store = VerdictStore(tmp_path / "cache")
    load(folder, store)
    (path,) = verdict_files(store)
    target = tmp_path / "target.json"
    path.rename(target)
    path.symlink_to(target)  # a verdict (a valid one, even) reached through a link
    key = probe_key(weights(folder), "float32", torch.__version__)
    assert key is not None and store.read(key) is None
    _, passes = load(folder, store)
    assert passes == 3
    assert not path.is_symlink()  # replaced by a file of its own


def test_probe_keys_name_this_cpu_and_torch(folder: Path) -> None:
    key = probe_key(weights(folder), "float32", torch.__version__)
    assert isinstance(key, ProbeKey) and key.torch == torch.__version__ and key.dtype == "float32"
    assert key.cpu.count("|") == 2 and key.digest() != dataclasses.replace(key, cpu="other").digest()
    assert VerdictStore(folder).folder.name == FOLDER
