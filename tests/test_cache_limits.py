"""The score cache under pressure and under a hostile folder: eviction takes only what a write needs
(issue 26, 5), and symlinks planted in the folder never lead a write or a delete outside it (issue 26, 8)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

import dheera_local
from conftest import TINY_BERT_ID
from dheera_local import close_all
from dheera_local._cache import ENTRY_BYTES, ScoreCache

# Small enough to fill in a second: holds 9,375 rows of ENTRY_BYTES (the "9,200 rows near the limit").
SIZE_LIMIT = 2_400_000


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()  # the real keys' size: eviction counts rows of that size


def _rows(cache: ScoreCache) -> int:
    with sqlite3.connect(cache.directory / "cache.db") as db:
        return db.execute("SELECT COUNT(*) FROM Cache").fetchone()[0]


def _filled(folder: Path, rows: int) -> ScoreCache:
    cache = ScoreCache(folder, size_limit=SIZE_LIMIT)
    for start in range(0, rows, 400):
        cache.set_many({_key(f"old-{i}"): float(i) for i in range(start, min(start + 400, rows))})
    assert _rows(cache) == rows
    return cache


def test_one_full_write_evicts_only_what_it_needs_oldest_first(tmp_path: Path) -> None:
    cache = _filled(tmp_path / "cache", 9_200)
    new = {_key(f"new-{i}"): float(i) for i in range(cache.max_entries_per_write)}
    cache.set_many(new)
    assert cache.max_entries == SIZE_LIMIT // ENTRY_BYTES == 9_375
    assert _rows(cache) == cache.max_entries  # 9,200 + 4,687 - the 4,512 it had to make room for
    assert cache.get_many(list(new)) == new  # every row it wrote is there
    survivors = cache.get_many([_key(f"old-{i}") for i in range(9_200)])
    # The oldest went, the newest old rows stayed: exactly 4,512 evicted, in store order.
    assert sorted(int(v) for v in survivors.values()) == list(range(4_512, 9_200))
    cache.close()


def test_writes_past_the_limit_keep_the_cache_full_not_empty(tmp_path: Path) -> None:
    cache = _filled(tmp_path / "cache", 9_000)
    for batch in range(6):
        cache.set_many({_key(f"{batch}-{i}"): 1.0 for i in range(cache.max_entries_per_write)})
        assert _rows(cache) == cache.max_entries
    assert cache.stats()["size_bytes"] <= SIZE_LIMIT
    cache.close()


def test_a_rewrite_of_stored_keys_evicts_nothing(tmp_path: Path) -> None:
    cache = _filled(tmp_path / "cache", 9_375)
    cache.set_many({_key(f"old-{i}"): -1.0 for i in range(4_000)})
    assert _rows(cache) == 9_375
    assert set(cache.get_many([_key(f"old-{i}") for i in range(4_000)]).values()) == {-1.0}
    cache.close()


def test_rerank_into_a_nearly_full_cache_keeps_its_rows(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limit = 1_100_000  # holds 4,296 rows; the rerank case (4,200 -> 0) at a small limit
    monkeypatch.setenv("DHEERA_CACHE_SIZE_LIMIT", str(limit))
    close_all()
    folder = isolated_env / "score-cache"
    for start in range(0, 4_200, 1_050):  # under max_entries_per_write (2,148) a write
        filled = ScoreCache(folder, size_limit=limit)
        filled.set_many({_key(f"old-{i}"): float(i) for i in range(start, start + 1_050)})
        filled.close()
    docs = [f"document {i} about rivers" for i in range(200)]
    dheera_local.rerank(TINY_BERT_ID, "river", docs, cache_dir=folder)
    close_all()
    cache = ScoreCache(folder, size_limit=limit)
    assert _rows(cache) == cache.max_entries == 4_296  # 104 oldest made room for the 200 new
    assert len(cache.get_many([_key(f"old-{i}") for i in range(104, 4_200)])) == 4_096
    cache.close()
    again = dheera_local.rerank(TINY_BERT_ID, "river", docs, cache_dir=folder)
    assert again.backend == "cache" and again.cache_hits == 200
