"""The backend selector and fallback: auto/local/remote, local -> remote, all failing, parity, shared cache."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import dheera_local
from conftest import TINY_BERT_ID, closed_port
from dheera_local import AllBackendsFailedError, DheeraError, LocalBackendError, ModelNotAvailableError, Reranker
from dheera_local import RemoteBackendError as RemoteError
from dheera_local._local.backend import LocalBackend
from dheera_local.testing import install_in_hub_cache
from loopback import FAST, LoopbackServer, Servers, by_index, call

REMOTE_ID = "tiny-org/remote-only"
BROKEN_ID = "tiny-org/broken-weights"
QUERY = "what is the capital of the united states"
DOCS = [
    "washington is the capital of the united states",
    "carson city is the capital city of nevada",
    "capital punishment existed in the united states",
    "the river in paris",
    "tea and coffee",
    "",
]


@pytest.fixture
def hf(servers: Servers, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> LoopbackServer:
    """HF hosted, serving the tiny BERT model under every hub id these tests use."""
    server = servers.hf({REMOTE_ID: tiny_bert, TINY_BERT_ID: tiny_bert, BROKEN_ID: tiny_bert})
    monkeypatch.setenv("DHEERA_HF_INFERENCE_URL", server.url)
    return server


@pytest.fixture
def broken_cache(tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A hub cache whose only model has garbage for weights: found on disk, fails to load."""
    cache = tmp_path / "hub-broken"
    snapshot = install_in_hub_cache(tiny_bert, BROKEN_ID, cache, revision="b" * 40)
    (snapshot / "model.safetensors").write_bytes(b"this is not a safetensors file")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


# Selection -----------------------------------------------------------------------------------


def test_auto_is_local_when_the_weights_are_on_the_machine(hf: LoopbackServer) -> None:
    response = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, cache=False)
    assert response.backend == "local"
    assert hf.requests == []


def test_auto_is_remote_when_they_are_not(hf: LoopbackServer) -> None:
    response = dheera_local.rerank(REMOTE_ID, QUERY, DOCS, cache=False)
    assert response.backend == "hf_hosted"
    assert response.meta.dheera_local.fallbacks == []
    assert len(hf.scoring()) == 1


def test_backend_remote_skips_local_weights(hf: LoopbackServer, servers: Servers, tiny_bert: Path) -> None:
    assert dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, backend="remote", cache=False).backend == "hf_hosted"
    tei = servers.tei(tiny_bert)
    forced = dheera_local.rerank(f"huggingface/{TINY_BERT_ID}", QUERY, DOCS, backend="remote", api_base=tei.url)
    assert forced.backend == "tei"
    assert len(tei.scoring()) == 1


def test_backend_local_never_goes_remote(hf: LoopbackServer) -> None:
    with pytest.raises(ModelNotAvailableError, match=f"dheera-local pull {REMOTE_ID}"):
        dheera_local.rerank(REMOTE_ID, QUERY, DOCS, backend="local")
    assert hf.requests == []


def test_a_model_folder_cannot_be_forced_remote(tiny_bert: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="cannot be served remotely"):
        dheera_local.rerank(str(tiny_bert), QUERY, DOCS, backend="remote")


# Fallback ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_weights_that_wont_load_fall_back_to_the_endpoint(
    broken_cache: Path, servers: Servers, tiny_bert: Path, reranker: Reranker, mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    tei = servers.tei(tiny_bert)
    with caplog.at_level(logging.WARNING, logger="dheera_local"):
        response = call(reranker, mode, f"huggingface/{BROKEN_ID}", QUERY, DOCS, api_base=tei.url)
    assert response.backend == "tei"
    assert response.meta.dheera_local.fallbacks == ["local"]
    assert response.model_dump()["meta"]["dheera_local"]["fallbacks"] == ["local"]
    assert "local backend failed" in caplog.text and "falling back to tei" in caplog.text
    # The endpoint's scores are cached under the model's identity: the next call needs no backend.
    again = dheera_local.rerank(f"huggingface/{BROKEN_ID}", QUERY, DOCS, api_base=tei.url)
    assert again.backend == "cache" and again.cache_hits == len(DOCS)
    assert by_index(again) == by_index(response)


def test_weights_that_wont_load_fall_back_to_hf_hosted(broken_cache: Path, hf: LoopbackServer) -> None:
    response = dheera_local.rerank(BROKEN_ID, QUERY, DOCS, cache=False)
    assert (response.backend, response.meta.dheera_local.fallbacks) == ("hf_hosted", ["local"])


class InferenceFails:
    """A local backend whose inference fails for good (as after the OOM back-off gave up)."""

    name = "local"

    def __init__(self, local: LocalBackend) -> None:
        self.local = local

    def score(self, query: str, texts: list[str]) -> list[float]:
        raise LocalBackendError(f"{self.local.weights.model_id}: out of memory on cpu even for one pair")

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        return self.score(query, texts)

    def describe(self) -> dict[str, str]:
        return {}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_inference_failure_falls_back_to_the_endpoint(servers: Servers, tiny_bert: Path, mode: str) -> None:
    tei = servers.tei(tiny_bert)
    reranker = Reranker(retry=FAST, local_wrapper=InferenceFails)
    response = call(reranker, mode, f"huggingface/{TINY_BERT_ID}", QUERY, DOCS, api_base=tei.url, cache=False)
    assert (response.backend, response.meta.dheera_local.fallbacks) == ("tei", ["local"])
    assert len(tei.scoring()) == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_when_every_backend_fails_one_error_lists_each_attempt(
    broken_cache: Path, reranker: Reranker, mode: str
) -> None:
    down = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(AllBackendsFailedError) as caught:
        call(reranker, mode, f"huggingface/{BROKEN_ID}", QUERY, DOCS, api_base=down)
    error = caught.value
    assert isinstance(error, DheeraError)
    assert [name for name, _ in error.attempts] == ["local", "tei"]
    assert isinstance(error.attempts[0][1], LocalBackendError)
    assert isinstance(error.attempts[1][1], RemoteError)
    message = str(error)
    assert f"every backend failed for {BROKEN_ID}" in message
    assert "local: " in message and "could not be loaded" in message
    assert f"tei: TEI endpoint {down}/rerank could not be reached" in message
    assert "Fix:" in message


def test_a_remote_only_model_whose_endpoint_fails_says_how_to_fix_it(hf: LoopbackServer, reranker: Reranker) -> None:
    hf.token = "hf_the_right_one"
    with pytest.raises(AllBackendsFailedError) as caught:
        reranker.rerank(REMOTE_ID, QUERY, DOCS)
    message = str(caught.value)
    assert caught.value.status == 401
    assert "answered 401" in message and "check api_key / HF_TOKEN" in message
    assert f"dheera-local pull {REMOTE_ID}" in message


# Parity and the shared cache --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hf", "tei", "cohere"])
def test_local_and_remote_scores_agree(
    servers: Servers, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    local = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, raw_scores=True, dtype="float32", cache=False)
    options: dict[str, object] = {"backend": "remote", "raw_scores": True, "cache": False}
    if kind == "hf":
        server = servers.hf({TINY_BERT_ID: tiny_bert})
        monkeypatch.setenv("DHEERA_HF_INFERENCE_URL", server.url)
        remote = dheera_local.Reranker().rerank(TINY_BERT_ID, QUERY, DOCS, **options)  # reads the new setting
    elif kind == "tei":
        server = servers.tei(tiny_bert)
        remote = dheera_local.rerank(f"huggingface/{TINY_BERT_ID}", QUERY, DOCS, api_base=server.url, **options)
    else:
        server = servers.cohere(tiny_bert)
        remote = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, api_base=server.url, **options)
    assert local.backend == "local" and remote.backend != "local"
    assert [r.index for r in remote.results] == [r.index for r in local.results]
    assert by_index(remote) == pytest.approx(by_index(local), abs=1e-4)


def test_each_backend_keeps_its_own_scores_in_the_cache(hf: LoopbackServer) -> None:
    # The endpoint's numerics (its precision, even its weights) are not ours: a local call never
    # gets a remote score from the cache, and the remote's own scores are reused by the remote.
    remote = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, backend="remote")
    assert remote.backend == "hf_hosted"
    local = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, backend="local", dtype="float32")
    assert (local.backend, local.cache_hits) == ("local", 0)
    assert by_index(local) == pytest.approx(by_index(remote), abs=1e-4)
    more = dheera_local.rerank(TINY_BERT_ID, QUERY, [*DOCS, "one new document"], backend="remote")
    assert more.cache_hits == len(DOCS)
    assert [len(r.body["inputs"]) for r in hf.scoring()] == [len(DOCS), 1]  # only the miss went out
