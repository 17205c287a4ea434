"""The disk score cache: safety (no unpickling), resilience, permissions and sharing."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import diskcache
import pytest

import dheera_local
from conftest import TINY_BERT_ID
from dheera_local import Reranker
from dheera_local._cache.store import SHARED_CACHES, CacheStore, ScoreCache, cache_key
from dheera_local._models.discovery import find_in_hub_cache
from dheera_local._models.identity import ModelIdentity

QUERY = "capital city"
DOCS = ["washington is the capital", "a river in france", "tokyo"]


class _Exploit:
    """Unpickling this object creates a file: proof that a reader ran attacker code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def _identity() -> ModelIdentity:
    """The identity the default rerank of TINY_BERT_ID caches under (its numerics included)."""
    plan = Reranker().plan(TINY_BERT_ID)
    identity = plan.cache_identity(0)
    weights = find_in_hub_cache(TINY_BERT_ID)
    assert (identity.model_id, identity.revision, identity.max_length) == (weights.model_id, weights.revision, 512)
    return identity


def test_pickled_rows_are_refused_not_unpickled(isolated_env: Path, caplog: pytest.LogCaptureFixture) -> None:
    clean = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, cache=False)
    folder = isolated_env / "score-cache"
    marker = isolated_env / "pwned"
    attacker = diskcache.Cache(str(folder))  # the default Disk pickles
    attacker.set(cache_key(_identity(), QUERY, DOCS[0]), _Exploit(marker))
    attacker.close()
    with caplog.at_level(logging.WARNING, logger="dheera_local"):
        response = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS)
    assert not marker.exists()
    assert "refusing a pickled row" in caplog.text
    assert response.cache_hits == 0  # the poisoned row counts as a miss and is recomputed
    assert [(r.index, r.relevance_score) for r in response.results] == [
        (r.index, r.relevance_score) for r in clean.results
    ]
    assert dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS).cache_hits == 3  # overwritten with a raw row


def test_values_are_raw_bytes_and_keys_are_strings(isolated_env: Path) -> None:
    dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS)
    import sqlite3

    db = sqlite3.connect(isolated_env / "score-cache" / "cache.db")
    rows = db.execute("SELECT key, raw, mode, value FROM Cache").fetchall()
    assert len(rows) == 3
    for key, raw, mode, value in rows:
        assert isinstance(key, str) and len(key) == 64 and raw == 1
        assert mode == 1 and isinstance(value, bytes) and len(value) == 8  # MODE_RAW, 8-byte float


def test_cache_folder_is_owner_only(isolated_env: Path) -> None:
    dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS)
    mode = stat.S_IMODE((isolated_env / "score-cache").stat().st_mode)
    assert mode == 0o700


def test_corrupt_cache_logs_a_warning_and_the_call_succeeds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "corrupt"
    folder.mkdir(mode=0o700)
    (folder / "cache.db").write_bytes(b"this is not a sqlite database" * 100)
    with caplog.at_level(logging.WARNING, logger="dheera_local"):
        response = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, cache_dir=folder)
    assert len(response.results) == 3 and response.backend == "local"
    assert "cannot be opened" in caplog.text
    assert (folder / "cache.db").read_bytes().startswith(b"this is not")  # never "repaired" by deletion


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_cache_folder_degrades_to_uncached(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        response = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, cache_dir=folder)
    finally:
        folder.chmod(0o700)
    assert len(response.results) == 3


def test_a_full_disk_logs_a_warning_and_the_call_succeeds(isolated_env: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = SHARED_CACHES.open(isolated_env / "score-cache")
    connection = cache._cache._con  # SQLite's own quota: writes fail with "database or disk is full"
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages}")
    with caplog.at_level(logging.WARNING, logger="dheera_local"):
        response = dheera_local.rerank(TINY_BERT_ID, QUERY, [f"document {i} " * 200 for i in range(50)])
    assert len(response.results) == 50
    assert "could not be written" in caplog.text
    assert cache.stats()["entries"] == 0


def test_a_cache_dir_that_is_a_file_degrades_to_uncached(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with caplog.at_level(logging.WARNING, logger="dheera_local"):
        response = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, cache_dir=not_a_folder)
    assert len(response.results) == 3 and "cannot be opened" in caplog.text


def test_size_limit_evicts(tmp_path: Path) -> None:
    cache = ScoreCache(tmp_path / "small", size_limit=40_000)
    for batch in range(20):
        cache.set_many({f"{batch}-{i}": float(i) for i in range(200)})
    assert cache.stats()["entries"] < 4000
    cache.close()


_WRITER = """
import sys
import threading
import dheera_local
for i in range(int(sys.argv[2])):
    dheera_local.rerank(sys.argv[1], f"query {sys.argv[3]} {i}", ["washington", "paris", "tokyo"])
print("ok")
"""


def test_several_processes_share_one_cache_folder(isolated_env: Path) -> None:
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, TINY_BERT_ID, "5", str(n)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(3)
    ]
    finished = [p.communicate(timeout=240) for p in procs]
    assert [out.decode().strip() for out, _ in finished] == ["ok"] * 3
    assert not [err for _, err in finished if b"cannot be opened" in err]
    cache = SHARED_CACHES.open(isolated_env / "score-cache")
    assert cache.stats()["entries"] == 3 * 5 * 3


def test_processes_creating_the_folder_at_the_same_moment_all_open_it(tmp_path: Path) -> None:
    # Found by CI: three processes started together; one saw the folder missing, then mkdir said it existed.
    for attempt in range(5):
        folder = tmp_path / f"race-{attempt}" / "score-cache"
        start = threading.Barrier(8)
        opened: list[object] = []

        def open_it(folder: Path = folder, start: threading.Barrier = start, opened: list[object] = opened) -> None:
            start.wait()
            opened.append(CacheStore().open(folder))

        threads = [threading.Thread(target=open_it) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert None not in opened and len(opened) == 8
