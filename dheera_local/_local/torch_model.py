"""A loaded cross-encoder: transformers + torch, imported only when a model loads.

It loads as sentence-transformers' ``CrossEncoder`` does (``AutoConfig``, then
``AutoModelForSequenceClassification`` and ``AutoTokenizer`` from the folder), without importing
sentence-transformers itself: its import pulls scikit-learn and friends, a third of a cold start.
The load-time kernel check (:mod:`dheera_local._local.cpu_kernels`) runs once per weights, dtype, CPU and torch
version; its verdict is remembered on disk (:mod:`dheera_local._local.kernel_verdicts`) for later processes.

Pairs are tokenized once (a long query cut a few tokens past the window first), sorted by length
and grouped by a padded-token budget, so long documents never blow up memory and short ones are
not padded to long ones. A GPU out-of-memory halves the budget, re-plans what is left and
retries; the model keeps the smaller budget for later requests. Forward passes on one
model are serialized (torch already uses every core); logits are upcast to fp32 before anything else.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

import torch

from .._backend import Logits
from .._errors import LocalBackendError
from .._models.catalog import check_cross_encoder
from .._models.discovery import LocalWeights, configured_max_length
from .cpu_kernels import EAGER, PACKED, checked_pack, pack_linears_unchecked, packing_available, probe_logits
from .hardware import dtype_name
from .int8 import quantize_encoder
from .kernel_verdicts import VerdictStore, probe_key
from .text_bound import prefix_for_tokens
from .token_budget import plan_batches

logger = logging.getLogger("dheera_local")

# A query longer than this many characters per window token is cut before pairing (see _bounded);
# the margin keeps the tokens near the cut, whose split may depend on what follows, out of the window.
QUERY_CHARS_PER_TOKEN = 4
QUERY_CUT_MARGIN = 8
# The load-time kernel probe's longest pair (or the model's limit, if shorter).
PROBE_MAX_LENGTH = 128
# On CPU a batch is padded to a multiple of this many tokens. oneDNN keeps a primitive (and its
# scratch memory) per input shape it has seen, up to 1,024 of them: with every width from 5 to 512 tokens
# times every row count, the proxy grew 672 -> 1,049 MB over 8,237 requests and still rising (issue 26).
# Widths in steps of 16 leave max_length / 16 of them; the padding is attention-masked (scores unchanged
# within float rounding, tested) and costs ~8 tokens a row.
CPU_WIDTH_STEP = 16


_quiet_lock = threading.Lock()
_quiet_loads = 0  # loads running under no_weight_loading_bar
_bar_setting = True  # transformers' setting before the first of them


@contextlib.contextmanager
def no_weight_loading_bar() -> Iterator[None]:
    """Without transformers' ``Loading weights`` bar, which would print on every SDK, async or LangChain call
    that loads a model, and in the server's log. Only transformers' own flag, only for this load, put back
    after: a library does not change its host's settings (its public toggle would switch huggingface_hub's
    download bars off too, and for good)."""
    from transformers.utils import logging as transformers_logging

    if not hasattr(transformers_logging, "_tqdm_active"):  # a transformers without the flag: leave it be
        yield
        return
    global _quiet_loads, _bar_setting
    with _quiet_lock:  # loads may overlap (one per model): the first in saves the setting, the last out restores it
        if _quiet_loads == 0:
            _bar_setting = transformers_logging._tqdm_active
            transformers_logging._tqdm_active = False
        _quiet_loads += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_loads -= 1
            if _quiet_loads == 0:
                transformers_logging._tqdm_active = _bar_setting


class LocalModel:
    """A loaded cross-encoder. ``logits`` is thread-safe; forward passes run one at a time."""

    def __init__(
        self,
        weights: LocalWeights,
        device: str,
        dtype: torch.dtype,
        cpu_kernels: str = "auto",
        verdicts: VerdictStore | None = None,
    ) -> None:
        check_cross_encoder(weights.model_id, weights.path)
        self.weights = weights
        self.device = device
        self.dtype = dtype
        try:
            with no_weight_loading_bar():
                self.tokenizer, network = _load_cross_encoder(weights, device)
        except Exception as exc:  # transformers raises many types for a broken folder
            raise LocalBackendError(
                f"{weights.model_id}: weights at {weights.path} could not be loaded: {exc}"
            ) from exc
        self.num_labels = int(network.config.num_labels)
        self.kernels = EAGER
        if dtype == torch.int8:  # opt-in (never auto): the encoder's linears in dynamic int8, the rest fp32
            self.network, self.kernels = network, quantize_encoder(network)
        elif packing_available(device, dtype, cpu_kernels):
            self.network = self._packed(network, verdicts)
        else:
            self.network = _to_dtype(network, dtype, device)
        self._lock = threading.Lock()
        # The padded-token budget an out-of-memory taught (None: none yet): later requests start there
        # instead of running out of memory again, each of them, at the budget they asked for.
        self._budget_cap: int | None = None
        # The fast tokenizer keeps truncation settings as mutable state: calls with different
        # max_length from two threads would race. Separate from _lock so tokenizing the next
        # request overlaps the current forward pass.
        self._tokenizer_lock = threading.Lock()

    def _packed(self, network: torch.nn.Module, verdicts: VerdictStore | None) -> torch.nn.Module:
        """``network`` in its dtype, with packed linears where the kernel check allows them (``self.kernels``
        says which). The check's verdict is read from ``verdicts`` when a process on this machine made it
        before, else made now (forward passes on a probe batch) and remembered."""
        key = probe_key(self.weights, dtype_name(self.dtype), torch.__version__) if verdicts is not None else None
        remembered = verdicts.read(key) if verdicts is not None and key is not None else None
        if remembered is not None:
            network = _to_dtype(network, self.dtype, self.device)
            self.kernels = pack_linears_unchecked(network) if remembered == PACKED else EAGER
            return network
        probed = self._probe_reference(network)
        network = _to_dtype(network, self.dtype, self.device)
        if probed is not None:
            verdict = checked_pack(network, *probed)
            self.kernels = verdict.kernels
            if verdicts is not None and key is not None and verdict.final:
                verdicts.write(key, verdict.kernels, verdict.reason)
        return network

    def _probe_reference(self, network: torch.nn.Module) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """The probe batch and the fp32 logits packed kernels are judged against, taken before the weights
        lose precision; None (eager kernels) if the probe cannot run: the fast path is optional."""
        try:
            probe = self._probe_batch()
            return probe, probe_logits(network.float(), probe)
        except Exception as exc:  # the fast path is optional: any failure leaves eager kernels
            model_id = self.weights.model_id
            logger.warning("%s: the load-time kernel probe failed (%s); using eager kernels", model_id, exc)
            return None

    def _probe_batch(self) -> dict[str, torch.Tensor]:
        # Pairs of several lengths, so the check sees padding and a realistic spread of positions.
        texts = [
            "a short probe document",
            "a somewhat longer probe document with a few more words in it",
            " ".join(["the river flows through the old city, past the museum and the market"] * 6),
            "what is the capital of the country in the north",
        ]
        queries = ["probe query", "which city has a river", "a museum near the river", "capital city"]
        longest = min(PROBE_MAX_LENGTH, configured_max_length(self.weights.path) or PROBE_MAX_LENGTH)
        encoded = self.tokenizer(queries, texts, truncation=True, max_length=longest, padding=False)
        return self._pad(encoded, list(range(len(texts))))

    def logits(self, pairs: list[tuple[str, str]], max_length: int, batch_tokens: int) -> list[float]:
        """Raw logits for ``pairs`` in input order (fp32, whatever the weights' precision), as a
        :class:`~dheera_local._backend.Logits` that knows each pair's tokens."""
        if not pairs:
            return Logits(pair_tokens=[])
        encoded = self._tokenize(pairs, max_length)
        # Planned at their padded width, so the token budget counts the padding it will hold.
        lengths = [self._padded_width(len(ids), max_length) for ids in encoded["input_ids"]]
        out: list[float] = [0.0] * len(pairs)
        with self._lock:
            if self._budget_cap is not None:
                batch_tokens = min(batch_tokens, self._budget_cap)
            pending = plan_batches(lengths, batch_tokens)
            while pending:
                batch = pending.pop(0)
                try:
                    values = self._forward(encoded, batch, max(lengths[i] for i in batch))
                except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                    if not _is_out_of_memory(exc):
                        raise
                    longest = max(lengths[i] for i in batch)
                    batch_tokens = self._budget_cap = self._shrink_budget(batch_tokens, longest, exc)
                    # Everything left, not only this batch: batches planned under the old budget would run
                    # out of memory in turn and halve the budget again, past what fits.
                    left = batch + [index for later in pending for index in later]
                    pending = plan_batches_subset(lengths, left, batch_tokens)
                    continue
                for index, value in zip(batch, values, strict=True):
                    out[index] = value
        # The tokens each pair was scored on, from the encoding made above (no second tokenization).
        return Logits(out, pair_tokens=[len(ids) for ids in encoded["input_ids"]])

    def _tokenize(self, pairs: list[tuple[str, str]], max_length: int) -> dict[str, list[list[int]]]:
        # "longest_first" truncation, as CrossEncoder.predict does, so scores match it exactly.
        with self._tokenizer_lock:
            # A document keeps at most max_length tokens of the pair: tokenize only the prefix holding them.
            texts = [prefix_for_tokens(text, max_length, self._count_tokens) for _, text in pairs]
            bounded: dict[str, str] = {}
            queries = []
            for query, _ in pairs:
                if query not in bounded:
                    bounded[query] = self._bounded(query, max_length)
                queries.append(bounded[query])
            return self.tokenizer(queries, texts, truncation="longest_first", max_length=max_length, padding=False)

    def _count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])

    def _bounded(self, query: str, max_length: int) -> str:
        """``query`` cut a few tokens past ``max_length`` (once per request, not once per pair).

        Truncation keeps at most ``max_length`` of its tokens, so the cut changes no score; without it
        a long query would be tokenized in full beside every document (memory x documents).
        """
        if len(query) <= QUERY_CHARS_PER_TOKEN * max_length or not getattr(self.tokenizer, "is_fast", False):
            return query
        keep = max_length + QUERY_CUT_MARGIN
        encoded = self.tokenizer(
            query, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=keep
        )
        offsets = encoded["offset_mapping"]
        return query[: offsets[-1][1]] if len(offsets) >= keep else query

    @torch.inference_mode()
    def _forward(self, encoded: dict[str, list[list[int]]], batch: list[int], width: int) -> list[float]:
        features = self._pad(encoded, batch, width)
        logits = self.network(**features).logits.float()  # upcast before anything else: fp16 ties
        if self.num_labels == 2:
            # Two-class rerankers: the log-odds of "relevant", so sigmoid() gives its softmax probability.
            return (logits[:, 1] - logits[:, 0]).tolist()
        return logits[:, 0].tolist()

    def _padded_width(self, length: int, max_length: int) -> int:
        """``length`` rounded up to CPU_WIDTH_STEP on CPU (never past max_length); as is elsewhere."""
        if self.device != "cpu":
            return length
        return max(length, min(-(-length // CPU_WIDTH_STEP) * CPU_WIDTH_STEP, max_length))

    def _pad(
        self, encoded: dict[str, list[list[int]]], batch: list[int], width: int | None = None
    ) -> dict[str, torch.Tensor]:
        width = max(width or 0, *(len(encoded["input_ids"][i]) for i in batch))
        pad_ids = {"input_ids": self.tokenizer.pad_token_id or 0, "token_type_ids": 0, "attention_mask": 0}
        features = {}
        for name in ("input_ids", "token_type_ids", "attention_mask"):
            if name not in encoded:
                continue
            tensor = torch.full((len(batch), width), pad_ids[name], dtype=torch.long)
            for row, index in enumerate(batch):
                values = encoded[name][index]
                tensor[row, : len(values)] = torch.tensor(values, dtype=torch.long)
            features[name] = tensor.to(self.device, non_blocking=True)
        return features

    def _shrink_budget(self, batch_tokens: int, longest: int, exc: BaseException) -> int:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if batch_tokens <= longest:
            raise LocalBackendError(
                f"{self.weights.model_id}: out of memory on {self.device} even for one pair of {longest} tokens; "
                "lower max_length or use another device"
            ) from exc
        smaller = max(batch_tokens // 2, longest)
        logger.warning(
            "%s: out of memory on %s; batch budget %d -> %d tokens, kept for later requests to this model",
            self.weights.model_id,
            self.device,
            batch_tokens,
            smaller,
        )
        return smaller


def _to_dtype(network: torch.nn.Module, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """``network`` in ``dtype``; on CPU its embedding block stays as loaded (fp32), casting its output.

    The weights are memory-mapped from safetensors, and converting XLM-R's 250k-row embedding table reads
    all of it (768 MB) beside its bf16 copy: bge-reranker-base peaked at 2.1 GB where fp32 sentence-
    transformers stays near 1.1 GB. Left in fp32, only the rows of tokens seen are ever read, and the
    embeddings' sum and LayerNorm keep fp32's precision.
    """
    embeddings = getattr(network.base_model, "embeddings", None)
    if dtype == torch.float32 or torch.device(device).type != "cpu" or not isinstance(embeddings, torch.nn.Module):
        return network.to(dtype=dtype)
    base = network.base_model
    base.embeddings = torch.nn.Identity()  # out of the way of .to() below
    network.to(dtype=dtype)
    base.embeddings = embeddings
    embeddings.register_forward_hook(lambda _module, _inputs, output: output.to(dtype))
    return network


def _load_cross_encoder(weights: LocalWeights, device: str) -> tuple[Any, torch.nn.Module]:
    """The tokenizer and the network in eval mode on ``device``, as ``CrossEncoder(path)`` loads them (same
    config, class, weights and dtype, so its logits are ``CrossEncoder.predict``'s)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = str(weights.path)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if not any(str(name).endswith("ForSequenceClassification") for name in config.architectures or []):
        config.num_labels = 1  # as CrossEncoder does for a body without a classification head
    network = AutoModelForSequenceClassification.from_pretrained(path, config=config, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return tokenizer, network.to(device).eval()


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def plan_batches_subset(lengths: list[int], indices: list[int], max_tokens: int) -> list[list[int]]:
    """Re-plan only ``indices`` (a batch that failed) under a smaller budget."""
    sub = plan_batches([lengths[i] for i in indices], max_tokens)
    return [[indices[j] for j in batch] for batch in sub]
