"""What both framework adapters share: lazy imports, the missing-extra message, their options."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest
from pydantic import ValidationError

from dheera_local import RerankOptions
from dheera_local._options import OPTION_NAMES
from dheera_local.integrations._base import ENGINE_OPTIONS

ADAPTERS = [
    # (module, the package it needs, the extra that installs it)
    ("langchain", "langchain_core", "langchain"),
    ("llama_index", "llama_index", "llama-index"),
]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_the_integrations_package_imports_no_framework() -> None:
    done = run_python(
        "import sys, dheera_local.integrations\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('langchain_core', 'llama_index', 'torch')))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("module", "package", "extra"), ADAPTERS)
def test_a_missing_framework_is_one_import_error_naming_the_extra(module: str, package: str, extra: str) -> None:
    # None in sys.modules makes Python refuse the import, as if the package were not installed.
    done = run_python(
        f"import sys\nsys.modules[{package!r}] = None\n"
        f"try:\n    import dheera_local.integrations.{module}\nexcept ImportError as exc:\n    print(exc)\n"
    )
    assert done.returncode == 0, done.stderr
    pip_name = {"langchain_core": "langchain-core", "llama_index": "llama-index-core"}[package]
    assert done.stdout.strip() == (
        f'dheera_local.integrations.{module} needs {pip_name}; install it with: pip install "dheera_local[{extra}]"'
    )


def test_every_adapter_option_is_an_engine_option() -> None:
    assert set(ENGINE_OPTIONS) <= set(OPTION_NAMES)
    assert list(ENGINE_OPTIONS) == [name for name in OPTION_NAMES if name in ENGINE_OPTIONS]  # derived, in order


@pytest.fixture(params=[module for module, _, _ in ADAPTERS])
def adapter(request: pytest.FixtureRequest) -> type:
    """Each adapter's DheeraRerank class (the test extra installs both frameworks: no skipping here)."""
    return importlib.import_module(f"dheera_local.integrations.{request.param}").DheeraRerank


def test_every_engine_option_is_a_field(adapter: type) -> None:
    fields = set(adapter.model_fields)
    assert {"model", "top_n", "reranker", *ENGINE_OPTIONS} <= fields
    made = adapter(model="org/name", api_base="https://rerank.example", dtype="float32", max_length=256, cache=False)
    assert made.engine_options() == {
        "api_base": "https://rerank.example", "api_key": None, "api_format": None, "backend": "auto", "cache": False,
        "device": None, "dtype": "float32", "max_length": 256, "timeout": None, "instruction": None, "prompt": None,
    }  # fmt: skip


def test_options_bring_every_engine_option_and_the_fields_set_go_on_top(adapter: type) -> None:
    # An option with no field of its own (raw_scores, batch_tokens, or one added later) needs no adapter edit.
    options = RerankOptions(raw_scores=True, batch_tokens=4096, backend="remote", api_base="https://rerank.example")
    made = adapter(model="org/name", options=options, max_length=256)
    assert made.rerank_options() == options.replace(max_length=256)  # backend's default "auto" did not undo it
    made.dtype = "float32"  # a field set later is seen
    assert made.rerank_options() == options.replace(max_length=256, dtype="float32")
    assert "options" not in made.model_dump()
    with pytest.raises(ValidationError, match="dtype 'flaot16' is not one of"):
        adapter(model="org/name", options=options, dtype="flaot16")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"backend": "gpu"}, "backend must be one of auto, local, remote; got 'gpu'"),
        ({"api_base": "ftp://host"}, "api_base must be an http:// or https:// URL"),
        ({"max_length": 2}, "max_length must be >= 8"),
        ({"model": "./no/such/folder"}, "model folder './no/such/folder' does not exist"),
        ({"top_n": 0}, "greater than or equal to 1"),
        ({"topn": 3}, "Extra inputs are not permitted"),
    ],
)
def test_bad_options_fail_when_the_adapter_is_made(adapter: type, fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        adapter(**{"model": "org/name", **fields})


def test_the_api_key_is_a_secret(adapter: type) -> None:
    made = adapter(model="org/name", api_key="adapter-token-123")
    assert made.api_key.get_secret_value() == "adapter-token-123"
    assert "adapter-token-123" not in repr(made)
    assert "api_key" not in made.model_dump() and "adapter-token-123" not in made.model_dump_json()
