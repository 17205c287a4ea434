"""The server's config.yaml: the seed docs' file, the litellm_params alias, os.environ/VAR, and
every bad config stopping startup with one message that names the key path."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from dheera_local import ConfigError, cli
from dheera_local.server import create_app, load_config, parse_config
from dheera_local.server.run import UnsafeBindError, bind_host

SEED_CONFIG = """
model_list:
  - model_name: bge-reranker-base
    dheera_ai_params:
      model: huggingface/BAAI/bge-reranker-base
      api_key: os.environ/HF_TOKEN
  - model_name: bge-reranker-large
    dheera_ai_params:
      model: huggingface/BAAI/bge-reranker-large
      api_key: os.environ/HF_TOKEN
  - model_name: custom-reranker
    dheera_ai_params:
      model: huggingface/BAAI/bge-reranker-base
      api_base: https://my-custom-hf-endpoint.com
      api_key: your-custom-api-key
"""

LITELLM_CONFIG = """
model_list:
  - model_name: bge-reranker-base
    litellm_params:
      model: huggingface/tiny-org/tiny-bert-reranker
      api_base: http://127.0.0.1:9/tei
      api_key: os.environ/TEI_KEY
      rpm: 60
    model_info:
      mode: rerank
litellm_settings: {num_retries: 3, request_timeout: 10}
router_settings: {routing_strategy: simple-shuffle}
general_settings: {master_key: os.environ/PROXY_KEY, background_health_checks: true, max_documents_per_request: 64}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_seed_config_loads_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_seed_secret")
    config = load_config(write(tmp_path, SEED_CONFIG))
    names = [entry.model_name for entry in config.model_list]
    assert names == ["bge-reranker-base", "bge-reranker-large", "custom-reranker"]
    first, _, custom = (entry.dheera_ai_params for entry in config.model_list)
    assert first.model == "huggingface/BAAI/bge-reranker-base"
    assert first.api_key is not None and first.api_key.get_secret_value() == "hf_seed_secret"
    assert custom.api_base == "https://my-custom-hf-endpoint.com"
    assert "hf_seed_secret" not in repr(config) and "your-custom-api-key" not in repr(config)
    assert config.master_key is None


def test_litellm_params_alias_and_litellm_only_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TEI_KEY", "tei-secret")
    monkeypatch.setenv("PROXY_KEY", "sk-proxy")
    with caplog.at_level(logging.WARNING, logger="dheera_local.server"):
        config = load_config(write(tmp_path, LITELLM_CONFIG))
    params = config.model_list[0].dheera_ai_params
    assert params.model == "huggingface/tiny-org/tiny-bert-reranker"
    assert params.api_key is not None and params.api_key.get_secret_value() == "tei-secret"
    assert config.master_key is not None and config.master_key.get_secret_value() == "sk-proxy"
    assert config.general_settings.max_documents_per_request == 64
    # What means something here is read (retries, timeout, rpm); the rest is named in the warning.
    assert (config.router_settings.num_retries, config.router_settings.timeout) == (3, 10)
    assert config.model_list[0].routing.rpm == 60
    assert "general_settings.background_health_checks" in caplog.text


def test_master_key_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DHEERA_AI_API_KEY", "sk-from-env")
    config = parse_config({"model_list": [{"model_name": "a", "dheera_ai_params": {"model": "org/name"}}]})
    assert config.master_key is not None and config.master_key.get_secret_value() == "sk-from-env"


def test_os_environ_works_for_any_value(tiny_bert: Path) -> None:
    environ = {"MODEL_DIR": str(tiny_bert), "MAXLEN": "64", "DOCS": "12"}
    params = {"model": "os.environ/MODEL_DIR", "max_length": "os.environ/MAXLEN"}
    data = {
        "model_list": [{"model_name": "a", "dheera_ai_params": params}],
        "general_settings": {"max_documents_per_request": "os.environ/DOCS"},
    }
    config = parse_config(data, environ=environ)
    assert config.model_list[0].dheera_ai_params.model == str(tiny_bert)
    assert config.model_list[0].dheera_ai_params.max_length == 64
    assert config.general_settings.max_documents_per_request == 12


def test_an_unset_key_that_the_route_never_needs_warns_and_startup_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dheera_local.server"):
        config = load_config(write(tmp_path, SEED_CONFIG))  # HF_TOKEN is unset in tests
    first, second, custom = (entry.dheera_ai_params for entry in config.model_list)
    assert first.api_key is None and second.api_key is None  # left out: the hosted fallback finds its own token
    assert custom.api_key is not None  # written literally: untouched
    for index in (0, 1):
        assert f"model_list[{index}].dheera_ai_params.api_key: environment variable HF_TOKEN is not set" in caplog.text
    local_only = one({"model": "tiny-org/tiny-bert-reranker", "backend": "local", "api_base": "http://x:1",
                      "api_key": "os.environ/NOT_SET_KEY"})  # fmt: skip
    assert parse_config(local_only).model_list[0].dheera_ai_params.api_key is None


def test_an_unset_key_for_an_entrys_own_endpoint_stops_startup_naming_the_variable() -> None:
    data = {"model_list": [entry({"model": "huggingface/a/b", "api_base": "http://x:1", "api_key": "os.environ/K1"},
                                 key="litellm_params")]}  # fmt: skip
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="config.yaml")
    path = "model_list[0].litellm_params.api_key"
    assert str(info.value) == (
        f"config.yaml: {path}: environment variable K1 is not set (the config says os.environ/K1); "
        "export K1 or change the value"
    )
    assert info.value.path == path


def test_every_problem_of_a_config_comes_in_one_report() -> None:
    data = {
        "model_list": [
            entry({"model": "a/b", "api_base": "os.environ/UNSET_BASE"}),
            entry({"model": "c/d", "backend": "gpu", "max_length": "os.environ/UNSET_LEN"}, name="n"),
            {"model_name": "x"},
        ],
        "general_settings": {"master_key": "os.environ/UNSET_PROXY_KEY", "max_queue_pair": 3},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="config.yaml")
    lines = str(info.value).splitlines()
    assert lines[0] == "config.yaml: 6 problems:"
    assert sorted(line.split(": ", 1)[0].strip() for line in lines[1:]) == sorted([
        f"{P0}.api_base", "model_list[1].dheera_ai_params.max_length", "general_settings.master_key",
        "model_list[1].dheera_ai_params.backend", "model_list[2].dheera_ai_params", "general_settings.max_queue_pair",
    ])  # fmt: skip
    assert "UNSET_BASE is not set" in str(info.value) and "UNSET_PROXY_KEY is not set" in str(info.value)
    assert "UNSET_LEN is not set" in str(info.value) and "integer" not in str(info.value)  # the variable, not its type
    assert info.value.path == f"{P0}.api_base"


def test_fallback_names_and_limits_come_in_one_report() -> None:
    # A repeated model_name is a group of deployments (LiteLLM's load balancing), not a problem; a fallback
    # naming no group is, and comes in the same report as the limits.
    data = {"model_list": [GOOD, GOOD], "router_settings": {"fallbacks": [{"good": ["nowhere", "absent"]}]},
            "general_settings": {"max_documents_per_request": 50, "max_queue_pairs": 10}}  # fmt: skip
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="config.yaml")
    message = str(info.value)
    assert message.startswith("config.yaml: 3 problems:")
    assert "'nowhere' is not a model_name" in message and "'absent' is not a model_name" in message
    assert "\n  general_settings.max_documents_per_request: " in message


def entry(params: dict[str, Any], key: str = "dheera_ai_params", name: str = "m") -> dict[str, Any]:
    return {"model_name": name, key: params}


GOOD = entry({"model": "tiny-org/tiny-bert-reranker"}, name="good")


P0 = "model_list[0].dheera_ai_params"


def one(params: dict[str, Any]) -> dict[str, Any]:
    return {"model_list": [entry(params)]}


@pytest.mark.parametrize(
    ("data", "path", "hint"),
    [
        ({"model_list": [GOOD, entry({"api_base": "http://x"})]}, "model_list[1].dheera_ai_params.model", "missing"),
        ({"model_list": [entry({"api_key": "k"}, key="litellm_params")]}, "model_list[0].litellm_params.model",
         "missing"),
        (one({"model": "a/b", "api_bse": "http://x"}), f"{P0}.api_bse", "api_base"),
        (one({"model": "a/b", "backend": "gpu"}), f"{P0}.backend", "'auto'"),
        (one({"model": "a/b", "max_length": 2}), f"{P0}.max_length", "8"),
        (one({"model": "a/b", "api_base": "ftp://x"}), f"{P0}.api_base", "http"),
        ({"model_list": [{"model_name": "m"}]}, P0, "missing"),
        ({"model_list": [GOOD], "router_settings": {"fallbacks": [{"good": ["gone"]}]}}, "router_settings.fallbacks[0]",
         "not a model_name"),
        ({"model_list": []}, "model_list", "at least 1"),
        ({"model_lst": [GOOD]}, "model_lst", "model_list"),
        ({"model_list": [GOOD], "general_settings": {"master_key": ""}}, "general_settings.master_key", "empty"),
        ({"model_list": [GOOD], "general_settings": {"max_documents_per_request": 50, "max_queue_pairs": 10}},
         "general_settings.max_documents_per_request", "max_queue_pairs"),
        ({"model_list": [{"model_name": "m", "dheera_ai_params": {"model": "a/b"}, "litellm_params": {}}]},
         "model_list[0]", "not both"),
    ],
)  # fmt: skip
def test_a_bad_config_names_the_key_path(data: dict[str, Any], path: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="config.yaml")
    assert info.value.path == path
    message = str(info.value)
    assert message.startswith(f"config.yaml: {path}: ")
    assert hint in message
    assert "\n" not in message


def test_yaml_syntax_errors_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML: .* at line 3"):
        load_config(write(tmp_path, "model_list:\n  - model_name: a\n  dheera_ai_params: {}\n"))
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="expected a mapping with a model_list"):
        load_config(write(tmp_path, "- just a list\n"))


@pytest.mark.parametrize(
    ("params", "path", "hint"),
    [
        ({"model": "rerank-english-v3.0"}, f"{P0}.model", "api_base"),
        ({"model": "tiny-org/tiny-bert-reranker", "dtype": "float8"}, f"{P0}.dtype", "float8"),
        ({"model": "tiny-org/tiny-bert-reranker", "device": "cuda:7"}, f"{P0}.device", "cuda"),
        ({"model": "./no/such/folder"}, f"{P0}.model", "does not exist"),
    ],
)
def test_a_model_that_can_never_be_served_stops_startup(params: dict[str, Any], path: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:  # a misspelt dtype is refused on reading, a missing GPU on planning
        create_app(parse_config({"model_list": [entry(params)]}, source="config.yaml"))
    assert info.value.path == path
    assert str(info.value).startswith(f"config.yaml: {path}: ") and hint in str(info.value)


def test_every_model_that_can_never_be_served_comes_in_one_report() -> None:
    data = {"model_list": [entry({"model": "rerank-english-v3.0"}), GOOD,
                           entry({"model": "tiny-org/not-on-disk", "backend": "local"}, name="n")]}  # fmt: skip
    with pytest.raises(ConfigError) as info:
        create_app(parse_config(data, source="config.yaml"))
    lines = str(info.value).splitlines()
    assert lines[0] == "config.yaml: 2 problems:"
    assert lines[1].startswith(f"  {P0}.model: ") and "api_base" in lines[1]
    assert lines[2].startswith("  model_list[2].dheera_ai_params.model: ") and "not-on-disk" in lines[2]
    assert info.value.path == f"{P0}.model"


def test_bind_rules() -> None:
    assert bind_host(None, authenticated=False, allow_unauthenticated=False) == "127.0.0.1"
    assert bind_host(None, authenticated=True, allow_unauthenticated=False) == "0.0.0.0"
    assert bind_host("::1", authenticated=False, allow_unauthenticated=False) == "::1"
    assert bind_host("0.0.0.0", authenticated=True, allow_unauthenticated=False) == "0.0.0.0"
    assert bind_host("0.0.0.0", authenticated=False, allow_unauthenticated=True) == "0.0.0.0"
    with pytest.raises(UnsafeBindError, match="master_key"):
        bind_host("0.0.0.0", authenticated=False, allow_unauthenticated=False)


def test_cli_reports_a_bad_config_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "model_list:\n  - model_name: a\n    litellm_params: {api_key: k}\n")
    assert cli.main(["--config", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path}: model_list[0].litellm_params.model: required key is missing"


def test_cli_refuses_a_public_host_without_a_master_key(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, f"model_list:\n  - model_name: a\n    dheera_ai_params: {{model: {tiny_bert}}}\n")
    assert cli.main(["serve", "--config", str(path), "--host", "0.0.0.0", "--port", "1"]) == 1
    assert "--allow-unauthenticated" in capsys.readouterr().err


def readme_proxy_config() -> str:
    """The config.yaml of the README's "Proxy server" section, as printed there."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Proxy server\n", 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_the_readmes_config_starts_as_written_on_a_cpu_machine(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi.testclient import TestClient

    # No HF_TOKEN, PROXY_KEY or DHEERA_AI_API_KEY (conftest removes them), no CUDA in CI, no weights for the model.
    with caplog.at_level(logging.WARNING, logger="dheera_local.server"):
        config = load_config(write(tmp_path, readme_proxy_config()))
    assert "HF_TOKEN is not set" in caplog.text
    assert [entry.model_name for entry in config.model_list] == ["bge-reranker-base", "custom-reranker"]
    with TestClient(create_app(config)) as client:
        assert client.get("/health/readiness").status_code == 200
        assert client.get("/v1/models").json()["data"][0]["id"] == "bge-reranker-base"
