"""Long documents are cut before they are tokenized (issue 26, 7): a multi-MB document scores as its
prefix does, the tokenizer never sees more than the bound, and a per-document size limit names the index."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

import dheera_local
from dheera_local import InvalidRequestError
from dheera_local._engine.request import MAX_DOCUMENT_BYTES
from dheera_local._local.text_bound import CHARS_PER_TOKEN, CUT_MARGIN, prefix_for_tokens
from dheera_local.testing.servers import reference_logits

QUERY = "which river flows through the capital"
WORDS = "the river flows past the old market and the museum of modern art near the capital city".split()
MAX_LENGTH = 128


def _text(chars: int, seed: int = 0) -> str:
    words = (WORDS[(i * 7 + seed) % len(WORDS)] + ("," if i % 11 == 0 else "") for i in range(chars // 3))
    return " ".join(words)[:chars]


BIG = _text(3_000_000)  # 3 MB: tokenized in full it is ~600,000 tokens


def _bound(tokens: int) -> int:
    """The most characters a tokenizer may see for a reader of ``tokens``: the guess, grown 4x once at most
    for text like this (about 5 characters a token)."""
    return 4 * (tokens + CUT_MARGIN) * CHARS_PER_TOKEN


@pytest.fixture
def tokenizer_inputs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The length of every string given to a transformers tokenizer (the foreign call, not our code)."""
    seen: list[int] = []
    original = PreTrainedTokenizerBase.__call__

    def recording(self, text=None, text_pair=None, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        for value in (text, text_pair):
            for item in [value] if isinstance(value, str) else (value or []):
                if isinstance(item, str):
                    seen.append(len(item))
        return original(self, text, text_pair, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", recording)
    yield seen


def _raw(response: dheera_local.RerankResponse) -> dict[int, float]:
    return {r.index: r.relevance_score for r in response.results}


def test_a_multi_megabyte_document_scores_as_its_prefix(tiny_bert: Path, tokenizer_inputs: list[int]) -> None:
    docs = ["a short document about the river", BIG, BIG[:20_000]]
    response = dheera_local.rerank(str(tiny_bert), QUERY, docs, dtype="float32", raw_scores=True, cache=False)
    assert max(tokenizer_inputs) <= _bound(512) < 20_000  # max_length 512; never the 3 MB
    scores = _raw(response)
    assert scores[1] == scores[2]  # the whole document and a prefix holding its window: the same pair
    reference = reference_logits(tiny_bert, QUERY, [docs[0], docs[2]])  # sentence-transformers, untruncated
    assert abs(scores[0] - reference[0]) < 1e-5 and abs(scores[1] - reference[1]) < 1e-5


@pytest.mark.parametrize(("chunks", "tokens"), [(3, None), (None, 300), (2, 1_000)])
def test_chunking_sees_the_windows_it_needs_and_no_more(
    tiny_bert: Path, tokenizer_inputs: list[int], chunks: int | None, tokens: int | None
) -> None:
    options = {"max_chunks_per_doc": chunks, "max_tokens_per_doc": tokens}
    kwargs = {"dtype": "float32", "max_length": MAX_LENGTH, "raw_scores": True, "cache": False, **options}
    whole = dheera_local.rerank(str(tiny_bert), QUERY, [BIG], **kwargs)
    limit = max(tokenizer_inputs)
    prefix = dheera_local.rerank(str(tiny_bert), QUERY, [BIG[:60_000]], **kwargs)
    assert _raw(whole) == _raw(prefix)
    read = tokens if tokens is not None else chunks * MAX_LENGTH
    assert limit <= _bound(read) < 60_000


def test_documents_below_the_cut_are_never_cut() -> None:
    counted: list[str] = []

    def words(text: str) -> int:
        counted.append(text)
        return len(text.split())

    short = _text(MAX_LENGTH * CHARS_PER_TOKEN)
    assert prefix_for_tokens(short, MAX_LENGTH, words) is short and counted == []  # not even counted
    sparse = "word" + " " * 100_000 + "end"  # many characters, few tokens: the check keeps it whole
    assert prefix_for_tokens(sparse, MAX_LENGTH, words) is sparse
    long = _text(200_000)
    cut = prefix_for_tokens(long, MAX_LENGTH, words)
    assert long.startswith(cut) and long[len(cut)].isspace() and words(cut) >= MAX_LENGTH + CUT_MARGIN


def test_a_document_over_the_size_limit_is_refused_naming_it() -> None:
    huge = "é" * (MAX_DOCUMENT_BYTES // 2 + 1)  # under the limit in characters, over it in UTF-8 bytes
    with pytest.raises(InvalidRequestError, match=r"documents\[1\] is more than 10,000,000 bytes") as caught:
        dheera_local.rerank("huggingface/tiny-org/remote-only", QUERY, ["ok", huge])
    assert caught.value.param == "documents[1]"
    with pytest.raises(InvalidRequestError, match=r"documents\[0\]"):
        dheera_local.rerank("huggingface/tiny-org/remote-only", QUERY, [{"text": "x" * (MAX_DOCUMENT_BYTES + 1)}])
