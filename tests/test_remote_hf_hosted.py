"""HF hosted inference: URL and payload, both response shapes, two-label heads, batches, tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

import dheera_local
from dheera_local import AllBackendsFailedError, Reranker
from dheera_local._settings import DEFAULT_HF_INFERENCE_URL, Settings
from dheera_local.testing import build_cross_encoder
from loopback import Fault, LoopbackServer, Servers, by_index, call, reference_logits

REMOTE_ID = "tiny-org/remote-only"  # not in the test hub cache: auto picks HF hosted
QUERY = "what is the capital of the united states"
DOCS = [
    "washington is the capital of the united states",
    "carson city is the capital city of nevada",
    "capital punishment existed in the united states",
    "the river in paris",
]


@pytest.fixture
def hf(servers: Servers, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> LoopbackServer:
    server = servers.hf({REMOTE_ID: tiny_bert})
    monkeypatch.setenv("DHEERA_HF_INFERENCE_URL", server.url)
    return server


@pytest.mark.parametrize("model", [REMOTE_ID, f"huggingface/{REMOTE_ID}"])
def test_scores_through_hf_hosted_with_the_documented_payload(hf: LoopbackServer, tiny_bert: Path, model: str) -> None:
    response = dheera_local.rerank(model, QUERY, DOCS, raw_scores=True, cache=False)
    assert response.backend == "hf_hosted"
    assert hf.paths() == [f"POST /models/{REMOTE_ID}"]
    body = hf.scoring()[0].body
    assert body["inputs"] == [{"text": QUERY, "text_pair": doc} for doc in DOCS]
    assert body["parameters"]["function_to_apply"] == "none"
    expected = reference_logits(tiny_bert, QUERY, DOCS)
    assert by_index(response) == pytest.approx(dict(enumerate(expected)), abs=1e-6)


@pytest.mark.parametrize("shape", ["flat", "nested"])
@pytest.mark.parametrize("count", [1, 4])
def test_both_response_shapes_give_the_same_scores(
    servers: Servers, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch, shape: str, count: int
) -> None:
    server = servers.hf({REMOTE_ID: tiny_bert}, shape=shape)
    monkeypatch.setenv("DHEERA_HF_INFERENCE_URL", server.url)
    response = dheera_local.rerank(REMOTE_ID, QUERY, DOCS[:count], raw_scores=True, cache=False)
    expected = reference_logits(tiny_bert, QUERY, DOCS[:count])
    assert by_index(response) == pytest.approx(dict(enumerate(expected)), abs=1e-6)


def test_two_label_heads_score_the_log_odds_like_the_local_backend(
    servers: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = build_cross_encoder(tmp_path / "two-labels", num_labels=2, seed=3)
    server = servers.hf({"tiny-org/two-labels": folder})
    monkeypatch.setenv("DHEERA_HF_INFERENCE_URL", server.url)
    remote = dheera_local.rerank("tiny-org/two-labels", QUERY, DOCS, raw_scores=True, cache=False)
    local = dheera_local.rerank(str(folder), QUERY, DOCS, raw_scores=True, dtype="float32", cache=False)
    assert remote.backend == "hf_hosted" and local.backend == "local"
    assert by_index(remote) == pytest.approx(by_index(local), abs=1e-4)
    assert [r.index for r in remote.results] == [r.index for r in local.results]


def test_large_requests_are_split_into_concurrent_batches(hf: LoopbackServer, tiny_bert: Path) -> None:
    docs = [f"document {i} about the capital city of state {i}" for i in range(70)]
    hf.always = Fault(delay=0.2)
    response = dheera_local.rerank(REMOTE_ID, QUERY, docs, raw_scores=True, cache=False)
    assert sorted(len(r.body["inputs"]) for r in hf.scoring()) == [6, 32, 32]
    assert hf.max_in_flight >= 2
    expected = reference_logits(tiny_bert, QUERY, docs)
    assert by_index(response) == pytest.approx(dict(enumerate(expected)), abs=1e-6)


def test_the_base_url_comes_from_the_environment(hf: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DHEERA_HF_INFERENCE_URL", hf.url + "/")
    dheera_local.rerank(REMOTE_ID, QUERY, DOCS, cache=False)
    assert hf.paths() == [f"POST /models/{REMOTE_ID}"]
    monkeypatch.delenv("DHEERA_HF_INFERENCE_URL")
    assert (
        Settings.from_env().hf_inference_url == DEFAULT_HF_INFERENCE_URL == "https://router.huggingface.co/hf-inference"
    )


def test_token_precedence_api_key_then_hf_token_then_saved_token(
    hf: LoopbackServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def sent(**options: object) -> str | None:
        dheera_local.close_all()  # settings are read when the default Reranker is made: read them now
        dheera_local.rerank(REMOTE_ID, QUERY, DOCS[:1], cache=False, **options)
        return hf.scoring()[-1].headers.get("authorization")

    assert sent() is None  # no token anywhere: none is sent
    token_file = tmp_path / "hf-home" / "token"
    token_file.parent.mkdir()
    token_file.write_text("hf_saved_token\n")
    monkeypatch.setenv("HF_TOKEN_PATH", str(token_file))
    assert sent() == "Bearer hf_saved_token"
    monkeypatch.setenv("HF_TOKEN", "hf_env_token")
    assert sent() == "Bearer hf_env_token"
    assert sent(api_key="hf_argument_token") == "Bearer hf_argument_token"


def test_the_saved_token_follows_hf_home(hf: LoopbackServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_TOKEN_PATH")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    (tmp_path / "token").write_text("hf_home_token")
    dheera_local.rerank(REMOTE_ID, QUERY, DOCS[:1], cache=False)
    assert hf.scoring()[0].headers["authorization"] == "Bearer hf_home_token"


def test_an_unknown_model_is_a_404_without_retry(hf: LoopbackServer, reranker: Reranker) -> None:
    with pytest.raises(AllBackendsFailedError) as caught:
        reranker.rerank("tiny-org/not-served", QUERY, DOCS, cache=False)
    assert caught.value.status == 404
    assert "answered 404: Model tiny-org/not-served does not exist" in str(caught.value)
    assert len(hf.scoring()) == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_model_loading_503_is_retried(hf: LoopbackServer, reranker: Reranker, tiny_bert: Path, mode: str) -> None:
    hf.fail(Fault(503, body={"error": f"Model {REMOTE_ID} is currently loading", "estimated_time": 0.01}))
    response = call(reranker, mode, REMOTE_ID, QUERY, DOCS, raw_scores=True, cache=False)
    assert response.backend == "hf_hosted"
    assert len(hf.scoring()) == 2
    expected = reference_logits(tiny_bert, QUERY, DOCS)
    assert by_index(response) == pytest.approx(dict(enumerate(expected)), abs=1e-6)


def test_a_body_of_the_wrong_shape_is_an_error_naming_the_endpoint(hf: LoopbackServer, reranker: Reranker) -> None:
    hf.always = Fault(200, body=[{"label": "LABEL_0", "score": 0.5}])  # one result for four pairs
    with pytest.raises(AllBackendsFailedError, match=r"unexpected body: 1 results for 4 pairs") as caught:
        reranker.rerank(REMOTE_ID, QUERY, DOCS, cache=False)
    assert hf.url + f"/models/{REMOTE_ID}" in str(caught.value)
    assert len(hf.scoring()) == 1
