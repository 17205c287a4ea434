"""Property tests (hypothesis): what must hold for every input, not only the ones we thought of.

* request validation (``build_request``): any query, documents and options give a request or an
  InvalidRequestError naming a real field, never another exception;
* the remote answer parsers (TEI, HF hosted, Cohere): any JSON gives scores in input order or a
  DheeraError; a well-formed answer in any order gives each text its own score;
* the chunker: windows cover the document in order, each within the token bound;
* the cache key: distinct inputs give distinct keys, and a key never holds a secret.

Bounds and reproducibility: :mod:`property_settings`.
"""

from __future__ import annotations

import math
import string
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dheera_local import DheeraError, InvalidRequestError
from dheera_local._cache.store import cache_key
from dheera_local._engine.request import RerankRequest, build_request
from dheera_local._local.chunking import ChunkSettings, TokenCounter, document_windows, token_windows
from dheera_local._models.identity import ModelIdentity
from dheera_local._options import OPTION_NAMES
from dheera_local._remote.backend import probability_to_logit
from dheera_local._remote.cohere import CohereBackend
from dheera_local._remote.hf_hosted import HFHostedBackend
from dheera_local._remote.http import HttpClients, RetryPolicy
from dheera_local._remote.tei import EndpointLimits, TEIBackend
from property_settings import bounded

# Every character, lone surrogates and controls included.
ANY_CHAR = st.characters(codec=None, categories=None)
ANY_TEXT = st.text(ANY_CHAR, max_size=40)
# Past float's range, and past the 4,300 digits Python's int() and repr() accept (built: a strategy's repr shows it).
HUGE_INTS = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.builds(lambda sign: sign * 10**5000, st.sampled_from([1, -1])),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), HUGE_INTS, st.floats(allow_nan=True, allow_infinity=True), ANY_TEXT
)
# JSON-like values, nested, with everything JSON can carry (and Python's NaN, huge ints, surrogates).
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(ANY_TEXT, children, max_size=4)),
    max_leaves=20,
)

REQUEST_FIELDS = {"model", "query", "documents", "top_n", "return_documents", "rank_fields",
                  "max_chunks_per_doc", "max_tokens_per_doc", *OPTION_NAMES}  # fmt: skip


def assert_valid_or_named(call: Any) -> Any:
    """``call()``'s value, or None when it raised an InvalidRequestError naming one of the request's fields."""
    try:
        return call()
    except InvalidRequestError as exc:
        assert exc.field in REQUEST_FIELDS, (exc.field, str(exc))
        assert str(exc)
        return None


# Request validation ---------------------------------------------------------------------------

# What a Python caller can put in a document object besides JSON: tuple keys, bytes, sets.
PY_KEYS = st.one_of(ANY_TEXT, st.integers(), st.tuples(st.integers()), st.none(), st.floats())
PY_VALUES = st.recursive(
    st.one_of(SCALARS, st.binary(max_size=4), st.frozensets(st.integers(), max_size=2)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(PY_KEYS, children, max_size=3)),
    max_leaves=10,
)
DOCUMENTS = st.one_of(
    VALUES,
    st.lists(st.one_of(ANY_TEXT, st.dictionaries(ANY_TEXT, VALUES, max_size=4),
                       st.dictionaries(st.sampled_from(["text", "title", "a"]), PY_VALUES, max_size=3),
                       st.fixed_dictionaries({"text": ANY_TEXT}, optional={"title": VALUES})), max_size=6),
)  # fmt: skip
OPTION_VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=2),
    st.sampled_from(["float16", "cpu", "tei", "auto", "nan", "inf", "-1", "1e400", "http://h", ""]),
)


@bounded(300)
@given(
    query=st.one_of(ANY_TEXT, SCALARS),
    documents=DOCUMENTS,
    top_n=SCALARS,
    return_documents=SCALARS,
    rank_fields=st.one_of(st.none(), st.lists(ANY_TEXT, max_size=3), st.just(["title", "a"]), SCALARS),
    max_chunks=SCALARS,
    max_tokens=SCALARS,
)
def test_build_request_accepts_or_names_the_field(
    query: Any, documents: Any, top_n: Any, return_documents: Any, rank_fields: Any, max_chunks: Any, max_tokens: Any
) -> None:
    request = assert_valid_or_named(
        lambda: build_request(
            "cohere/some-model",
            query,
            documents,
            top_n,
            return_documents,
            rank_fields=rank_fields,
            max_chunks_per_doc=max_chunks,
            max_tokens_per_doc=max_tokens,
        )  # fmt: skip
    )
    if request is not None:
        check_request(request, documents)


@bounded(200)
@given(
    documents=st.lists(st.dictionaries(st.sampled_from(["text", "title", "a"]), PY_VALUES, max_size=3), max_size=3),
    rank_fields=st.one_of(st.none(), st.just(["title", "a"]), st.lists(st.sampled_from(["text", "a"]), max_size=2)),
)
def test_object_documents_are_accepted_or_refused_naming_the_document(documents: Any, rank_fields: Any) -> None:
    request = assert_valid_or_named(
        lambda: build_request("cohere/some-model", "query", documents, rank_fields=rank_fields)
    )
    if request is not None:
        check_request(request, documents)


@bounded(300)
@given(options=st.dictionaries(st.sampled_from(OPTION_NAMES), OPTION_VALUES, min_size=1, max_size=3))
def test_options_are_accepted_or_refused_naming_the_field(options: dict[str, Any]) -> None:
    options.pop("cache_dir", None)  # a path: would create folders wherever the example points
    request = assert_valid_or_named(lambda: build_request("cohere/some-model", "query", ["doc"], **options))
    if request is not None:
        check_request(request, ["doc"])


def check_request(request: RerankRequest, documents: Any) -> None:
    """What a request that passed validation guarantees to everything below it."""
    assert len(request.texts) == len(request.documents) == len(documents)
    for text in [request.query, *request.texts]:
        text.encode("utf-8")  # scorable and cacheable: no lone surrogate survives validation
    assert request.query.strip()
    for value in (request.top_n, request.max_chunks_per_doc):
        assert value is None or (type(value) is int and value >= 1)
    timeout = request.options.timeout
    assert timeout is None or (math.isfinite(timeout) and timeout > 0)


@bounded(200)
@given(
    model=st.one_of(
        ANY_TEXT,
        SCALARS,
        st.text(string.ascii_letters + "/-_.~\\\x00", max_size=30),
        st.tuples(st.sampled_from(["", "cohere/", "huggingface/", "org/", "./"]), ANY_TEXT).map("".join),
        st.integers(min_value=200, max_value=6000).map(lambda n: "org/" + "m" * n),
    )
)
def test_model_argument_is_a_reference_or_refused_naming_model(model: Any) -> None:
    request = assert_valid_or_named(lambda: build_request(model, "query", ["doc"]))
    if request is not None:
        request.model.name.encode("utf-8")  # sent to endpoints and written in logs


# Remote answer parsers ------------------------------------------------------------------------

CLIENTS = HttpClients()
POLICY = RetryPolicy(max_attempts=1)


def tei() -> TEIBackend:
    return TEIBackend("http://127.0.0.1:9/", EndpointLimits(), CLIENTS, POLICY)


def hf() -> HFHostedBackend:
    return HFHostedBackend("http://127.0.0.1:9/models/org/name", CLIENTS, POLICY)


def cohere() -> CohereBackend:
    return CohereBackend("http://127.0.0.1:9/", "model", CLIENTS, POLICY)


PARSERS = {"tei": tei, "hf": hf, "cohere": cohere}
# Shapes near each format, so the search spends its time close to the parsers' branches.
ENTRY_KEYS = st.sampled_from(["index", "score", "relevance_score", "label", "text"])
ENTRY = st.one_of(VALUES, st.dictionaries(ENTRY_KEYS, st.one_of(SCALARS, VALUES), max_size=4))
ANSWERS = st.one_of(
    VALUES,
    st.lists(st.one_of(ENTRY, st.lists(ENTRY, max_size=3)), max_size=5),
    st.fixed_dictionaries({}, optional={"results": st.lists(ENTRY, max_size=5), "data": VALUES}),
)


@pytest.mark.parametrize("format_name", list(PARSERS))
@bounded(400)
@given(body=ANSWERS, count=st.integers(min_value=1, max_value=4))
def test_parsers_give_scores_in_order_or_a_dheera_error(format_name: str, body: Any, count: int) -> None:
    backend = PARSERS[format_name]()
    try:
        scores = backend.parse(body, count)
    except DheeraError:
        return
    assert len(scores) == count
    assert all(isinstance(score, float) and math.isfinite(score) for score in scores)
    if format_name != "hf":  # entries carry their index: each text's exactly once
        entries = body if format_name == "tei" else body.get("results", body.get("data"))
        assert sorted(entry["index"] for entry in entries) == list(range(count))
        assert all(type(entry["index"]) is int for entry in entries)


# Found by the properties above: plain regression tests.


@pytest.mark.parametrize(
    ("format_name", "body"),
    [
        ("tei", [{"index": 0, "score": 10**400}]),
        ("cohere", {"results": [{"index": 0, "relevance_score": -(10**400)}]}),
        ("hf", [{"label": "LABEL_0", "score": 10**400}]),
    ],
)
def test_a_score_too_large_for_a_float_is_a_bad_answer(format_name: str, body: Any) -> None:
    with pytest.raises(DheeraError, match="unexpected body"):
        PARSERS[format_name]().parse(body, 1)


@pytest.mark.parametrize("format_name", ["tei", "cohere"])
@pytest.mark.parametrize(
    ("indices", "problem"),
    [([0, 1, 2, 0], "index 0 appears twice"), ([0, True, 2], "bad .* entry"), ([0, 1, 2.0], "bad .* entry")],
)
def test_an_answer_must_give_each_index_once_as_an_integer(format_name: str, indices: list[Any], problem: str) -> None:
    field = "score" if format_name == "tei" else "relevance_score"
    entries = [{"index": index, field: 0.5} for index in indices]
    body = entries if format_name == "tei" else {"results": entries}
    with pytest.raises(DheeraError, match=problem):
        PARSERS[format_name]().parse(body, 3)


def test_hf_refuses_a_label_given_twice_for_one_pair() -> None:
    body = [[{"label": "LABEL_1", "score": 2.0}, {"label": "LABEL_1", "score": -1.0}]]
    with pytest.raises(DheeraError, match="appears twice"):
        hf().parse(body, 1)


FINITE = st.floats(min_value=-50, max_value=50, allow_nan=False)
PROBABILITIES = st.floats(min_value=0.001, max_value=0.999)


@bounded(150)
@given(scores=st.lists(FINITE, min_size=1, max_size=8), order=st.randoms(use_true_random=False))
def test_tei_answer_in_any_order_gives_each_text_its_score(scores: list[float], order: Any) -> None:
    entries = [{"index": i, "score": s} for i, s in enumerate(scores)]
    order.shuffle(entries)
    assert tei().parse(entries, len(scores)) == scores


@bounded(150)
@given(scores=st.lists(PROBABILITIES, min_size=1, max_size=8), order=st.randoms(use_true_random=False),
       key=st.sampled_from(["results", "data"]))  # fmt: skip
def test_cohere_answer_in_any_order_gives_each_text_its_score(scores: list[float], order: Any, key: str) -> None:
    entries = [{"index": i, "relevance_score": s} for i, s in enumerate(scores)]
    order.shuffle(entries)
    assert cohere().parse({key: entries}, len(scores)) == [probability_to_logit(s) for s in scores]


@bounded(150)
@given(rows=st.lists(st.tuples(FINITE, FINITE), min_size=1, max_size=8), order=st.randoms(use_true_random=False))
def test_hf_answer_gives_each_pair_its_log_odds(rows: list[tuple[float, float]], order: Any) -> None:
    body = []
    for negative, positive in rows:
        labels = [{"label": "LABEL_0", "score": negative}, {"label": "LABEL_1", "score": positive}]
        order.shuffle(labels)  # labels come best first, not in label order
        body.append(labels)
    assert hf().parse(body, len(rows)) == [positive - negative for negative, positive in rows]


# Chunker --------------------------------------------------------------------------------------

WORDS = st.text(string.ascii_letters + "éß" + "日本", min_size=1, max_size=12)
SPACES = st.text(" \n\t\u3000", min_size=1, max_size=3)


@st.composite
def documents(draw: st.DrawFn) -> str:
    words = draw(st.lists(WORDS, max_size=60))
    gaps = draw(st.lists(SPACES, min_size=len(words) + 1, max_size=len(words) + 1))
    return gaps[0] + "".join(word + gap for word, gap in zip(words, gaps[1:], strict=True))


def pieces(size: int) -> TokenCounter:
    """A sub-word tokenizer: each word cut into pieces of ``size`` characters (tokens that are not word starts)."""
    words = TokenCounter.words()

    def spans(text: str) -> list[tuple[int, int]]:
        return [(i, min(i + size, end)) for start, end in words.spans(text) for i in range(start, end, size)]

    return TokenCounter(spans, special_tokens=3)


CHUNKING = st.builds(
    ChunkSettings,
    max_length=st.integers(min_value=8, max_value=64),
    max_chunks_per_doc=st.one_of(st.none(), st.integers(min_value=1, max_value=6)),
    max_tokens_per_doc=st.one_of(st.none(), st.integers(min_value=8, max_value=300)),
)


@bounded(300)
@given(text=documents(), query=documents(), settings=CHUNKING, piece=st.integers(min_value=1, max_value=4))
def test_windows_cover_the_document_in_order_within_the_bound(
    text: str, query: str, settings: ChunkSettings, piece: int
) -> None:
    counter = pieces(piece)
    [windows] = document_windows(query or "q", [text], settings, counter)
    spans = counter.spans(text)
    assert windows, "every document has at least one window"
    if len(windows) == 1 and windows[0] == text:
        return  # fits (or no chunking asked): scored whole, as without chunking
    width = max(settings.max_length - len(counter.spans(query or "q")) - counter.special_tokens,
                settings.max_length // 4, 1)  # fmt: skip
    kept = spans[: settings.max_tokens_per_doc] if settings.max_tokens_per_doc else spans
    ranges = token_windows(kept, width, settings)
    assert [text[kept[a][0] : kept[b - 1][1]] for a, b in ranges] == windows
    assert all(0 < b - a <= width for a, b in ranges), (ranges, width)
    starts = [a for a, _ in ranges]
    assert starts == sorted(set(starts)), "windows in document order, no repeats"
    assert ranges[0][0] == 0
    covered_to = 0
    for start, end in ranges:
        assert start <= covered_to, "no token skipped between windows"
        covered_to = max(covered_to, end)
    if settings.max_chunks_per_doc is None or len(ranges) < settings.max_chunks_per_doc:
        assert covered_to == len(kept), "the windows reach the end of the document"


@bounded(100)
@given(texts=st.lists(documents(), max_size=4), settings=CHUNKING)
def test_windows_are_stable(texts: list[str], settings: ChunkSettings) -> None:
    counter = pieces(2)
    first = document_windows("query", texts, settings, counter)
    assert document_windows("query", list(texts), settings, counter) == first
    assert len(first) == len(texts)


# Cache key ------------------------------------------------------------------------------------

IDENTITIES = st.builds(
    ModelIdentity,
    model_id=st.text(string.ascii_lowercase + "/-._", min_size=1, max_size=12),
    revision=st.text("0123456789abcdef", max_size=8),
    max_length=st.integers(min_value=0, max_value=10_000),
    numerics=st.text(string.printable, max_size=12),
)
KEY_TEXT = st.text(ANY_CHAR, max_size=20)


@bounded(300)
@given(a=st.tuples(IDENTITIES, KEY_TEXT, KEY_TEXT), b=st.tuples(IDENTITIES, KEY_TEXT, KEY_TEXT))
def test_distinct_inputs_give_distinct_keys(a: tuple[Any, str, str], b: tuple[Any, str, str]) -> None:
    assume(a != b)
    assert cache_key(*a) != cache_key(*b)
    assert cache_key(*a) == cache_key(*a)


@bounded(100)
@given(identity=IDENTITIES, query=KEY_TEXT, document=KEY_TEXT,
       secret=st.text(string.ascii_letters + string.digits, min_size=8, max_size=24))  # fmt: skip
def test_a_key_holds_no_secret(identity: ModelIdentity, query: str, document: str, secret: str) -> None:
    # A secret that reached the identity (say, in an endpoint URL) must not be readable from the key on disk.
    leaky = ModelIdentity(identity.model_id, identity.revision, identity.max_length, f"tei:http://u:{secret}@h")
    key = cache_key(leaky, query, document)
    assert len(key) == 64 and set(key) <= set(string.hexdigits.lower())
    assert secret.lower() not in key


@pytest.mark.parametrize("timeout", [10**400, "nan", float("nan"), "inf", float("inf"), "1e400", 0, -1.5])
def test_a_timeout_must_be_a_positive_finite_number(timeout: Any) -> None:
    with pytest.raises(InvalidRequestError, match="positive, finite number of seconds") as caught:
        build_request("cohere/some-model", "query", ["doc"], timeout=timeout)
    assert caught.value.field == "timeout"


def test_an_integer_too_long_to_print_is_refused_with_a_short_message() -> None:
    # repr() of an integer past 4,300 digits raises ValueError: the message must not.
    for kwargs in ({"top_n": -(10**5000)}, {"return_documents": [10**5000]}, {"backend": 10**5000}):
        with pytest.raises(InvalidRequestError) as caught:
            build_request("cohere/some-model", "query", ["doc"], **kwargs)
        assert caught.value.field == next(iter(kwargs)) and len(str(caught.value)) < 300


def test_an_object_document_json_cannot_hold_names_the_document() -> None:
    documents = [{"title": "fine"}, {"title": {(1, 2): "a tuple key"}}]
    with pytest.raises(InvalidRequestError, match=r"documents\[1\]\.title cannot be scored as JSON") as caught:
        build_request("cohere/some-model", "query", documents, rank_fields=["title"])
    assert (caught.value.field, caught.value.index) == ("documents", 1)


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        ("org/" + "m" * 5000, "5,004 characters"),  # was OSError: File name too long
        ("cohere/\ud800", "holds the character '\\ud800'"),  # sent on, then failed to encode
        ("org/na\x00me", "holds the character '\\x00'"),
        ("my-model\ninjected log line", "holds the character '\\n'"),
    ],
)
def test_a_model_string_no_model_can_have_is_refused_naming_model(model: str, problem: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build_request(model, "query", ["doc"])
    assert caught.value.field == "model" and problem in str(caught.value)


def test_a_home_folder_of_no_such_user_is_refused_naming_the_field() -> None:
    # Path("~nobody").expanduser() raises RuntimeError: it escaped from rerank().
    with pytest.raises(InvalidRequestError, match="does not exist") as caught:
        build_request("~no-such-user-4242/model", "query", ["doc"])
    assert caught.value.field == "model"
    with pytest.raises(InvalidRequestError, match="no such user") as caught:
        build_request("cohere/some-model", "query", ["doc"], cache_dir="~no-such-user-4242/cache")
    assert caught.value.field == "cache_dir"


def test_quoting_a_remote_value_never_fails() -> None:
    from dheera_local._secrets import quote

    assert "too long to print" in quote({"index": 10**5000}, 80)
