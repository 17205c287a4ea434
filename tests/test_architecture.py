"""The shape of the engine: injected settings, cache and backends; one plan; one options definition;
the wire format chosen by the endpoint; what imports what, and who closes the shared resources."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dheera_local
from conftest import TINY_BERT_ID, closed_port
from dheera_local import InvalidRequestError, Reranker, Settings
from dheera_local._cache.store import SHARED_CACHES, CacheStore
from dheera_local._local.backend import SHARED_MODELS, LocalBackend
from dheera_local._options import OPTION_NAMES, option_specs
from loopback import Servers, by_index, reference_logits

QUERY = "capital city"
DOCS = ["washington is the capital", "a river in france", "tokyo"]


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


# Imports ------------------------------------------------------------------------------------------------


REMOTE_ONLY = """
import sys, dheera_local
assert "torch" not in sys.modules and "transformers" not in sys.modules, "import dheera_local"
response = dheera_local.rerank("huggingface/org/remote-only", "capital city", ["a", "b"], api_base=sys.argv[1])
print(response.backend, "torch" in sys.modules, "transformers" in sys.modules, "sentence_transformers" in sys.modules)
"""


def test_import_and_a_remote_only_rerank_leave_torch_out(servers: Servers, tiny_bert: Path) -> None:
    tei = servers.tei(tiny_bert)
    done = run_python(REMOTE_ONLY, tei.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["tei", "False", "False", "False"]


CLI_IMPORTS = """
import sys
from dheera_local.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exc:  # argparse exits after --help
    status = exc.code
print()
print(status, sorted(m for m in ("torch", "transformers", "httpx", "sentence_transformers") if m in sys.modules))
"""


@pytest.mark.parametrize("command", [["--help"], ["cache", "stats"], ["score", "--help"]])
def test_cli_commands_that_score_nothing_import_no_engine(command: list[str], tmp_path: Path) -> None:
    done = run_python(CLI_IMPORTS, *command, *(["--cache-dir", str(tmp_path)] if "cache" in command else []))
    status, modules = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert status == "0", done.stderr
    assert modules == "[]", f"{command} imported {modules}"


def test_the_package_has_no_import_cycles() -> None:
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("dheera_local", cache_dir=None)
    cycles = sorted(
        (a, b)
        for a in graph.modules
        for b in graph.find_modules_directly_imported_by(a)
        if graph.find_shortest_chain(importer=b, imported=a) is not None
    )
    assert cycles == []


PACKAGE = Path(dheera_local.__file__).parent
ARCHITECTURE = PACKAGE.parent / "ARCHITECTURE.md"


def runtime_imports(path: Path) -> list[str]:
    """The dheera_local modules ``path`` imports when it runs (function-level imports included; ``if
    TYPE_CHECKING:`` blocks left out: type checkers read them, the interpreter does not)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - child.level + 1]) if child.level else ""
                target = ".".join(filter(None, [base, child.module or ""]))
                for alias in child.names:  # ``from . import _secrets``: the name is a module
                    named = f"{target}.{alias.name}"
                    is_module = (PACKAGE.parent / named.replace(".", "/")).with_suffix(".py").is_file()
                    found.append(named if is_module else target)
            elif isinstance(child, ast.Import):
                found.extend(alias.name for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return [name for name in found if name == "dheera_local" or name.startswith("dheera_local.")]


def top_name(module: str) -> str:
    """The package-root entry a module lives in: ``dheera_local._engine.plan`` -> ``_engine``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def documented_layers() -> tuple[dict[str, str], dict[str, set[str]]]:
    """ARCHITECTURE.md's layer table: which layer each root entry is in, and what each layer may import."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    rows = text.split("<!-- layers -->", 1)[1].strip().split("\n\n", 1)[0].splitlines()[2:]
    layer_of, allowed = {}, {}
    for row in rows:
        layer, holds, imports = (cell.strip() for cell in row.strip("|").split("|"))
        for name in re.findall(r"`([^`]+)`", holds):
            layer_of[name.rstrip("/").removesuffix(".py")] = layer
        allowed[layer] = {layer} | {name.strip() for name in imports.split(",")}
    everything = set(allowed)
    return layer_of, {layer: everything if "every layer" in can else can for layer, can in allowed.items()}


def test_architecture_md_places_every_module_and_the_imports_go_downward() -> None:
    layer_of, allowed = documented_layers()
    on_disk = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if p.suffix == ".py" or (p / "__init__.py").is_file()
    }
    assert on_disk == set(layer_of), "ARCHITECTURE.md's layer table must place each file at the package root"
    upward = sorted(
        f"{path.relative_to(PACKAGE)} ({layer_of[top_name(mine)]}) imports {theirs} ({layer_of[top_name(theirs)]})"
        for path in PACKAGE.rglob("*.py")
        for mine in [".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)]
        for theirs in runtime_imports(path)
        if layer_of[top_name(theirs)] not in allowed[layer_of[top_name(mine)]]
    )
    assert upward == []


def test_architecture_md_names_every_private_module() -> None:
    # The picture and the module table are where a reader looks a file up: a new one must be placed there.
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in ARCHITECTURE.read_text(encoding="utf-8").splitlines()
        if line.startswith("| `_")
    }  # the module table: "| `_local/` | `backend.py` (...), ... |"
    layers = ("_engine/", "_local/", "_remote/", "_cache/", "_models/")
    unnamed = sorted(
        str(path.relative_to(PACKAGE))
        for layer in layers
        for path in (PACKAGE / layer).glob("*.py")
        if path.name != "__init__.py" and f"`{path.name}`" not in rows.get(layer, "")
    )
    assert unnamed == []


CONCRETE_BACKENDS = {"dheera_local._local.backend", "dheera_local._remote.tei", "dheera_local._remote.cohere",
                     "dheera_local._remote.hf_hosted"}  # fmt: skip


def test_only_the_factory_and_the_runtime_name_a_concrete_backend() -> None:
    # The rest of the package (the orchestrator, the proxy, score, Ray) sees the Backend / ModelBackend protocols.
    importers = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if CONCRETE_BACKENDS & set(runtime_imports(path))
    }
    outside = {name for name in importers if not name.startswith(("_local/", "_remote/"))}
    assert outside == {"_engine/factory.py", "_engine/runtime.py"}


# Injection, the plan and the owner of shared resources ---------------------------------------------------


def test_a_reranker_uses_the_settings_and_cache_store_it_is_given(tmp_path: Path, hub_cache: Path) -> None:
    settings = Settings(cache_dir=tmp_path / "injected-cache", hub_cache=hub_cache)
    store = CacheStore()
    with Reranker(settings=settings, cache=store) as reranker:
        first = reranker.rerank(TINY_BERT_ID, QUERY, DOCS, dtype="float32")
        again = reranker.rerank(TINY_BERT_ID, QUERY, DOCS, dtype="float32")
    assert (first.backend, again.backend) == ("local", "cache")
    assert store.is_open(tmp_path / "injected-cache") and (tmp_path / "injected-cache" / "cache.db").is_file()
    assert not SHARED_CACHES.is_open(tmp_path / "injected-cache")
    store.close()


def test_the_plan_names_the_candidates_and_the_local_backend(hub_cache: Path) -> None:
    reranker = Reranker()
    auto = reranker.plan(TINY_BERT_ID, dtype="float32")
    assert auto.backend_names == ("local", "hf_hosted") and isinstance(auto.local, LocalBackend)
    remote = reranker.plan(TINY_BERT_ID, backend="remote")
    assert remote.backend_names == ("hf_hosted",) and remote.local is None and remote.weights is not None
    named = reranker.plan("my-reranker", api_base="http://127.0.0.1:9/")
    assert named.backend_names == ("cohere",) and named.weights is None
    with pytest.raises(InvalidRequestError, match="max_length must be >= 8"):
        reranker.plan(TINY_BERT_ID, max_length=2)


def test_close_all_closes_the_caches_and_forgets_the_models(isolated_env: Path) -> None:
    response = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, dtype="float32")
    plan = Reranker().plan(TINY_BERT_ID, dtype="float32")
    assert response.backend == "local" and plan.local.is_loaded()
    assert SHARED_CACHES.is_open(isolated_env / "score-cache")
    dheera_local.close_all()
    assert not plan.local.is_loaded() and not SHARED_CACHES.is_open(isolated_env / "score-cache")


def test_the_cli_closes_what_it_opened(tmp_path: Path) -> None:
    from dheera_local.cli import main

    assert main(["cache", "stats", "--cache-dir", str(tmp_path)]) == 0
    assert not SHARED_CACHES.is_open(tmp_path)


def test_the_server_lifespan_closes_the_shared_resources(tiny_bert: Path) -> None:
    from server_harness import LiveServer

    live = LiveServer({"model_list": [{"model_name": "m", "dheera_ai_params": {"model": str(tiny_bert)}}]}).start()
    assert live.post("/rerank", {"query": QUERY, "documents": DOCS}, key=None).status_code == 200
    loaded = live.state.registry.default.local
    assert loaded is not None and loaded.is_loaded()
    live.stop()
    assert not loaded.is_loaded()
    assert SHARED_MODELS.get(loaded._key) is None


# One definition of the options ----------------------------------------------------------------------------


def test_every_option_with_a_flag_is_on_the_cli() -> None:
    from dheera_local.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps them here
    for command in ("rerank", "score"):
        flags = {dest for action in commands[command]._actions for dest in [action.dest]}
        expected = {name for name, spec in option_specs().items() if spec.cli is not None}
        if command == "score":
            expected.discard("raw_scores")  # the output has the score and the logit
        assert expected <= flags, expected - flags


def test_config_yaml_takes_the_options_it_declares() -> None:
    from dheera_local.server.config import ModelParams

    configurable = {name for name, spec in option_specs().items() if spec.config is not None}
    assert set(ModelParams.model_fields) == {"model", *configurable}
    assert configurable <= set(OPTION_NAMES)


# The wire format is the endpoint's -------------------------------------------------------------------------


def test_api_format_overrides_the_spelling(servers: Servers, tiny_bert: Path) -> None:
    cohere, tei = servers.cohere(tiny_bert), servers.tei(tiny_bert)
    hf = servers.hf({"org/endpoint-model": tiny_bert})
    reference = reference_logits(tiny_bert, QUERY, DOCS)
    # huggingface/ORG/NAME defaults to TEI; api_format="cohere" sends Cohere bodies instead.
    as_cohere = dheera_local.rerank("huggingface/org/x", QUERY, DOCS, api_base=cohere.url, api_format="cohere")
    assert as_cohere.backend == "cohere" and cohere.scoring()[-1].body["documents"] == DOCS
    # A plain name defaults to Cohere; api_format="tei" sends TEI bodies.
    as_tei = dheera_local.rerank("my-reranker", QUERY, DOCS, api_base=tei.url, api_format="tei", raw_scores=True)
    assert as_tei.backend == "tei" and tei.scoring()[-1].body["texts"] == DOCS
    assert by_index(as_tei) == pytest.approx(dict(enumerate(reference)), abs=1e-5)
    # api_format="hf": a dedicated Inference Endpoint, its URL as api_base.
    url = f"{hf.url}/models/org/endpoint-model"
    as_hf = dheera_local.rerank("huggingface/org/y", QUERY, DOCS, api_base=url, api_format="hf", raw_scores=True)
    assert as_hf.backend == "hf_hosted" and hf.paths()[-1] == "POST /models/org/endpoint-model"
    assert by_index(as_hf) == pytest.approx(dict(enumerate(reference)), abs=1e-5)


def test_api_format_is_validated_and_needs_an_endpoint() -> None:
    with pytest.raises(InvalidRequestError, match="api_format must be one of tei, cohere, hf") as caught:
        dheera_local.rerank("org/x", QUERY, DOCS, api_base="http://127.0.0.1:9", api_format="grpc")
    assert caught.value.param == "api_format"
    with pytest.raises(InvalidRequestError, match="needs api_base") as caught:
        dheera_local.rerank("huggingface/org/remote-only", QUERY, DOCS, api_format="tei")


def test_api_format_from_config_yaml_and_the_cli(servers: Servers, tiny_bert: Path, tmp_path: Path) -> None:
    from dheera_local.server import parse_config
    from dheera_local.server.registry import ModelRegistry

    tei = servers.tei(tiny_bert)
    params = {"model": "my-reranker", "api_base": tei.url, "api_format": "tei"}
    config = parse_config({"model_list": [{"model_name": "m", "dheera_ai_params": params}]})
    assert ModelRegistry.from_config(config, Reranker()).default.backends == ("tei",)
    done = subprocess.run(
        [sys.executable, "-m", "dheera_local", "rerank", "--model", "my-reranker", "--api-base", tei.url,
         "--api-format", "tei", "--query", QUERY, *DOCS],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["meta"]["dheera_local"]["backend"] == "tei"
    closed = f"http://127.0.0.1:{closed_port()}"
    bad = {"model_list": [{"model_name": "m", "dheera_ai_params": {"model": "x", "api_base": closed, "api_format": 1}}]}
    with pytest.raises(dheera_local.ConfigError) as caught:
        parse_config(bad)
    assert caught.value.path == "model_list[0].dheera_ai_params.api_format"
