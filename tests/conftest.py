"""Shared fixtures: tiny cross-encoders built offline, an isolated HF cache and score cache.

No test downloads a model or reaches the internet: models are built here from a word list,
laid out as huggingface_hub cache entries, and remote endpoints are loopback servers.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dheera_local import Reranker, testing
from dheera_local import _secrets as secrets
from dheera_local._engine.runtime import close_default
from loopback import FAST, Servers

# isolation_guard: the run fails if a test changes os.environ, ~/.cache/dheera_local or the real hub cache.
pytest_plugins = ["pytester", "isolation_guard"]

# The seed docs' example query and documents.
SEED_QUERY = "What is the capital of the United States?"
SEED_DOCUMENTS = [
    "Carson City is the capital city of the American state of Nevada.",
    "The Commonwealth of the Northern Mariana Islands is a group of islands in the Pacific Ocean. "
    "Its capital is Saipan.",
    "Washington, D.C. is the capital of the United States.",
    "Capital punishment has existed in the United States since before it was a country.",
]

TINY_BERT_ID = "tiny-org/tiny-bert-reranker"
TINY_XLMR_ID = "tiny-org/tiny-xlmr-reranker"
BERT_REVISION = "1" * 40
XLMR_REVISION = "2" * 40


def pytest_sessionstart(session: pytest.Session) -> None:
    """A score-cache folder for the whole run, under the temp folder: module- and session-scoped fixtures
    (live servers) are made before each test's ``isolated_env``, and their caches and the kernel check's
    verdicts must not land in the user's ``~/.cache/dheera_local``. Set after the isolation guard's
    snapshot, which still fails the run if anything writes into the user's folders."""
    session.config.stash[RUN_CACHE] = os.environ["DHEERA_CACHE_DIR"] = tempfile.mkdtemp(prefix="dheera-tests-cache-")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if RUN_CACHE in session.config.stash:
        shutil.rmtree(session.config.stash[RUN_CACHE], ignore_errors=True)


RUN_CACHE = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_bert(models_root: Path) -> Path:
    """A random 2-layer BERT cross-encoder with an ms-marco-style Identity activation."""
    return testing.build_cross_encoder(
        models_root / "tiny-bert", arch="bert", seed=1, activation_fn="torch.nn.modules.linear.Identity"
    )


@pytest.fixture(scope="session")
def tiny_xlmr(models_root: Path) -> Path:
    """A random 2-layer XLM-RoBERTa cross-encoder (bge-reranker's architecture, tiny)."""
    return testing.build_cross_encoder(models_root / "tiny-xlmr", arch="xlm-roberta", seed=2)


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, tiny_xlmr: Path) -> Path:
    """A huggingface_hub cache folder holding both tiny models under hub ids."""
    cache = tmp_path_factory.mktemp("hf-home") / "hub"
    testing.install_in_hub_cache(tiny_bert, TINY_BERT_ID, cache, revision=BERT_REVISION)
    testing.install_in_hub_cache(tiny_xlmr, TINY_XLMR_ID, cache, revision=XLMR_REVISION)
    return cache


@pytest.fixture(scope="session")
def keyword_model(models_root: Path) -> Path:
    """A tiny cross-encoder trained to score documents containing the word 'paris' high."""
    return testing.train_keyword_reranker(models_root / "keyword-paris", keyword="paris")


def run_with_plugin(
    folder: Path, module: str, source: str, group: str, entries: str, probe: str
) -> subprocess.CompletedProcess:
    """Run ``probe`` in a fresh interpreter where ``module`` (``source``) is installed as pip leaves a package
    that declares ``entries`` (``name = module:OBJECT`` lines) in entry-point ``group``."""
    (folder / f"{module}.py").write_text(source)
    dist = folder / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{entries}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hub_cache: Path) -> Iterator[Path]:
    """Every test: its own score cache, the tiny HF cache, no tokens, no route to the internet."""
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HOME", str(hub_cache.parent))
    monkeypatch.setenv("DHEERA_CACHE_DIR", str(tmp_path / "score-cache"))
    monkeypatch.setenv("DHEERA_HF_INFERENCE_URL", f"http://127.0.0.1:{closed_port()}")
    for variable in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "DHEERA_AI_API_KEY",
    ):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    logging.getLogger("dheera_local").setLevel(logging.INFO)
    close_default()  # the module functions' Reranker reads the settings when made: this test's environment
    masked = secrets.registered()
    yield tmp_path
    close_default()
    secrets.forget_all_but(masked)  # a test's keys ("float16" from a property test) must not mask the next's text


@pytest.fixture
def servers() -> Iterator[Servers]:
    """Loopback TEI / HF hosted / Cohere servers, closed after the test."""
    with Servers() as started:
        yield started


@pytest.fixture
def reranker() -> Iterator[Reranker]:
    """A Reranker with fast retries and short timeouts (loopback servers answer in milliseconds)."""
    instance = Reranker(retry=FAST)
    yield instance
    instance.close()
