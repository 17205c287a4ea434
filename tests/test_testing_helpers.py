"""The test-model builders in dheera_local.testing: reproducible, and loud when training fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from dheera_local import testing


@pytest.mark.parametrize("arch", ["bert", "xlm-roberta"])
def test_one_seed_gives_one_model(tmp_path: Path, arch: str) -> None:
    # The tokenizer trainers number tokens in hash-map order; the builders must not let that through.
    first = testing.build_cross_encoder(tmp_path / "first", arch=arch, seed=5)
    second = testing.build_cross_encoder(tmp_path / "second", arch=arch, seed=5)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    text = " ".join(testing.WORDS)
    ids = [AutoTokenizer.from_pretrained(folder)(text, "paris museum")["input_ids"] for folder in (first, second)]
    assert ids[0] == ids[1]
    if arch == "bert":
        assert len(ids[0]) == len(testing.WORDS) + 5  # every listed word is one token (+ 2 words, 3 specials)


def test_a_keyword_model_that_cannot_learn_raises_with_its_margin(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"did not learn 'paris' in 3 x 2 steps: held-out positives"):
        testing.train_keyword_reranker(tmp_path / "untrained", keyword="paris", steps=2)
