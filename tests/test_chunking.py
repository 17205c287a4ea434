"""Long and structured documents: windows, max-over-windows, rank_fields, billing, limits."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import dheera_local
from conftest import TINY_BERT_ID
from dheera_local import InvalidRequestError
from dheera_local._local.chunking import ChunkSettings, TokenCounter, counter_for, document_windows, token_windows
from dheera_local.testing.models import WORDS

FILLER = [w for w in WORDS if w != "paris"]


def filler(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(FILLER) for _ in range(count)]


def long_document_with_answer_at_the_end(words: int = 400) -> str:
    body = filler(words, seed=1)
    body.insert(words - 20, "paris")
    return " ".join(body)


def test_answer_past_the_window_ranks_first_only_with_chunking(keyword_model: Path) -> None:
    docs = [" ".join(filler(40, seed=s)) for s in range(2, 6)] + [long_document_with_answer_at_the_end()]
    model, query = str(keyword_model), "which city"
    plain = dheera_local.rerank(model, query, docs, max_length=128, dtype="float32")
    chunked = dheera_local.rerank(model, query, docs, max_length=128, max_chunks_per_doc=20, dtype="float32")
    plain_scores = {r.index: r.relevance_score for r in plain.results}
    # Truncated at 128 tokens, the answer is cut off: the long document scores like the irrelevant ones
    # (all near 0, their order among themselves is noise), never ahead of them by a margin.
    assert plain_scores[4] < 0.1
    assert plain_scores[4] - max(score for index, score in plain_scores.items() if index != 4) < 0.05
    assert chunked.results[0].index == 4  # one window holds the answer: first, by a wide margin
    assert chunked.results[0].relevance_score > 0.9
    assert all(r.relevance_score < 0.1 for r in chunked.results[1:])
    short_scores = {r.index: r.relevance_score for r in chunked.results if r.index != 4}
    assert short_scores == {r.index: r.relevance_score for r in plain.results if r.index != 4}


def test_max_tokens_per_doc_limits_what_is_read(keyword_model: Path) -> None:
    doc = long_document_with_answer_at_the_end()
    model = str(keyword_model)
    reads_all = dheera_local.rerank(model, "which city", [doc], max_length=128, max_tokens_per_doc=4096)
    stops_early = dheera_local.rerank(model, "which city", [doc], max_length=128, max_tokens_per_doc=200)
    assert reads_all.results[0].relevance_score > 0.9
    assert stops_early.results[0].relevance_score < 0.1


def test_windows_overlap_cover_the_whole_document_and_respect_the_width(tiny_bert: Path) -> None:
    counter = counter_for(tiny_bert)
    text = " ".join(filler(700, seed=3))
    spans = counter.spans(text)
    width = 100
    windows = token_windows(spans, width, ChunkSettings(max_length=128, max_chunks_per_doc=50))
    assert windows[0][0] == 0 and windows[-1][1] == len(spans)
    covered = set()
    for (start, end), (next_start, _) in zip(windows, windows[1:], strict=False):
        assert 0 < end - start <= width
        assert next_start < end  # consecutive windows overlap
        assert next_start > start
    for start, end in windows:
        covered.update(range(start, end))
    assert covered == set(range(len(spans)))


def test_window_texts_are_substrings_cut_at_word_boundaries(tiny_xlmr: Path) -> None:
    text = " ".join(filler(500, seed=4))
    settings = ChunkSettings(max_length=64, max_chunks_per_doc=100)
    [windows] = document_windows("query", [text], settings, counter_for(tiny_xlmr))
    assert len(windows) > 5
    words = set(text.split())
    for window in windows:
        assert window in text
        assert set(window.split()) <= words  # no word cut in half


def test_short_documents_are_one_window_identical_to_the_unchunked_pair() -> None:
    counter = TokenCounter.words()
    settings = ChunkSettings(max_length=512, max_chunks_per_doc=10)
    assert document_windows("q", ["a short text", ""], settings, counter) == [["a short text"], [""]]


def test_chunks_are_cached_pairs(keyword_model: Path) -> None:
    doc = long_document_with_answer_at_the_end()
    args = {"max_length": 128, "max_chunks_per_doc": 20}
    first = dheera_local.rerank(str(keyword_model), "which city", [doc, "tokyo"], **args)
    again = dheera_local.rerank(str(keyword_model), "which city", [doc, "tokyo"], **args)
    assert first.meta.dheera_local.scored > 2  # several windows were scored
    assert again.backend == "cache" and again.cache_hits == first.meta.dheera_local.scored
    assert [r.relevance_score for r in again.results] == [r.relevance_score for r in first.results]


def test_rank_fields_choose_what_is_scored_and_documents_come_back_whole(keyword_model: Path) -> None:
    docs = [
        {"id": "a", "title": "paris travel", "text": "berlin rome madrid"},
        {"id": "b", "title": "tokyo", "text": "a day in paris"},
        {"id": "c", "title": "london", "text": "the river"},
    ]
    by_title = dheera_local.rerank(str(keyword_model), "city", docs, rank_fields=["title"], return_documents=True)
    by_text = dheera_local.rerank(str(keyword_model), "city", docs, rank_fields=["text"])
    assert by_title.results[0].index == 0 and by_text.results[0].index == 1
    assert by_title.results[0].document == docs[0]
    both = dheera_local.rerank(str(keyword_model), "city", docs, rank_fields=["title", "text"])
    assert {r.index for r in both.results[:2]} == {0, 1}


def test_rank_fields_text_format_matches_cohere() -> None:
    from dheera_local._engine.request import build_request

    request = build_request(
        TINY_BERT_ID, "q", [{"title": "T", "year": 2020, "text": "x"}], rank_fields=["title", "year"]
    )
    assert request.texts == ["title: T\nyear: 2020"]
    with pytest.raises(InvalidRequestError, match=r"documents\[0\]"):
        build_request(TINY_BERT_ID, "q", [{"other": "x"}], rank_fields=["title"])


def test_search_units_follow_cohere() -> None:
    docs = [f"doc {i}" for i in range(250)]
    assert dheera_local.rerank(TINY_BERT_ID, "q", docs).meta.billed_units.search_units == 3
    assert dheera_local.rerank(TINY_BERT_ID, "q", docs[:100]).meta.billed_units.search_units == 1
    long_doc = " ".join(filler(2000, seed=5))
    chunked = dheera_local.rerank(TINY_BERT_ID, "q", [long_doc] + docs[:99], max_length=64, max_chunks_per_doc=100)
    assert chunked.meta.billed_units.search_units >= 2  # the long document counts once per window


def test_more_than_ten_thousand_windows_is_a_clear_error() -> None:
    long_doc = " ".join(filler(3000, seed=6))
    with pytest.raises(InvalidRequestError) as caught:
        dheera_local.rerank(TINY_BERT_ID, "q", [long_doc] * 400, max_length=64, max_chunks_per_doc=100)
    message = str(caught.value)
    assert "10000" in message and "400 documents" in message


def test_chunking_arguments_are_validated() -> None:
    with pytest.raises(InvalidRequestError, match="max_chunks_per_doc"):
        dheera_local.rerank(TINY_BERT_ID, "q", ["a"], max_chunks_per_doc=0)
    with pytest.raises(InvalidRequestError, match="max_tokens_per_doc"):
        dheera_local.rerank(TINY_BERT_ID, "q", ["a"], max_tokens_per_doc=-5)


def test_the_same_chunked_scores_over_a_loopback_tei_endpoint(keyword_model: Path, hub_cache: Path) -> None:
    from dheera_local.testing import install_in_hub_cache
    from loopback import Servers

    install_in_hub_cache(keyword_model, "tiny-org/keyword-paris", hub_cache, revision="9" * 40)
    docs = [" ".join(filler(40, seed=s)) for s in range(2, 5)] + [long_document_with_answer_at_the_end()]
    args = {"max_length": 128, "max_chunks_per_doc": 20, "cache": False}
    local = dheera_local.rerank(
        "huggingface/tiny-org/keyword-paris", "which city", docs, backend="local", dtype="float32", **args
    )  # the endpoint scores in fp32: compare like with like
    with Servers() as servers:
        tei = servers.tei(keyword_model)
        remote = dheera_local.rerank(
            "huggingface/tiny-org/keyword-paris", "which city", docs, backend="remote", api_base=tei.url, **args
        )
        sent = [text for request in tei.scoring() for text in request.body["texts"]]
    assert remote.backend == "tei" and local.backend == "local"
    assert len(sent) > len(docs)  # the windows, not the whole documents, went over the wire
    assert remote.results[0].index == local.results[0].index == 3
    local_scores = {r.index: r.relevance_score for r in local.results}
    for result in remote.results:  # the other three are near-ties; compare scores, not tie order
        assert result.relevance_score == pytest.approx(local_scores[result.index], abs=1e-4)
