"""The surface a user types against: every type a public signature names is importable, ``dir()`` shows
public names only, and a strictly type-checked user script passes mypy."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import os
import subprocess
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import dheera_local
import dheera_local.score
import dheera_local.testing

# Where a type defined under one of these packages may be exported; everything else must come from dheera_local.
SUBPACKAGES = {"dheera_local.score": dheera_local.score, "dheera_local.testing": dheera_local.testing}
# The adapters: one public class each, in a module that imports its framework (walked when it is installed).
ADAPTERS = {
    "dheera_local.integrations.langchain": "DheeraRerank",
    "dheera_local.integrations.llama_index": "DheeraRerank",
}
# Exported so that a user can name them (Reranker's parameters, plan()'s answer, run()'s request), but their own
# methods and fields are the engine's working parts (loaded models, pooled clients, open caches), not a contract
# (HttpClients: what a provider's Endpoint hands it, to pass on to the backend it makes):
# the walk does not descend into them.
HANDLES = {"Backends", "CacheStore", "HttpClients", "LocalBackend", "Plan", "RedisCacheStore", "RerankRequest"}


def _exported() -> dict[str, set[int]]:
    """The ids of the objects each public namespace exports."""
    homes = {"dheera_local": dheera_local, **SUBPACKAGES}
    return {home: {id(getattr(module, name)) for name in module.__all__} for home, module in homes.items()}


def _home(module_name: str) -> str:
    return next((home for home in SUBPACKAGES if module_name.startswith(f"{home}.")), "dheera_local")


def _roots() -> Iterator[tuple[str, object]]:
    for home, module in {"dheera_local": dheera_local, **SUBPACKAGES}.items():
        for name in module.__all__:
            if name != "__version__" and name not in HANDLES:
                yield f"{home}.{name}", getattr(module, name)
    for module_name, name in ADAPTERS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # the framework is not installed: its adapter has no signature to walk
            continue
        yield f"{module_name}.{name}", getattr(module, name)


def _ours(owner: type) -> bool:
    return owner.__module__.startswith("dheera_local") and owner.__name__ not in HANDLES


def _annotated(label: str, obj: object) -> Iterator[tuple[str, object]]:
    """(label, function or class) whose annotations make ``obj``'s public signature."""
    if not inspect.isclass(obj):
        yield label, obj
        return
    for owner in filter(_ours, obj.__mro__):
        yield f"{label} (fields of {owner.__name__})", owner  # class annotations: dataclass and pydantic fields
        for name, member in vars(owner).items():
            if name.startswith("_") and name != "__init__":
                continue
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if isinstance(member, property):
                member = member.fget
            if inspect.isfunction(member):
                yield f"{label}.{name}", member


def _typing_only_names(obj: object) -> dict[str, object]:
    """The names ``obj``'s module imports under ``if TYPE_CHECKING:`` (what mypy, and a user's
    ``get_type_hints`` with that namespace, resolve its annotations with), imported now."""
    module = sys.modules.get(getattr(obj, "__module__", ""), None)
    try:
        tree = ast.parse(inspect.getsource(module)) if module is not None else None
    except (OSError, TypeError):
        return {}
    names: dict[str, object] = {"__name__": module.__name__, "__package__": module.__package__}
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            exec(compile(ast.Module(body=node.body, type_ignores=[]), module.__name__, "exec"), names)
    return names


def _hints(obj: object) -> dict[str, object]:
    localns = _typing_only_names(obj)
    if inspect.isclass(obj):  # its own annotations only (inherited ones are walked with their owner)
        hints = typing.get_type_hints(obj, localns=localns)
        own = obj.__dict__.get("__annotations__", {})
        return {name: hint for name, hint in hints.items() if name in own and not name.startswith("_")}
    return typing.get_type_hints(obj, localns=localns)


def _types(hint: object) -> Iterator[type]:
    if isinstance(hint, type) and not isinstance(hint, types.GenericAlias):
        yield hint
    origin = typing.get_origin(hint)
    if isinstance(origin, type):
        yield origin
    for arg in typing.get_args(hint):
        yield from _types(arg)


def _leaks() -> dict[str, list[str]]:
    exported = _exported()
    leaks: dict[str, list[str]] = {}
    for root_label, root in _roots():
        for label, obj in _annotated(root_label, root):
            try:
                hints = _hints(obj)
            except (NameError, TypeError) as exc:  # a name neither the module nor its TYPE_CHECKING block imports
                leaks.setdefault(f"unresolvable: {exc}", []).append(label)
                continue
            for hint in hints.values():
                for tp in _types(hint):
                    if tp.__module__.startswith("dheera_local") and id(tp) not in exported[_home(tp.__module__)]:
                        leaks.setdefault(f"{tp.__module__}.{tp.__qualname__}", []).append(label)
    return leaks


def test_every_type_in_a_public_signature_is_exported() -> None:
    # A type that only a private module holds cannot be named in a user's annotations (mypy --strict needs it).
    assert _leaks() == {}


def test_the_walk_finds_a_type_that_is_not_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dheera_local, "__all__", [name for name in dheera_local.__all__ if name != "ServedBy"])
    leaks = _leaks()
    assert set(leaks) == {"dheera_local._response.ServedBy"}
    assert "dheera_local.PairScores (fields of PairScores)" in leaks["dheera_local._response.ServedBy"]
    assert "dheera_local.RerankMeta (fields of RerankMeta)" in leaks["dheera_local._response.ServedBy"]


def test_dir_shows_public_names_only() -> None:
    import dheera_local._engine.orchestrator  # noqa: F401 (binds a private module on the package, as any use does)

    assert dir(dheera_local) == sorted(dheera_local.__all__)
    assert [name for name in dir(dheera_local) if name.startswith("_")] == ["__version__"]
    assert dir(dheera_local.score) == ["ScoreJob", "ScoreReport", "score_file"]  # not Any, io, job


def test_every_public_name_resolves_to_what_it_names() -> None:
    assert HANDLES <= set(dheera_local.__all__)
    for module in (dheera_local, dheera_local.score, dheera_local.testing):
        for name in set(module.__all__) - {"__version__"}:
            assert getattr(module, name).__name__ == name, f"{module.__name__}.{name}"


def test_the_testing_toolkit_exports_tools_only() -> None:
    # Builders, fakes and servers; the project's own data (word lists, twin tables) are no part of it.
    tools = [getattr(dheera_local.testing, name) for name in dheera_local.testing.__all__]
    assert all(inspect.isclass(tool) or inspect.isfunction(tool) for tool in tools)


def test_the_score_module_imports_no_engine() -> None:
    code = "import sys, dheera_local.score; print(sorted(m for m in sys.modules if m.startswith(('httpx', 'torch'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_batch_shim_is_gone() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("dheera_local.batch")


def test_pydantic_and_dataclass_fields_are_walked() -> None:
    # The walk's premise: response models and data classes expose their fields as class annotations.
    assert issubclass(dheera_local.RerankResponse, BaseModel)
    assert "results" in _hints(dheera_local.RerankResponse)
    assert dataclasses.is_dataclass(dheera_local.PairScores) and "served_by" in _hints(dheera_local.PairScores)


USER_SCRIPT = Path(__file__).with_name("typing_user_script.py")
# dheera_local is followed as a user's mypy follows an installed typed package: read, its own errors not reported.
# The engines it loads lazily (torch, transformers, ray, ...) never appear in a public signature: skipping them
# keeps the cold check at ~15 s of CPU rather than ~70.
MYPY_CONFIG = """\
[mypy]
[mypy-dheera_local.*]
follow_imports = silent
[mypy-torch.*,transformers.*,sentence_transformers.*,tokenizers.*,huggingface_hub.*,ray.*,cohere.*,pyarrow.*,pandas.*,onnx.*,redis.*,sqlalchemy.*]
follow_imports = skip
"""


def _mypy() -> Callable[..., subprocess.CompletedProcess[str]]:
    pytest.importorskip("mypy")

    def run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mypy", *args], capture_output=True, text=True, **kwargs)

    return run


@pytest.mark.slow
def test_a_user_script_passes_mypy_strict(tmp_path: Path) -> None:
    """What a user's type checker sees: dheera_local as an installed, typed package (py.typed), its own modules
    followed but not themselves checked (as mypy treats any installed package), the user's script under --strict."""
    mypy = _mypy()
    for framework in ("langchain_core", "llama_index.core"):  # the script uses both adapters (the test extra)
        if importlib.util.find_spec(framework.split(".")[0]) is None:
            pytest.skip(f"{framework} is not installed")
    config = tmp_path / "mypy.ini"
    config.write_text(MYPY_CONFIG)
    root = Path(dheera_local.__file__).parent.parent
    assert (root / "dheera_local" / "py.typed").is_file()  # PEP 561: without it an installed copy reads as untyped
    env = {**os.environ, "MYPYPATH": str(root)}
    args = ["--strict", "--config-file", str(config), "--cache-dir", str(tmp_path / "cache"), "--no-error-summary"]
    result = mypy(*args, str(USER_SCRIPT), env=env, cwd=tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    # ...and the check can fail: the same script with one wrong annotation is refused.
    wrong = tmp_path / "wrong.py"
    wrong.write_text(USER_SCRIPT.read_text() + "\n\nMISTYPED: int = dheera_local.RetryPolicy()\n")
    result = mypy(*args, str(wrong), env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert 'assignment (expression has type "RetryPolicy", variable has type "int")' in result.stdout
