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
from dheera_local._cache.store import ENTRY_BYTES, SHARED_CACHES, ScoreCache

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


# Symlinks planted in the cache folder (issue 26, 8) ----------------------------------------------------------

QUERY = "capital city"
DOCS = ["washington is the capital", "a river in france", "tokyo"]


def _scores(response: dheera_local.RerankResponse) -> dict[int, float]:
    return {r.index: r.relevance_score for r in response.results}


@pytest.fixture
def seeded(isolated_env: Path) -> tuple[Path, dict[int, float]]:
    """The cache folder after one rerank wrote it, closed (the next rerank opens it anew), and its scores."""
    first = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, dtype="float32")
    close_all()
    return isolated_env / "score-cache", _scores(first)


@pytest.mark.parametrize("name", ["cache.db", "cache.db-wal", "cache.db-journal"])
@pytest.mark.parametrize("target_exists", [True, False])
def test_a_linked_database_file_is_refused_and_its_target_untouched(
    seeded: tuple[Path, dict[int, float]], tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str,
    target_exists: bool,
) -> None:  # fmt: skip
    folder, scores = seeded
    outside = tmp_path / "outside" / "precious.db"
    outside.parent.mkdir()
    if target_exists:
        outside.write_bytes(b"")  # empty: SQLite would take it for a new database and write one into it
    for side in folder.glob("cache.db*"):
        side.unlink()
    (folder / name).symlink_to(outside)
    again = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, dtype="float32")
    close_all()
    assert again.backend == "local" and _scores(again) == scores  # scored uncached, same scores
    assert "is a symlink" in caplog.text and "scoring without a cache" in caplog.text
    assert outside.read_bytes() == b"" if target_exists else not outside.exists()
    assert sorted(p.name for p in outside.parent.iterdir()) == (["precious.db"] if target_exists else [])


def test_a_linked_sub_folder_never_leads_a_delete_outside(
    seeded: tuple[Path, dict[int, float]], tmp_path: Path
) -> None:
    folder, scores = seeded
    outside = tmp_path / "outside"
    victim = outside / "cd" / ("e" * 28 + ".val")
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"keep me")
    (folder / "ab").symlink_to(outside, target_is_directory=True)
    with sqlite3.connect(folder / "cache.db") as db:  # every row names the linked file, as diskcache's own would
        db.execute("UPDATE Cache SET mode = 2, filename = ?, value = NULL", (f"ab/cd/{victim.name}",))
    again = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, dtype="float32")  # refused rows: rescored, replaced
    assert (again.backend, again.cache_hits) == ("local", 0) and _scores(again) == scores
    with sqlite3.connect(folder / "cache.db") as db:
        db.execute("UPDATE Cache SET mode = 2, filename = ?, value = NULL", (f"ab/cd/{victim.name}",))
    # `dheera-local cache clear` deletes through the same Disk.remove
    assert SHARED_CACHES.open(folder).clear() == len(DOCS)
    assert victim.read_bytes() == b"keep me" and (folder / "ab").is_symlink()


def test_value_files_of_the_cache_itself_are_still_deleted(tmp_path: Path) -> None:
    cache = ScoreCache(tmp_path / "cache")
    own = cache.directory / "ab" / "cd" / ("f" * 28 + ".val")
    own.parent.mkdir(parents=True)
    own.write_bytes(b"planted")
    cache.set_many({"k": 1.0})
    with sqlite3.connect(cache.directory / "cache.db") as db:
        db.execute("UPDATE Cache SET mode = 2, filename = ?, value = NULL", ("ab/cd/" + own.name,))
    assert cache.clear() == 1
    assert not own.exists() and not (cache.directory / "ab").exists()  # and the folders it left empty
    cache.close()
