"""The test toolkit in dheera_local.testing: reproducible model builders, the fake reranker."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

import dheera_local
from dheera_local import testing
from dheera_local.testing.models import WORDS


@pytest.mark.parametrize("arch", ["bert", "xlm-roberta"])
def test_one_seed_gives_one_model(tmp_path: Path, arch: str) -> None:
    # The tokenizer trainers number tokens in hash-map order; the builders must not let that through.
    first = testing.build_cross_encoder(tmp_path / "first", arch=arch, seed=5)
    second = testing.build_cross_encoder(tmp_path / "second", arch=arch, seed=5)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    text = " ".join(WORDS)
    ids = [AutoTokenizer.from_pretrained(folder)(text, "paris museum")["input_ids"] for folder in (first, second)]
    assert ids[0] == ids[1]
    if arch == "bert":
        assert len(ids[0]) == len(WORDS) + 5  # every listed word is one token (+ 2 words, 3 specials)


def test_a_keyword_model_that_cannot_learn_raises_with_its_margin(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"did not learn 'paris' in 3 x 2 steps: held-out positives"):
        testing.train_keyword_reranker(tmp_path / "untrained", keyword="paris", steps=2)


def test_the_fake_reranker_ranks_by_its_function_through_the_real_engine() -> None:
    reranker = testing.fake_reranker()
    response = reranker.rerank("any-org/any-model", "capital of france", ["tokyo", "paris, capital of france"])
    assert [r.index for r in response.results] == [1, 0] and response.backend == "fake"
    again = reranker.rerank("any-org/any-model", "capital of france", ["tokyo", "paris, capital of france"])
    assert again.backend == "cache"  # the real cache, in the fake's own folder
    length = testing.fake_reranker(score=lambda query, document: -len(document))
    ranked = length.rerank("x/y", "q", ["a long document", "short"], top_n=1, return_documents=True)
    assert ranked.results[0].document == {"text": "short"}
    assert length.backends.fake.calls == [("q", ["a long document", "short"])]
    with pytest.raises(dheera_local.InvalidRequestError):
        reranker.rerank("x/y", "", ["a"])  # validation is the real one


def test_the_doctests_of_the_toolkit() -> None:
    import doctest

    from dheera_local.testing import fake

    assert doctest.testmod(fake).failed == 0
