"""The token-budget planner: every pair scored once, batches within budget, scores independent of it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from dheera_local._local.backend import default_batch_tokens
from dheera_local._local.token_budget import plan_batches
from dheera_local._local.torch_model import LocalModel
from dheera_local._models.discovery import LocalWeights


@pytest.mark.parametrize("budget", [1, 64, 300, 2048])
def test_every_pair_lands_in_exactly_one_batch_within_the_budget(budget: int) -> None:
    lengths = [random.Random(seed).randint(3, 512) for seed in range(200)]
    batches = plan_batches(lengths, budget)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        widths = [lengths[i] for i in batch]
        assert widths == sorted(widths, reverse=True)  # the first pair sets the padded width
        assert len(batch) == 1 or widths[0] * len(batch) <= budget


def test_batches_go_longest_first_and_cap_the_pair_count() -> None:
    lengths = [10, 50, 20, 40, 30]
    assert plan_batches(lengths, 1000, max_pairs=2) == [[1, 3], [4, 2], [0]]
    with pytest.raises(ValueError, match="max_tokens"):
        plan_batches(lengths, 0)


def test_the_cpu_default_is_the_documented_one() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    cpu, cuda = default_batch_tokens("cpu"), default_batch_tokens("cuda:0")
    assert f"default {cpu:,} on CPU, {cuda:,} on CUDA" in readme
    assert default_batch_tokens("xpu") == cpu  # unknown devices plan like a CPU


def test_scores_do_not_depend_on_the_budget(tiny_bert: Path) -> None:
    model = LocalModel(LocalWeights(tiny_bert, str(tiny_bert), "test"), "cpu", torch.float32)
    words = "river city museum market bridge tower north capital old".split()
    rng = random.Random(0)
    pairs = [("which city has a river", " ".join(rng.choices(words, k=rng.randint(1, 60)))) for _ in range(40)]
    one_each = model.logits(pairs, 64, 1)
    all_at_once = model.logits(pairs, 64, 10**6)
    default = model.logits(pairs, 64, default_batch_tokens("cpu"))
    assert max(abs(a - b) for a, b in zip(one_each, all_at_once, strict=True)) <= 1e-5
    assert max(abs(a - b) for a, b in zip(one_each, default, strict=True)) <= 1e-5
