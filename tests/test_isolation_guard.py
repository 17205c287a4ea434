"""The run-wide isolation guard (tests/isolation_guard.py) fails a run whose tests leak into the user's
environment or caches, and passes one that keeps to monkeypatch and tmp_path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = str(Path(__file__).parent)

LEAKY = """
import os
from pathlib import Path

def test_sets_a_variable_for_good():
    os.environ["LEAKED_BY_A_TEST"] = "1"

def test_writes_into_the_users_score_cache():
    folder = Path(os.environ["HOME"], ".cache", "dheera_local")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cache.db").write_text("rows")
"""

LATER = """
import os

def test_after_them():
    assert "LEAKED_BY_A_TEST" not in os.environ  # the guard put the environment back after the module
"""

TIDY = """
import os
import pytest

@pytest.fixture(scope="module")
def module_server():  # as the live-server fixtures do: variables for the module's tests, undone after them
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DHEERA_HF_INFERENCE_URL", "http://127.0.0.1:1")
        yield

def test_first_with_the_module_fixture(module_server):
    assert os.environ["DHEERA_HF_INFERENCE_URL"] == "http://127.0.0.1:1"

def test_uses_monkeypatch_and_tmp_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    (tmp_path / "cache.db").write_text("rows")
"""


@pytest.fixture
def inner_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home folder for the inner run: what it guards (the real one is never touched here)."""
    home = tmp_path / "home"
    (home / ".cache" / "huggingface" / "hub").mkdir(parents=True)
    for variable in ("XDG_CACHE_HOME", "HF_HOME", "HF_HUB_CACHE", "DHEERA_CACHE_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PYTHONPATH", TESTS)
    return home


def test_a_run_that_leaks_fails_and_names_each_leak(pytester: pytest.Pytester, inner_home: Path) -> None:
    pytester.makepyfile(test_leaky=LEAKY, test_later=LATER)
    result = pytester.runpytest_subprocess("-p", "isolation_guard", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)  # the leaky module's two tests and the later module's one
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # every test passed, the run did not
    result.stdout.fnmatch_lines([
        "*test_leaky.py (its tests or fixtures) left os.environ changed: LEAKED_BY_A_TEST (set)*",
        f"*the run wrote into {inner_home / '.cache' / 'dheera_local'}*added cache.db*",
    ])  # fmt: skip


def test_a_run_that_keeps_to_its_own_folders_passes(pytester: pytest.Pytester, inner_home: Path) -> None:
    pytester.makepyfile(test_tidy=TIDY)
    result = pytester.runpytest_subprocess("-p", "isolation_guard", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    assert "isolation guard" not in result.stdout.str()
    assert sys.modules["isolation_guard"]  # this run is guarded too (loaded by conftest.py)
