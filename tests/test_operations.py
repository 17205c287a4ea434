"""Operational conventions: settings read in one place, every engine option from the environment
(flag or config.yaml > environment > default), structured JSON request logs, one-line CLI usage
errors, and the shared cache tier as operators see it (two-level expiry, the readiness probe)."""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer, running_server

import dheera_local
from dheera_local import ConfigError
from dheera_local._cache.shared_tier import KEY_PREFIX, RedisCacheStore, TwoLevelCache
from dheera_local._cache.store import CacheStore
from dheera_local._options import OPTION_NAMES
from dheera_local._secrets import install as install_masking
from dheera_local._settings import CliSettings, Settings, engine_options_from_env, option_variable
from dheera_local.cli import _formatter, build_parser, main
from loopback import LoopbackServer, Servers
from server_harness import MASTER_KEY, LiveServer

QUERY = "capital city"
DOCS = ["washington is the capital", "a river in france", "tokyo"]
PACKAGE = Path(dheera_local.__file__).parent


# --- settings in one place ---------------------------------------------------------------------------------


def _environment_reads(tree: ast.AST) -> list[int]:
    """Lines that touch ``os.environ`` or call ``os.getenv``/``os.putenv`` (however ``os`` is named)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "environb", "getenv", "putenv"):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            if any(alias.name in ("environ", "getenv", "environb") for alias in node.names):
                lines.append(node.lineno)
    return lines


def test_only_the_settings_module_reads_the_environment() -> None:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == "_settings.py":
            assert _environment_reads(ast.parse(path.read_text(encoding="utf-8")))  # the check sees reads
            continue
        lines = _environment_reads(ast.parse(path.read_text(encoding="utf-8")))
        if lines:
            found[relative] = lines
    assert found == {}, f"environment read outside _settings.py: {found}"


def test_every_engine_option_has_its_variable() -> None:
    every = {option_variable(name): "x" for name in OPTION_NAMES}
    settings = Settings.from_env({**every, "HOME": "/nonexistent"})
    assert {variable for variable, _ in settings.engine_env} == set(every)
    assert option_variable("device") == "DHEERA_DEVICE" and option_variable("max_length") == "DHEERA_MAX_LENGTH"


def test_variables_become_typed_checked_options() -> None:
    options = engine_options_from_env({
        "DHEERA_DEVICE": "cpu", "DHEERA_DTYPE": "float32", "DHEERA_MAX_LENGTH": " 256 ", "DHEERA_CACHE": "off",
        "DHEERA_TIMEOUT": "2.5", "DHEERA_BACKEND": "local", "DHEERA_RAW_SCORES": "true", "DHEERA_BATCH_TOKENS": "4096",
        "DHEERA_API_KEY": "sk-env-endpoint-key", "DHEERA_PROMPT": "",  # empty: unset
    })  # fmt: skip
    key = options.pop("api_key")
    assert key.get_secret_value() == "sk-env-endpoint-key"
    assert options == {
        "device": "cpu", "dtype": "float32", "max_length": 256, "cache": False, "timeout": 2.5, "backend": "local",
        "raw_scores": True, "batch_tokens": 4096,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("DHEERA_DTYPE", "flaot16", "did you mean 'float16'"),
        ("DHEERA_DEVICE", "cpux", "is not a torch device"),
        ("DHEERA_MAX_LENGTH", "lots", "valid integer"),
        ("DHEERA_MAX_LENGTH", "4", "max_length must be >= 8"),
        ("DHEERA_CACHE", "maybe", "valid boolean"),
        ("DHEERA_BACKEND", "cloud", "backend must be one of auto, local, remote"),
        ("DHEERA_TIMEOUT", "-1", "positive, finite number of seconds"),
    ],
)
def test_a_bad_variable_is_a_config_error_naming_it(variable: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        engine_options_from_env({variable: value})
    assert str(caught.value).startswith(f"{variable}={value!r}: ") and says in str(caught.value)
    assert caught.value.path == variable and "\n" not in str(caught.value)


def test_a_key_variable_is_masked_once_read() -> None:
    from dheera_local._secrets import mask

    Settings.from_env({"DHEERA_API_KEY": " sk-canary-from-env-777\n"})
    assert mask("sent sk-canary-from-env-777") == "sent ***"


def test_a_bad_key_variable_never_shows_its_value() -> None:
    with pytest.raises(ConfigError) as caught:
        engine_options_from_env({"DHEERA_API_KEY": "sk-canary\x01secret"})
    assert "canary" not in str(caught.value) and "DHEERA_API_KEY=(value hidden)" in str(caught.value)


def test_cli_variables_are_typed_and_checked() -> None:
    env = CliSettings.from_env({
        "DHEERA_CONFIG": "/etc/c.yaml", "DHEERA_PORT": "8080", "DHEERA_ALLOW_UNAUTHENTICATED": "yes",
        "DHEERA_LOG_FORMAT": "JSON",
    })  # fmt: skip
    assert env == CliSettings(config="/etc/c.yaml", port=8080, allow_unauthenticated=True, log_format="json")
    for variable, value in [("DHEERA_PORT", "80a"), ("DHEERA_PORT", "70000"), ("DHEERA_LOG_FORMAT", "xml"),
                            ("DHEERA_ALLOW_UNAUTHENTICATED", "perhaps")]:  # fmt: skip
        with pytest.raises(ConfigError, match=f"^{variable}="):
            CliSettings.from_env({variable: value})


# --- precedence: flag > environment > default ----------------------------------------------------------------


def test_a_flag_beats_the_environment_which_beats_the_default() -> None:
    env = engine_options_from_env({"DHEERA_MAX_LENGTH": "64", "DHEERA_CACHE": "0", "DHEERA_DEVICE": "cpu"})
    rerank = ["rerank", "--model", "m", "--query", "q", "doc"]
    from_env = build_parser(env_options=env).parse_args(rerank)
    assert (from_env.max_length, from_env.cache, from_env.device) == (64, False, "cpu")
    flagged = build_parser(env_options=env).parse_args([*rerank, "--max-length", "128"])
    assert flagged.max_length == 128
    plain = build_parser().parse_args(rerank)
    assert (plain.max_length, plain.cache, plain.device) == (None, True, None)
    score = build_parser(env_options=env).parse_args(["score", "--model", "m", "--input", "i", "--output", "o"])
    assert score.max_length == 64  # every command with engine flags


def test_the_cli_scores_with_the_environments_options(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def scores(*flags: str) -> list[float]:
        assert main(["rerank", "--model", str(tiny_bert), "--query", QUERY, "--no-cache", *flags, *DOCS]) == 0
        results = json.loads(capsys.readouterr().out)["results"]
        return [r["relevance_score"] for r in sorted(results, key=lambda r: r["index"])]

    sigmoid = scores()
    raw = scores("--raw-scores")
    monkeypatch.setenv("DHEERA_RAW_SCORES", "1")
    assert scores() == raw != sigmoid


def test_a_bad_variable_stops_the_cli_with_one_line(tiny_bert: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dheera_local", "rerank", "--model", str(tiny_bert), "--query", QUERY, "doc"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "DHEERA_DTYPE": "flaot16"},
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith("error: DHEERA_DTYPE=")


def _one_model(tiny_bert: Path, **params: Any) -> dict[str, Any]:
    return {
        "model_list": [{"model_name": "m", "dheera_ai_params": {"model": str(tiny_bert), **params}}],
        "general_settings": {"master_key": MASTER_KEY},
    }


def test_the_server_takes_options_from_the_environment_below_config_yaml(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DHEERA_MAX_LENGTH", "24")
    for params, expected in [({}, 24), ({"max_length": 40}, 40)]:
        server = LiveServer(_one_model(tiny_bert, **params)).start()
        try:
            assert server.get("/info").json()["max_input_length"] == expected
            assert server.state.registry.default.options.max_length == expected
        finally:
            server.stop()


def test_a_variable_the_plan_refuses_is_named(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dheera_local.server import create_app, parse_config

    monkeypatch.setenv("DHEERA_INSTRUCTION", "find the capital")  # valid alone; a cross-encoder takes none
    with pytest.raises(ConfigError) as caught:
        create_app(parse_config(_one_model(tiny_bert), source="c.yaml"))
    prefix = "c.yaml: model_list[0].dheera_ai_params.instruction (from DHEERA_INSTRUCTION): instruction is for LLM"
    assert str(caught.value).startswith(prefix)


def test_a_bad_variable_stops_the_server_with_one_line(tiny_bert: Path, tmp_path: Path) -> None:
    from dheera_local.server import create_app, parse_config
    from dheera_local.server.run import serve

    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(_one_model(tiny_bert)), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DHEERA_DEVICE", "cpux")
        with pytest.raises(ConfigError, match="^DHEERA_DEVICE='cpux': device 'cpux' is not a torch device"):
            create_app(parse_config(_one_model(tiny_bert)))
        stderr = io.StringIO()
        patch.setattr(sys, "stderr", stderr)
        assert serve(config, port=0) == 1
    assert stderr.getvalue().startswith("error: DHEERA_DEVICE='cpux'") and stderr.getvalue().count("\n") == 1


# --- CLI usage errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["rerank", "--query", "q"], "the following arguments are required: --model"),
        (["rerank", "--model", "m", "--query", "q", "--top-n", "three"], "argument --top-n: invalid int value"),
        (["rerank", "--model", "m", "--query", "q", "--backend", "cloud"], "argument --backend: invalid choice"),
        (["score", "--model", "m"], "the following arguments are required: --input, --output"),
        (["serve"], "the following arguments are required: --config"),
        (["serve", "--config", "c.yaml", "--port", "http"], "argument --port: invalid int value"),
        (["pull"], "the following arguments are required: MODEL"),
        (["cache", "purge"], "argument action: invalid choice"),
        (["models", "--bogus"], "unrecognized arguments: --bogus"),
        (["rerank-all"], "argument COMMAND: invalid choice"),
    ],
)
def test_a_usage_error_is_one_error_line(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DHEERA_CONFIG", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and says in err, err
    command = argv[0] if argv[0] in ("rerank", "score", "serve", "pull", "cache", "models") else None
    assert err.rstrip().endswith(f"(see `dheera-local{' ' + command if command else ''} --help`)")


def test_a_usage_error_in_a_real_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dheera_local", "rerank", "--query", "q"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "error: the following arguments are required: --model (see `dheera-local rerank --help`)\n"


# --- structured JSON logs ------------------------------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The server's records, written by the CLI's --log-format json formatter with its masking."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_formatter("json"))
    install_masking(handler)
    logger = logging.getLogger("dheera_local.server")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def _requests(stream: io.StringIO) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [record for record in records if "request_id" in record]


ENDPOINT_KEY = "sk-canary-endpoint-key-31337"
TEAM_KEY = "sk-canary-team-key-4242"


def test_request_fields_are_json_keys_and_no_key_is_logged(
    json_log: io.StringIO, servers: Servers, tiny_bert: Path
) -> None:
    tei: LoopbackServer = servers.tei(tiny_bert)
    data = {
        "model_list": [{"model_name": "remote-m", "dheera_ai_params": {
            "model": "huggingface/tiny-org/tiny-bert-reranker", "api_base": tei.url, "api_key": ENDPOINT_KEY,
            "backend": "remote", "cache": False,
        }}],
        "general_settings": {"master_key": MASTER_KEY, "api_keys": [{"key": TEAM_KEY, "name": "team-a"}]},
    }  # fmt: skip
    server = LiveServer(data).start()
    try:
        ok = server.post("/v1/rerank", {"model": "remote-m", "query": QUERY, "documents": DOCS}, key=TEAM_KEY)
        unknown = server.post("/v1/rerank", {"model": "nope", "query": QUERY, "documents": DOCS})
        refused = server.post("/v1/rerank", {"query": QUERY, "documents": DOCS}, key="sk-canary-wrong-key-999")
    finally:
        server.stop()
    assert (ok.status_code, unknown.status_code, refused.status_code) == (200, 404, 401)
    assert tei.scoring()[-1].headers["authorization"] == f"Bearer {ENDPOINT_KEY}"  # the key was really used
    records = _requests(json_log)
    first = next(r for r in records if r["request_id"] == ok.headers["x-request-id"])
    assert first["status"] == 200 and first["method"] == "POST" and first["path"] == "/v1/rerank"
    assert first["route"] == "/v1/rerank" and isinstance(first["latency_ms"], float) and first["latency_ms"] > 0
    assert (first["model"], first["backend"], first["key_name"]) == ("remote-m", "tei", "team-a")
    assert (first["documents"], first["cache_hits"], first["pairs"]) == (3, 0, 3)
    assert first["level"] == "INFO" and first["name"] == "dheera_local.server"
    statuses = {r["request_id"]: r["status"] for r in records}
    assert statuses[unknown.headers["x-request-id"]] == 404 and statuses[refused.headers["x-request-id"]] == 401
    text = json_log.getvalue()
    for secret in (ENDPOINT_KEY, TEAM_KEY, MASTER_KEY, "sk-canary-wrong-key-999"):
        assert secret not in text


def test_client_chosen_text_in_the_fields_is_masked(json_log: io.StringIO, tiny_bert: Path) -> None:
    server = LiveServer(_one_model(tiny_bert)).start()
    try:
        # A client that sends a key where the model name goes must not get it written to the log.
        answer = server.post("/v1/rerank", {"model": MASTER_KEY, "query": QUERY, "documents": DOCS})
    finally:
        server.stop()
    assert answer.status_code == 404
    assert MASTER_KEY not in json_log.getvalue() and _requests(json_log)


def test_a_route_field_named_like_a_record_attribute_is_prefixed(json_log: io.StringIO) -> None:
    from dheera_local.server.middleware import _log

    scope = {"type": "http", "method": "POST", "path": "/x", "state": {"log": {"name": "n", "key": "team-a"}}}
    _log(scope, "rid-1", 200, 0.0123)  # logging raises KeyError for an extra= "name": it must not reach it
    line = _requests(json_log)[-1]
    assert (line["field_name"], line["key_name"], line["name"]) == ("n", "team-a", "dheera_local.server")
    assert (line["request_id"], line["latency_ms"], line["route"]) == ("rid-1", 12.3, None)


# --- the shared tier: two-level expiry, readiness ----------------------------------------------------------------


@pytest.fixture
def tier(tmp_path: Path) -> Iterator[RedisServer]:
    with running_server(tmp_path / "redis") as server:
        yield server


def test_two_levels_copy_a_tier_hit_with_the_time_it_has_left(tier: RedisServer, tmp_path: Path) -> None:
    writer = RedisCacheStore(tier.url, local_store=CacheStore())
    writer.shared.set_many({"remote": 1.5}, expire=100)  # a remote endpoint's score, DHEERA_REMOTE_CACHE_TTL=100
    writer.shared.set_many({"local": 2.5})  # a local model's: no expiry
    reader = RedisCacheStore(tier.url, local=True, local_store=CacheStore())
    two = reader.open(tmp_path / "disk")
    assert isinstance(two, TwoLevelCache)
    assert two.get_many(["remote", "local", "missing"]) == {"remote": 1.5, "local": 2.5}
    tier.client().flushall()  # from here on only the disk copies answer
    disk = two.local
    assert disk.get_many(["remote", "local"]) == {"remote": 1.5, "local": 2.5}
    now = time.time()
    disk.clock = lambda: now + 101  # past the tier's expiry: the copy has expired with it
    assert disk.get_many(["remote", "local"]) == {"local": 2.5}
    disk.clock = lambda: now + 10 * 365 * 86400
    assert disk.get_many(["local"]) == {"local": 2.5}  # no expiry in the tier: none on disk
    writer.close()
    reader.close()


def test_two_levels_keep_the_tiers_ttl_and_skip_entries_about_to_expire(tier: RedisServer, tmp_path: Path) -> None:
    store = RedisCacheStore(tier.url, ttl=50, local=True, local_store=CacheStore())
    client = tier.client()
    store.shared.set_many({"a": 1.0})
    client.set(KEY_PREFIX + "b", b"\x3f\xf0\x00\x00\x00\x00\x00\x00", px=500)  # 1.0, half a second left
    two = store.open(tmp_path / "disk")
    assert two.get_many(["a", "b"]) == {"a": 1.0, "b": 1.0}
    now = time.time()
    two.local.clock = lambda: now + 40
    assert two.local.get_many(["a", "b"]) == {"a": 1.0}  # b was not worth copying
    two.local.clock = lambda: now + 51
    assert two.local.get_many(["a"]) == {}  # the tier's own TTL of 50 s came along
    store.close()


def _tier_config(tiny_bert: Path, url: str) -> dict[str, Any]:
    data = _one_model(tiny_bert)
    data["general_settings"]["cache_url"] = url
    return data


def test_readiness_reports_the_shared_tier(tier: RedisServer, tiny_bert: Path) -> None:
    server = LiveServer(_tier_config(tiny_bert, tier.url)).start()
    try:
        up = server.get("/health/readiness", key=None)
        tier.kill()
        down = server.get("/health/readiness", key=None)
        scored = server.post("/v1/rerank", {"query": QUERY, "documents": DOCS})
    finally:
        server.stop()
    assert (up.status_code, up.json()) == (200, {"status": "healthy", "shared_cache": {"status": "connected"}})
    assert down.status_code == 200  # still ready: requests are scored uncached
    assert down.json()["status"] == "degraded" and down.json()["shared_cache"]["status"] == "unreachable"
    assert "scored without the shared cache" in down.json()["shared_cache"]["effect"]
    assert scored.status_code == 200 and scored.headers["x-dheera-backend"] == "local"
    assert tier.url.split("@")[-1].split("/")[0] not in up.text  # the open probe does not tell the tier's address


def test_readiness_reports_a_tier_named_by_the_environment(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import closed_port

    monkeypatch.setenv("DHEERA_CACHE_URL", f"redis://127.0.0.1:{closed_port()}/0")
    server = LiveServer(_one_model(tiny_bert)).start()
    try:
        answer = server.get("/health/readiness", key=None)
    finally:
        server.stop()
        dheera_local.close_all()
    assert answer.status_code == 200 and answer.json()["status"] == "degraded"


def test_readiness_without_a_tier_is_unchanged(tiny_bert: Path) -> None:
    server = LiveServer(_one_model(tiny_bert)).start()
    try:
        assert server.get("/health/readiness", key=None).json() == {"status": "healthy"}
    finally:
        server.stop()
