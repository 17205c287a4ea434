"""A guard over the whole test run: it must leave the user's environment, home caches and hub cache as it found them.

Loaded by ``conftest.py`` as a plugin (``-p isolation_guard`` loads it elsewhere). Tests get their own
caches from the autouse ``isolated_env`` fixture; this plugin checks that nothing escaped it:

- ``os.environ`` after each test module equals what it was before the module's first test (the module is
  named, and the environment is put back so later modules are not blamed);
- the folders a test could write into by mistake (the score cache and the HF hub cache this environment
  points at, and their defaults under ``~/.cache``), listed recursively when the run starts and ends.

Any difference fails the run, naming what changed.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping
from pathlib import Path

import pytest

# Set by libraries during a run for their own processes, not by our code or tests: torch's inductor names its
# cache folder under /tmp so its compile workers share it, ray.init() points PYTHONBREAKPOINT at its debugger,
# sentence-transformers quiets codecarbon on import, CUDA's lazy loading.
THIRD_PARTY_VARIABLES = frozenset({
    "TOKENIZERS_PARALLELISM", "KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK", "CUDA_MODULE_LOADING", "PYTHONBREAKPOINT",
    "CODECARBON_LOG_LEVEL",
})  # fmt: skip
THIRD_PARTY_PREFIXES = ("RAY_", "PYTEST_", "TORCHINDUCTOR_", "TRITON_")
MAX_LISTED = 10

Listing = dict[str, tuple[int, int]]  # relative path -> (size, mtime_ns)


def guarded_folders(environ: Mapping[str, str]) -> list[Path]:
    """The caches this environment would use, and their defaults under the home folder."""
    home = Path(environ.get("HOME") or Path.home())
    xdg = Path(environ.get("XDG_CACHE_HOME") or home / ".cache")
    hf_home = Path(environ.get("HF_HOME") or xdg / "huggingface")
    folders = {
        home / ".cache" / "dheera_local",
        home / ".cache" / "huggingface",
        xdg / "dheera_local",
        hf_home,
        Path(environ.get("HF_HUB_CACHE") or hf_home / "hub"),
    }
    if environ.get("DHEERA_CACHE_DIR"):
        folders.add(Path(environ["DHEERA_CACHE_DIR"]))
    return sorted({folder.expanduser() for folder in folders})


def list_folder(folder: Path) -> Listing:
    """Every file and folder under ``folder`` with its size and modification time ({} when absent)."""
    listing: Listing = {}
    if not folder.exists():
        return listing
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root, name)
            try:
                info = path.lstat()
            except OSError:  # removed while we walk: the next listing tells
                continue
            listing[str(path.relative_to(folder))] = (info.st_size, info.st_mtime_ns if name in files else 0)
    return listing


def listing_changes(before: Listing, after: Listing) -> list[str]:
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = sorted(name for name in before.keys() & after.keys() if before[name] != after[name])
    return [f"added {n}" for n in added] + [f"removed {n}" for n in removed] + [f"changed {n}" for n in changed]


def environ_changes(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """Variables set, removed or changed (names only: values may be secrets)."""
    names = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    ours = sorted(n for n in names if n not in THIRD_PARTY_VARIABLES and not n.startswith(THIRD_PARTY_PREFIXES))
    how = {name: "set" if name not in before else "removed" if name not in after else "changed" for name in ours}
    return [f"{name} ({how[name]})" for name in ours]


class IsolationGuard:
    """The pytest plugin: snapshots at session start, checks after each test and at the end."""

    def __init__(self) -> None:
        self.folders = guarded_folders(os.environ)
        self.listings = {folder: list_folder(folder) for folder in self.folders}
        self.problems: list[str] = []
        self.module_before: dict[str, str] | None = None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        # Checked per module: a module-scoped fixture (a live server) may set variables for its module's tests;
        # it is set up inside the module's first test and torn down after its last one.
        if self.module_before is None:
            self.module_before = dict(os.environ)
        result = yield
        if nextitem is None or nextitem.path != item.path:
            before, self.module_before = self.module_before, None
            changes = environ_changes(before, os.environ)
            if changes:
                changed = ", ".join(changes)
                self.problems.append(f"{item.path.name} (its tests or fixtures) left os.environ changed: {changed}")
                os.environ.clear()
                os.environ.update(before)
        return result

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        for folder in self.folders:
            changes = listing_changes(self.listings[folder], list_folder(folder))
            if changes:
                more = f" and {len(changes) - MAX_LISTED} more" if len(changes) > MAX_LISTED else ""
                shown = ", ".join(changes[:MAX_LISTED]) + more
                self.problems.append(f"the run wrote into {folder}, outside the tests' own folders: {shown}")
        if self.problems:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.problems:
            return
        terminalreporter.section("isolation guard: the tests touched the user's environment", red=True)
        for problem in self.problems:
            terminalreporter.line(problem, red=True)


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("isolation-guard"):
        config.pluginmanager.register(IsolationGuard(), "isolation-guard")
