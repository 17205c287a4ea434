"""`./dev`, the README's two commands, driven against a stand-in virtualenv whose `python` and `dheera-local`
record their calls: each command installs its own extra set whatever ran before, a second run skips pip, and
the offline demo ranks with the real reranker built by ../shared/tools (once) or says how to provide weights.
(CI runs the real thing on a fresh clone: .ci/run.)"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
echo "python $*" >> "$LOG"
case "$1" in
  -m|-c) exit 0 ;;                                   # pip, pytest, import checks
  -) cat > /dev/null; exit "${HUB_PROBE_EXIT:-1}" ;;  # the demo's hub probe: offline unless told
  *real_reranker.py) mkdir -p "$2"; touch "$2/model.safetensors" ;;
esac
"""

FAKE_CLI = """#!/usr/bin/env bash
echo "dheera-local $*" >> "$LOG"
case "$1" in
  pull) echo "error: cannot download BAAI/bge-reranker-base: HF_HUB_OFFLINE is set; To provide them ..." >&2; exit 1 ;;
  rerank) echo '{"results": [{"index": 2, "relevance_score": 0.99}]}' ;;
esac
"""


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A copy of the repo's dev script and pyproject.toml, a stand-in venv, and ../shared/tools beside it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dev", "pyproject.toml"):
        shutil.copy2(REPO / name, repo / name)
    venv = repo / ".venv" / "bin"
    venv.mkdir(parents=True)
    for name, text in (("python", FAKE_PYTHON), ("dheera-local", FAKE_CLI)):
        (venv / name).write_text(text)
        (venv / name).chmod(0o755)
    tools = tmp_path / "shared" / "tools"
    tools.mkdir(parents=True)
    (tools / "real_reranker.py").write_text("# stands in for the shared tool\n")
    return repo


def dev(clone: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    variables = {**os.environ, "LOG": str(clone / "calls.log"), **env}
    variables.pop("VENV", None)
    command = ["bash", str(clone / "dev"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=variables, timeout=60)


def calls(clone: Path) -> list[str]:
    log = clone / "calls.log"
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def installs(lines: list[str]) -> list[str]:
    return [line.split()[-1] for line in lines if line.startswith("python -m pip install -q -e ")]


def test_demo_then_test_installs_each_commands_extras_and_a_second_run_skips_pip(clone: Path) -> None:
    assert dev(clone, "demo").returncode == 0
    assert installs(calls(clone)) == [".[demo]"]
    done = dev(clone, "test", "-q")
    assert done.returncode == 0, done.stderr
    lines = calls(clone)
    assert installs(lines) == [".[test]"]  # the demo's stamp does not stand for the test extras
    assert lines[-1] == "python -m pytest -q"
    assert dev(clone, "test").returncode == 0
    assert installs(calls(clone)) == []  # stamped: no pip on a second run
    os.utime(clone / ".venv" / ".installed-test", (0, 0))  # pyproject.toml changed since: install again
    assert dev(clone, "test").returncode == 0
    assert installs(calls(clone)) == [".[test]"]


def test_the_offline_demo_ranks_with_the_real_reranker_built_once_and_says_so_in_one_line(clone: Path) -> None:
    done = dev(clone, "demo")
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("demo: ")]
    assert len(said) == 1 and "cross-encoder/ms-marco-MiniLM-L-12-v2" in said[0] and "offline" in said[0]
    assert "error: cannot download" not in done.stderr  # the pull's own error is folded into that line
    lines = calls(clone)
    built = [line for line in lines if "real_reranker.py" in line]
    assert built == ["python ../shared/tools/real_reranker.py .cache/demo/ms-marco-MiniLM-L-12-v2.partial"]
    rerank = next(line for line in lines if line.startswith("dheera-local rerank"))
    assert "--backend local --model .cache/demo/ms-marco-MiniLM-L-12-v2 " in rerank
    assert '"index": 2' in done.stdout
    again = dev(clone, "demo")
    assert again.returncode == 0 and not [line for line in calls(clone) if "real_reranker.py" in line]  # cached


def test_an_offline_demo_without_the_shared_tools_says_how_to_provide_weights(clone: Path) -> None:
    shutil.rmtree(clone.parent / "shared")
    done = dev(clone, "demo")
    assert done.returncode == 1
    said = [line for line in done.stderr.splitlines() if not line.startswith("installing ")]
    assert len(said) == 1 and said[0].startswith("demo: no weights for BAAI/bge-reranker-base here; run ")
    assert "$HF_HOME/hub" in done.stderr
    assert not [line for line in calls(clone) if line.startswith("dheera-local rerank")]


def test_an_online_demo_pulls_bge_and_ranks_with_it(clone: Path) -> None:
    (clone / ".venv" / "bin" / "dheera-local").write_text(FAKE_CLI.replace("exit 1 ;;", "exit 0 ;;"))
    done = dev(clone, "demo", HUB_PROBE_EXIT="0")
    assert done.returncode == 0, done.stderr
    rerank = next(line for line in calls(clone) if line.startswith("dheera-local rerank"))
    assert "--model huggingface/BAAI/bge-reranker-base " in rerank
    assert "demo: " not in done.stderr
