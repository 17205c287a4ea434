"""Hostile input and faults against the SDK: each test pins a promise of the README's "Security and limits".

An attacker here controls what the library is given (queries, documents, objects), what a remote
endpoint answers (echoed tokens, trickled bytes, huge bodies), and the cache folder's rows; the
library must answer with a clear error or the right scores, never a stack trace from deep inside
torch or httpx, never another precision's or endpoint's cached scores, never a secret.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import dheera_local
from conftest import TINY_BERT_ID
from dheera_local import AllBackendsFailedError, InvalidRequestError, Reranker, RetryPolicy, close_all, testing
from loopback import FAST, Fault, Servers, by_index, call, reference_logits

QUERY = "what is the capital of the united states"
DOCS = ["washington is the capital", "carson city is in nevada", "the river in paris", "capital punishment"]


def secret() -> str:
    """A token no other test registered, so masking is proven by the path under test."""
    return f"hf_{uuid.uuid4().hex}"


REMOTE = "huggingface/tiny-org/remote-only"


def logits(response: dheera_local.RerankResponse) -> dict[int, float]:
    return by_index(response)


def cache_db(isolated_env: Path) -> Path:
    return isolated_env / "score-cache" / "cache.db"


# 1. The cache identity names the numerics --------------------------------------------------------


def test_a_float32_call_is_not_served_the_bf16_scores_of_the_cache(tiny_bert: Path) -> None:
    bf16 = dheera_local.rerank(str(tiny_bert), QUERY, DOCS, dtype="bfloat16", raw_scores=True)
    fp32 = dheera_local.rerank(str(tiny_bert), QUERY, DOCS, dtype="float32", raw_scores=True)
    assert (fp32.backend, fp32.cache_hits) == ("local", 0)
    reference = reference_logits(tiny_bert, QUERY, DOCS)
    assert all(abs(logits(fp32)[i] - reference[i]) < 1e-5 for i in range(len(DOCS)))
    # Each precision keeps its own scores: both come back from the cache, unchanged.
    again32 = dheera_local.rerank(str(tiny_bert), QUERY, DOCS, dtype="float32", raw_scores=True)
    again16 = dheera_local.rerank(str(tiny_bert), QUERY, DOCS, dtype="bfloat16", raw_scores=True)
    assert (again32.backend, again16.backend) == ("cache", "cache")
    assert logits(again32) == logits(fp32) and logits(again16) == logits(bf16)


def test_cohere_endpoints_serving_one_name_do_not_share_scores(
    servers: Servers, tiny_bert: Path, tiny_xlmr: Path
) -> None:
    first, second = servers.cohere(tiny_bert), servers.cohere(tiny_xlmr)
    for model in ("my-reranker", "some-org/some-reranker"):  # a plain name, and a hub-id-like one
        a = dheera_local.rerank(model, QUERY, DOCS, api_base=first.url)
        b = dheera_local.rerank(model, QUERY, DOCS, api_base=second.url)
        assert (a.backend, b.backend) == ("cohere", "cohere")
        expected = [1 / (1 + math.exp(-x)) for x in reference_logits(tiny_xlmr, QUERY, DOCS)]
        assert all(abs(by_index(b)[i] - expected[i]) < 1e-4 for i in range(len(DOCS)))
        assert dheera_local.rerank(model, QUERY, DOCS, api_base=first.url).backend == "cache"


def test_a_fallback_stores_under_its_own_identity(servers: Servers, tiny_bert: Path, tiny_xlmr: Path) -> None:
    # Local weights of the tiny BERT; the TEI endpoint serves another model under the same name.
    tei = servers.tei(tiny_xlmr)
    remote = dheera_local.rerank(f"huggingface/{TINY_BERT_ID}", QUERY, DOCS, api_base=tei.url, backend="remote")
    local = dheera_local.rerank(f"huggingface/{TINY_BERT_ID}", QUERY, DOCS, api_base=tei.url, dtype="float32")
    assert (remote.backend, local.backend) == ("tei", "local")
    assert by_index(local) != by_index(remote)


# 2. A huge query ------------------------------------------------------------------------------------


def test_a_query_over_the_limit_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidRequestError, match="query is 1,000,002 characters; the limit is 100,000") as caught:
        dheera_local.rerank(REMOTE, "paris " * 166667, DOCS)
    assert caught.value.param == "query"


@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_xlmr"])
def test_a_query_longer_than_the_window_scores_as_crossencoder(
    model_fixture: str, request: pytest.FixtureRequest
) -> None:
    folder = request.getfixturevalue(model_fixture)
    query = " ".join(["capital", "paris", "river", "united", "states", "nevada"] * 700)  # ~4,200 words
    docs = [*DOCS, "paris " * 300]  # the last pair truncates both sides
    response = dheera_local.rerank(str(folder), query, docs, dtype="float32", raw_scores=True, cache=False)
    reference = reference_logits(folder, query, docs)
    assert all(abs(logits(response)[i] - reference[i]) < 1e-5 for i in range(len(docs)))


MEMORY_PROBE = """
import sys, dheera_local
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
folder = sys.argv[1]
docs = [f"document number {i} about the river" for i in range(1000)]
dheera_local.rerank(folder, "paris " * 300, docs, cache=False, dtype="float32")  # pairs of full width
before = peak_mb()
dheera_local.rerank(folder, ("paris " * 20000)[:99_999], docs, cache=False, dtype="float32")
print(peak_mb() - before)
"""


def test_memory_does_not_grow_with_query_length(tiny_bert: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(tiny_bert)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    growth_mb = float(result.stdout.strip().splitlines()[-1])
    assert growth_mb < 300, f"peak RSS grew {growth_mb:.0f} MB for a 100,000-character query x 1,000 documents"


# 3. Planted cache rows --------------------------------------------------------------------------------


def test_planted_rows_never_delete_files_outside_the_cache(isolated_env: Path, tiny_bert: Path) -> None:
    first = dheera_local.rerank(str(tiny_bert), QUERY, DOCS, dtype="float32")
    victims = isolated_env / "victims"
    victims.mkdir()
    with sqlite3.connect(cache_db(isolated_env)) as db:
        keys = [row[0] for row in db.execute("SELECT key FROM Cache")]
        for number, key in enumerate(keys):
            victim = victims / f"precious-{number}.txt"
            victim.write_text("keep me")
            mode, filename = (4, str(victim)) if number % 2 else (1, f"../../victims/{victim.name}")
            db.execute("UPDATE Cache SET mode = ?, filename = ?, value = NULL WHERE key = ?", (mode, filename, key))
    again = dheera_local.rerank(str(tiny_bert), QUERY, DOCS, dtype="float32")  # refused rows: rescored, rewritten
    assert (again.backend, again.cache_hits) == ("local", 0)
    assert by_index(again) == by_index(first)
    assert sorted(p.name for p in victims.iterdir()) == sorted(f"precious-{n}.txt" for n in range(len(keys)))
    assert dheera_local.rerank(str(tiny_bert), QUERY, DOCS, dtype="float32").backend == "cache"


@pytest.mark.parametrize(
    ("key", "value", "refused"),
    [
        ("disk_evil", 1, True),  # diskcache would pass it to Disk(**kwargs): TypeError
        ("sqlite_writable_schema", 1, True),  # an unknown PRAGMA
        ("size", "lots", True),  # a counter that is not a number
        ("eviction_policy", "bogus", False),  # known keys: our value is used and written back
        ("sqlite_mmap_size", "0; DROP TABLE Cache", False),
        ("sqlite_journal_mode", "off", False),
    ],
)
def test_corrupt_settings_rows_are_refused_or_overridden(
    isolated_env: Path, tiny_bert: Path, caplog: pytest.LogCaptureFixture, key: str, value: object, refused: bool
) -> None:
    first = dheera_local.rerank(str(tiny_bert), QUERY, DOCS, dtype="float32")
    close_all()
    with sqlite3.connect(cache_db(isolated_env)) as db:
        db.execute("INSERT OR REPLACE INTO Settings VALUES (?, ?)", (key, value))
    caplog.clear()
    again = dheera_local.rerank(str(tiny_bert), QUERY, DOCS, dtype="float32")
    assert by_index(again) == by_index(first)
    with sqlite3.connect(cache_db(isolated_env)) as db:
        assert db.execute("SELECT COUNT(*) FROM Cache").fetchone()[0] == len(DOCS)  # no DROP ran
        stored = db.execute("SELECT value FROM Settings WHERE key = ?", (key,)).fetchone()[0]
    if refused:
        assert again.backend == "local"
        assert "cannot be opened" in caplog.text and "scoring without a cache" in caplog.text
    else:
        assert again.backend == "cache" and stored != value


def test_one_request_larger_than_the_cache_does_not_empty_it(
    monkeypatch: pytest.MonkeyPatch, tiny_bert: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DHEERA_CACHE_SIZE_LIMIT", str(256 * 1024))
    close_all()
    kept = dheera_local.rerank(str(tiny_bert), QUERY, DOCS, dtype="float32", max_length=16)
    many = [f"document {i}" for i in range(5000)]
    dheera_local.rerank(str(tiny_bert), "another query", many, dtype="float32", max_length=16)
    again = dheera_local.rerank(str(tiny_bert), QUERY, DOCS, dtype="float32", max_length=16)
    assert again.backend == "cache" and by_index(again) == by_index(kept)
    assert "would not fit beside the others" in caplog.text
    close_all()


# 4. Secrets in error paths ------------------------------------------------------------------------------


def assert_no_secret(text: str, token: str) -> None:
    for start in range(0, len(token) - 7):
        assert token[start : start + 8] not in text, f"a piece of the secret leaked: {text!r}"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_token_echoed_in_a_redirect_location_is_masked(
    servers: Servers, tiny_bert: Path, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    tei, token = servers.tei(tiny_bert), secret()
    tei.always = Fault(302, headers={"Location": f"https://evil.example/steal?token={token}"})
    with pytest.raises(AllBackendsFailedError) as caught:
        call(Reranker(retry=FAST), mode, REMOTE, QUERY, DOCS, api_base=tei.url, api_key=token, cache=False)
    assert "redirect to https://evil.example/steal?token=***" in str(caught.value)
    assert_no_secret(str(caught.value), token)
    assert_no_secret(caplog.text, token)


def test_a_token_quoted_by_a_parse_error_is_masked_before_the_cut(
    servers: Servers, tiny_bert: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tei, token = servers.tei(tiny_bert), secret()
    # The quoted entry is cut at 80 characters: the token starts just before the cut.
    tei.always = Fault(200, body=[{"index": 0, "score": "x" * 47 + token}])
    with pytest.raises(AllBackendsFailedError, match="bad rank entry") as caught:
        Reranker(retry=FAST).rerank(REMOTE, QUERY, DOCS, api_base=tei.url, api_key=token, cache=False)
    assert_no_secret(str(caught.value), token)
    assert_no_secret(caplog.text, token)


@pytest.mark.parametrize("source", ["HF_TOKEN", "saved"])
def test_the_hf_token_from_the_environment_is_masked_too(
    servers: Servers, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch, isolated_env: Path, source: str
) -> None:
    hf, token = servers.hf({"tiny-org/remote-only": tiny_bert}), secret()
    hf.always = Fault(200, body=[[{"label": "LABEL_0", "score": f"echo {token}"}]] * len(DOCS))
    monkeypatch.setenv("DHEERA_HF_INFERENCE_URL", hf.url)
    if source == "HF_TOKEN":
        monkeypatch.setenv("HF_TOKEN", token)
    else:
        (isolated_env / "no-token").write_text(token)
    with pytest.raises(AllBackendsFailedError, match="bad label entry") as caught:
        Reranker(retry=FAST).rerank(REMOTE, QUERY, DOCS, cache=False)
    assert hf.scoring()[0].headers["authorization"] == f"Bearer {token}"
    assert_no_secret(str(caught.value), token)


def test_every_logger_of_the_package_masks_secrets() -> None:
    import re

    from dheera_local._secrets import LOGGER_NAMES

    package = Path(dheera_local.__file__).parent
    used = {m for f in package.rglob("*.py") for m in re.findall(r'getLogger\("([^"]+)"\)', f.read_text())}
    assert used and used <= set(LOGGER_NAMES), used - set(LOGGER_NAMES)
    token = secret()
    with pytest.raises(dheera_local.ModelNotAvailableError):  # api_key= is registered as it is validated
        dheera_local.rerank("not-a-hub-id", QUERY, DOCS, api_key=token)
    for name in LOGGER_NAMES:
        record = logging.LogRecord(name, logging.WARNING, __file__, 1, "sent %s", (token,), None)
        for handler_filter in logging.getLogger(name).filters:
            handler_filter.filter(record)
        assert record.getMessage() == "sent ***"


# 5. The deadline bounds the whole answer --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("headers_too", [False, True])
def test_a_trickling_answer_cannot_outlast_the_deadline(
    servers: Servers, tiny_bert: Path, mode: str, headers_too: bool
) -> None:
    tei = servers.tei(tiny_bert)
    answer = [{"index": i, "score": 0.5} for i in range(len(DOCS))]  # ~110 bytes: a minute at 0.5 s per byte
    tei.always = Fault(trickle=0.5, trickle_headers=headers_too, body=answer)
    reranker = Reranker(retry=RetryPolicy(max_attempts=2, deadline=3.0, base_delay=0.01))
    started = time.monotonic()
    with pytest.raises(AllBackendsFailedError, match="timed out"):
        call(reranker, mode, REMOTE, QUERY, DOCS, api_base=tei.url, cache=False)
    assert time.monotonic() - started < 15  # the deadline (3 s) with slack; the answer would take a minute


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_timeout_bounds_each_attempt_body_included(servers: Servers, tiny_bert: Path, mode: str) -> None:
    tei = servers.tei(tiny_bert)
    tei.always = Fault(trickle=0.3, body=[{"index": i, "score": 0.5} for i in range(len(DOCS))])
    reranker = Reranker(retry=RetryPolicy(max_attempts=2, deadline=120.0, base_delay=0.01))
    started = time.monotonic()
    with pytest.raises(AllBackendsFailedError, match="timed out"):
        call(reranker, mode, REMOTE, QUERY, DOCS, api_base=tei.url, cache=False, timeout=1.0)
    assert time.monotonic() - started < 15  # two attempts of at most 1 s, not 120 s
    assert len(tei.scoring()) == 2


def test_an_oversized_answer_is_refused(servers: Servers, tiny_bert: Path) -> None:
    tei = servers.tei(tiny_bert)
    tei.always = Fault(200, body=json.dumps([{"index": 0, "score": 0.5, "pad": "x" * 17_000_000}]))
    with pytest.raises(AllBackendsFailedError, match="answered more than 16 MB"):
        Reranker(retry=FAST).rerank(REMOTE, QUERY, DOCS, api_base=tei.url, cache=False)


# 6. Invalid text ----------------------------------------------------------------------------------------


def test_lone_surrogates_are_invalid_requests_naming_the_field() -> None:
    with pytest.raises(InvalidRequestError, match="not valid Unicode") as caught:
        dheera_local.rerank(REMOTE, "q\ud800", DOCS)
    assert caught.value.param == "query"
    with pytest.raises(InvalidRequestError, match="documents\\[2\\] is not valid Unicode") as caught:
        dheera_local.rerank(REMOTE, QUERY, ["a", "b", "c\udcff"])
    assert caught.value.param == "documents[2]"
    with pytest.raises(InvalidRequestError) as caught:
        dheera_local.rerank(REMOTE, QUERY, ["a", {"title": "t\ud83d", "text": "b"}], rank_fields=["title"])
    assert caught.value.param == "documents[1]"


def test_deeply_nested_documents_are_invalid_requests() -> None:
    deep: dict = {"text": "x"}
    for _ in range(5000):
        deep = {"text": "x", "child": deep}
    with pytest.raises(InvalidRequestError, match="nests more than 32 levels") as caught:
        dheera_local.rerank(REMOTE, QUERY, ["a", deep], rank_fields=["child"])
    assert caught.value.param == "documents[1]"


# 7. Local failures fall back --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oversized_vocab(models_root: Path, hub_cache: Path) -> str:
    """A tokenizer that knows words past the model's embedding table: torch raises IndexError mid-forward."""
    from transformers import AutoTokenizer

    folder = testing.build_cross_encoder(models_root / "oversized-vocab", seed=6)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens([f"zzword{i}" for i in range(400)])
    tokenizer.save_pretrained(folder)
    testing.install_in_hub_cache(folder, "tiny-org/oversized-vocab", hub_cache, revision="6" * 40)
    return "huggingface/tiny-org/oversized-vocab"


@pytest.fixture(scope="module")
def short_positions(models_root: Path, hub_cache: Path) -> str:
    """16 position embeddings: fewer than the load-time kernel probe's 128 tokens."""
    folder = testing.build_cross_encoder(models_root / "short-positions", max_position=16, seed=5)
    testing.install_in_hub_cache(folder, "tiny-org/short-positions", hub_cache, revision="5" * 40)
    return "huggingface/tiny-org/short-positions"


UNKNOWN_WORDS = [f"{doc} zzword399" for doc in DOCS]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_local_failure_inside_torch_falls_back_to_the_endpoint(
    servers: Servers, tiny_bert: Path, oversized_vocab: str, mode: str
) -> None:
    tei = servers.tei(tiny_bert)
    response = call(Reranker(retry=FAST), mode, oversized_vocab, QUERY, UNKNOWN_WORDS, api_base=tei.url, cache=False)
    assert (response.backend, response.meta.dheera_local.fallbacks) == ("tei", ["local"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_local_failure_without_a_fallback_is_one_clear_error(oversized_vocab: str, dtype: str) -> None:
    expected = "local: .*inference failed on cpu: IndexError.*Fix: check the model"
    with pytest.raises(AllBackendsFailedError, match=expected):
        dheera_local.rerank(oversized_vocab, QUERY, UNKNOWN_WORDS, backend="local", cache=False, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_model_with_few_positions_loads_truncates_and_refuses_a_longer_max_length(
    short_positions: str, dtype: str
) -> None:
    # The load-time kernel probe is cut to the model's 16 positions (it used to run 30 tokens and fail the load).
    long_docs = [f"{doc} and then some more words" * 3 for doc in DOCS]  # over 16 tokens
    response = dheera_local.rerank(short_positions, QUERY, long_docs, backend="local", cache=False, dtype=dtype)
    assert sorted(r.index for r in response.results) == list(range(len(DOCS)))
    with pytest.raises(InvalidRequestError) as caught:
        dheera_local.rerank(short_positions, QUERY, long_docs, backend="local", cache=False, max_length=64)
    assert caught.value.field == "max_length" and "max_length <= 16" in str(caught.value)


# 8. Non-integers where integers go ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, "3", 3.0])
def test_top_n_must_be_an_integer(value: object) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        dheera_local.rerank(REMOTE, QUERY, DOCS, top_n=value)
    assert caught.value.param == "top_n"


@pytest.fixture(autouse=True)
def _fresh_caches() -> None:
    close_all()  # each test opens its own cache folder (isolated_env); planted rows must be read anew
    logging.getLogger("dheera_local").setLevel(logging.INFO)
