"""LLM rerankers: dheera_local against each model's reference code, on a full-shape twin.

    python benchmarks/llm_rerankers.py [--twin qwen3-0.6b|gemma-2b] [--passages 20] [--rounds 2]
                                       [--device cpu] [--dtype float32]

One NovelEval query x ``--passages`` passages, scored by a twin (random weights in the real model's exact
shape: its speed is real, its scores are not; its tokenizer is trained on NovelEval's own text, so token counts
are near the real tokenizer's). Each system runs in a fresh process (its peak RSS is its own), alternating ours
/ reference for ``--rounds`` rounds, so a machine shared with other work slows both alike.

* ``--twin qwen3-0.6b`` (Qwen3-Reranker-0.6B: 28 layers, hidden 1024, 151,669-row vocabulary). Reference: the
  model card's transformers code (``format_instruction``, ``process_inputs``, ``compute_logits``), batches of 8
  in input order, ``AutoModelForCausalLM`` (full-vocabulary head). Compared: P(yes).
* ``--twin gemma-2b`` (bge-reranker-v2-gemma: 18 layers, hidden 2048, 256,000-row vocabulary; ~10 GB in fp32 per
  process). Reference: FlagEmbedding's ``FlagLLMReranker.compute_score_single_gpu`` procedure transcribed (its
  batch-size probe on the first batch, length-sorted batches, ``output_hidden_states=True``, last-logit pool),
  ``max_length`` 512 as its default, but batches of 8 instead of its default 128 (at 128 these 20 passages would
  hold ~11 GB of full-vocabulary logits beside the weights). Its probe pass is timed apart and reported both
  ways. Compared: the raw ``Yes`` logit.
* ``ours``: ``Reranker().rerank`` (cache off): prefix reuse, token-budget batches, only the needed head rows.

Reported: scoring seconds (the load is timed apart), pairs/s, the largest score difference, peak RSS.
Results go to ``benchmarks/results/llm_rerankers[-gemma-2b].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

HERE = Path(__file__).resolve().parent
DATASET = HERE.parent.parent / "shared" / "data" / "noveleval"  # ../shared beside the repo
TWINS = {
    # --twin: (LLM_TWINS name, folder, description, max_length)
    "qwen3-0.6b": ("Qwen3-Reranker-0.6B", "qwen3-reranker-0.6b-twin",
                   "Qwen3-Reranker-0.6B-shaped (28 layers, hidden 1024, vocab 151669)", 8192),
    "gemma-2b": ("bge-reranker-v2-gemma", "bge-reranker-v2-gemma-twin",
                 "bge-reranker-v2-gemma-shaped (18 layers, hidden 2048, vocab 256000)", 512),
}  # fmt: skip
GEMMA_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)


def load_query(dataset: Path, passages: int, query_id: str = "0") -> tuple[str, list[str]]:
    queries = dict(line.split("\t", 1) for line in (dataset / "queries.tsv").read_text().splitlines() if line)
    corpus = dict(line.split("\t", 1) for line in (dataset / "corpus.tsv").read_text().splitlines() if line)
    docs = [corpus[f"{query_id}-{i}"] for i in range(passages) if f"{query_id}-{i}" in corpus]
    return queries[query_id].strip(), docs


def family_of(twin: str) -> str:
    return "gemma" if twin.startswith("gemma") else "qwen3"


def build(models_dir: Path, dataset: Path, twin: str, tiny: bool = False) -> Path:
    from dheera_local.testing.models import build_llm_reranker, build_llm_twin

    name, folder_name = TWINS[twin][:2]
    folder = models_dir / (f"{family_of(twin)}-reranker-tiny" if tiny else folder_name)
    if not (folder / "model.safetensors").exists() and not (folder / "model.safetensors.index.json").exists():
        words = (dataset / "corpus.tsv").read_text().split()
        if tiny:  # the script's own smoke test: 2 layers, hidden 32
            build_llm_reranker(
                folder, family=family_of(twin), words=words, max_position=32768, tokenizer_vocab_size=8000
            )
        else:
            build_llm_twin(name, folder, words=words)
    return folder


def child(system: str, twin: str, folder: Path, query: str, docs: list[str], device: str, dtype: str) -> dict[str, Any]:
    import torch

    torch_dtype = getattr(torch, dtype)
    max_length = TWINS[twin][3]
    gemma = family_of(twin) == "gemma"
    start = time.perf_counter()
    probe_s = 0.0
    if system == "ours":
        from dheera_local import Reranker

        reranker = Reranker()
        # gemma: compare raw Yes logits (FlagEmbedding's normalize=False); Qwen3: P(yes), the card's output.
        options = {"device": device, "dtype": dtype, "cache": False, "max_length": max_length, "raw_scores": gemma}
        reranker.plan(str(folder), **options).local.model()  # load
        loaded = time.perf_counter()
        response = reranker.rerank(str(folder), query, docs, **options)
        scores = [0.0] * len(docs)
        for result in response.results:
            scores[result.index] = result.relevance_score
    elif gemma:
        scores, loaded, probe_s = flag_llm_reference(folder, query, docs, device, torch_dtype, max_length)
    else:
        scores, loaded = reference(folder, query, docs, device, torch_dtype)
    done = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    gpu_peak = torch.cuda.max_memory_allocated() if torch.device(device).type == "cuda" else None
    return {
        "system": system, "load_s": loaded - start, "score_s": done - loaded, "probe_s": probe_s, "scores": scores,
        "peak_rss": peak, "gpu_peak_bytes": gpu_peak,
    }  # fmt: skip


def _only_second(first: list[int], second: list[int], max_length: int) -> list[int]:
    # tokenizer.prepare_for_model(first, second, truncation="only_second", max_length=..., add_special_tokens=False)
    # as transformers 4 defines it (transformers 5 removed the method): the second sequence loses its tail.
    over = len(first) + len(second) - max_length
    if 0 < over < len(second):
        second = second[:-over]
    return first + second


def flag_llm_reference(
    folder: Path, query: str, docs: list[str], device: str, dtype: Any, max_length: int, batch_size: int = 8
) -> tuple[list[float], float, float]:
    """FlagEmbedding's ``FlagLLMReranker.compute_score_single_gpu`` (use_dataloader=False, normalize=False):
    returns the raw Yes logits, the time the model was loaded, and the seconds its batch-size probe took."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    loaded = time.perf_counter()
    yes_loc = tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    queries = tokenizer(
        [f"A: {query}"] * len(docs), return_tensors=None, add_special_tokens=False,
        max_length=max_length * 3 // 4, truncation=True,
    )["input_ids"]  # fmt: skip
    passages = tokenizer(
        [f"B: {doc}" for doc in docs], return_tensors=None, add_special_tokens=False, max_length=max_length,
        truncation=True,
    )["input_ids"]  # fmt: skip
    order = np.argsort([-len(q) - len(p) for q, p in zip(queries, passages, strict=True)])
    prompt_inputs = tokenizer(GEMMA_PROMPT, return_tensors=None, add_special_tokens=False)["input_ids"]
    sep_inputs = tokenizer("\n", return_tensors=None, add_special_tokens=False)["input_ids"]
    encode_max_length = max_length + len(sep_inputs) + len(prompt_inputs)

    def batch(indices: Any) -> Any:
        items = []
        for i in indices:
            ids = _only_second([tokenizer.bos_token_id] + queries[i], sep_inputs + passages[i], encode_max_length)
            ids = ids + sep_inputs + prompt_inputs
            items.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
        inputs = tokenizer.pad(
            items, padding=True, max_length=encode_max_length, pad_to_multiple_of=8, return_tensors="pt"
        )
        return {key: value.to(device) for key, value in inputs.items()}

    scores: list[float] = []
    with torch.no_grad():
        probe_start = time.perf_counter()
        model(**batch(order[:batch_size]), output_hidden_states=True)  # its "adjust batch size" pass
        probe_s = time.perf_counter() - probe_start
        for start in range(0, len(docs), batch_size):
            inputs = batch(order[start : start + batch_size])
            logits = model(**inputs, output_hidden_states=True).logits
            mask = inputs["attention_mask"]
            if mask[:, -1].sum() == mask.shape[0]:  # last_logit_pool
                last = logits[:, -1, :]
            else:
                lengths = mask.sum(dim=1) - 1
                last = torch.stack([logits[i, lengths[i], :] for i in range(logits.shape[0])], dim=0)
            scores.extend(last[:, yes_loc].cpu().float().tolist())
    return [scores[i] for i in np.argsort(order)], loaded, probe_s


def reference(folder: Path, query: str, docs: list[str], device: str, dtype: Any) -> tuple[list[float], float]:
    """The Qwen3-Reranker model card's transformers example (batches of 8, input order)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    loaded = time.perf_counter()
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    max_length = 8192
    prefix = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prefix_tokens = tokenizer.encode(prefix, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(suffix, add_special_tokens=False)
    instruction = "Given a web search query, retrieve relevant passages that answer the query"
    texts = [f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}" for doc in docs]
    scores: list[float] = []
    for start in range(0, len(texts), 8):
        inputs = tokenizer(
            texts[start : start + 8], padding=False, truncation="longest_first", return_attention_mask=False,
            max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
        )  # fmt: skip
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
        inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length).to(device)
        with torch.no_grad():
            batch = model(**inputs).logits[:, -1, :]
            pair = torch.stack([batch[:, token_false_id], batch[:, token_true_id]], dim=1)
            scores.extend(torch.nn.functional.log_softmax(pair.float(), dim=1)[:, 1].exp().tolist())
    return scores, loaded


def cpu_description() -> dict[str, Any]:
    flags, name = set(), platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
    return {"cpu": name, "flags": sorted(f for f in wanted if f in flags), "cores": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--twin", choices=sorted(TWINS), default="qwen3-0.6b")
    parser.add_argument("--passages", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/dheera-bench-models"))
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/llm_rerankers[-TWIN].json")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer twin: checks the script, measures nothing")
    parser.add_argument("--child", choices=("ours", "reference"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    query, docs = load_query(args.dataset, args.passages)
    folder = build(args.models_dir, args.dataset, args.twin, args.tiny)
    if args.out is None:
        suffix = "" if args.twin == "qwen3-0.6b" else f"-{args.twin}"
        args.out = HERE / "results" / f"llm_rerankers{suffix}.json"
    if args.child:
        print(json.dumps(child(args.child, args.twin, folder, query, docs, args.device, args.dtype)))
        return 0
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for system in ("ours", "reference") if round_ % 2 == 0 else ("reference", "ours"):
            command = [sys.executable, __file__, "--child", system, *sys.argv[1:]]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            last = runs[-1]
            print(f"round {round_}: {system:<9} {last['score_s']:.2f} s, peak RSS {last['peak_rss'] / 2**30:.2f} GiB")
    ours = [r for r in runs if r["system"] == "ours"]
    ref = [r for r in runs if r["system"] == "reference"]
    summary = {
        "twin": "tiny (2 layers, hidden 32)" if args.tiny else TWINS[args.twin][2],
        "pairs": len(docs), "device": args.device, "dtype": args.dtype, "machine": cpu_description(),
        "load_average_before_after": [load_before, os.getloadavg()],  # other work on the machine, if any
        "ours_s": median(r["score_s"] for r in ours), "reference_s": median(r["score_s"] for r in ref),
        "ours_peak_rss": max(r["peak_rss"] for r in ours), "reference_peak_rss": max(r["peak_rss"] for r in ref),
        "max_abs_score_diff": max(abs(a - b) for a, b in zip(ours[0]["scores"], ref[0]["scores"], strict=True)),
        "runs": [{k: v for k, v in r.items() if k != "scores"} for r in runs],
    }  # fmt: skip
    summary["speedup"] = summary["reference_s"] / summary["ours_s"]
    if any(r["probe_s"] for r in ref):  # FlagEmbedding's probe pass: the ratio with and without it
        summary["reference_without_probe_s"] = median(r["score_s"] - r["probe_s"] for r in ref)
        summary["speedup_without_probe"] = summary["reference_without_probe_s"] / summary["ours_s"]
    summary["rss_ratio"] = summary["ours_peak_rss"] / summary["reference_peak_rss"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
