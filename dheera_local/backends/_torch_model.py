"""A loaded cross-encoder: sentence-transformers + torch, imported only when a model loads.

Pairs are tokenized once (a long query cut a few tokens past the window first), sorted by length
and grouped by a padded-token budget, so long documents never blow up memory and short ones are
not padded to long ones. A GPU out-of-memory halves the budget, re-plans what is left and
retries; the model keeps the smaller budget for later requests. Forward passes on one
model are serialized (torch already uses every core); logits are upcast to fp32 before anything else.
"""

from __future__ import annotations

import logging
import threading

import torch

from .._catalog import check_cross_encoder
from .._cpu_kernels import EAGER, pack_linears, packing_available
from .._discovery import LocalWeights, configured_max_length
from .._errors import LocalBackendError
from .._int8 import quantize_encoder
from .._token_budget import plan_batches

logger = logging.getLogger("dheera_local")

# A query longer than this many characters per window token is cut before pairing (see _bounded);
# the margin keeps the tokens near the cut, whose split may depend on what follows, out of the window.
QUERY_CHARS_PER_TOKEN = 4
QUERY_CUT_MARGIN = 8
# The load-time kernel probe's longest pair (or the model's limit, if shorter).
PROBE_MAX_LENGTH = 128


class LocalModel:
    """A loaded cross-encoder. ``logits`` is thread-safe; forward passes run one at a time."""

    def __init__(self, weights: LocalWeights, device: str, dtype: torch.dtype, cpu_kernels: str = "auto") -> None:
        from sentence_transformers import CrossEncoder

        check_cross_encoder(weights.model_id, weights.path)
        self.weights = weights
        self.device = device
        self.dtype = dtype
        try:
            encoder = CrossEncoder(str(weights.path), device=device, local_files_only=True)
        except Exception as exc:  # transformers raises many types for a broken folder
            raise LocalBackendError(
                f"{weights.model_id}: weights at {weights.path} could not be loaded: {exc}"
            ) from exc
        self.encoder = encoder
        self.tokenizer = encoder.tokenizer
        network = encoder.model.eval()
        self.num_labels = int(network.config.num_labels)
        self.kernels = EAGER
        probed = self._probe_reference(network) if packing_available(device, dtype, cpu_kernels) else None
        if dtype == torch.int8:  # opt-in (never auto): the encoder's linears in dynamic int8, the rest fp32
            self.network, self.kernels = network, quantize_encoder(network)
        else:
            self.network = _to_dtype(network, dtype, device)
            if probed is not None:
                self.kernels = pack_linears(self.network, *probed)
        self._lock = threading.Lock()
        # The padded-token budget an out-of-memory taught (None: none yet): later requests start there
        # instead of running out of memory again, each of them, at the budget they asked for.
        self._budget_cap: int | None = None
        # The fast tokenizer keeps truncation settings as mutable state: calls with different
        # max_length from two threads would race. Separate from _lock so tokenizing the next
        # request overlaps the current forward pass.
        self._tokenizer_lock = threading.Lock()

    def _probe_reference(self, network: torch.nn.Module) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """The probe batch and the fp32 logits packed kernels are judged against, taken before the weights
        lose precision; None (eager kernels) if the probe cannot run: the fast path is optional."""
        try:
            probe = self._probe_batch()
            return probe, _probe_logits(network.float(), probe)
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
        """Raw logits for ``pairs`` in input order (fp32, whatever the weights' precision)."""
        if not pairs:
            return []
        encoded = self._tokenize(pairs, max_length)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        out: list[float] = [0.0] * len(pairs)
        with self._lock:
            if self._budget_cap is not None:
                batch_tokens = min(batch_tokens, self._budget_cap)
            pending = plan_batches(lengths, batch_tokens)
            while pending:
                batch = pending.pop(0)
                try:
                    values = self._forward(encoded, batch)
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
        return out

    def _tokenize(self, pairs: list[tuple[str, str]], max_length: int) -> dict[str, list[list[int]]]:
        texts = [text for _, text in pairs]
        # "longest_first" truncation, as CrossEncoder.predict does, so scores match it exactly.
        with self._tokenizer_lock:
            bounded: dict[str, str] = {}
            queries = []
            for query, _ in pairs:
                if query not in bounded:
                    bounded[query] = self._bounded(query, max_length)
                queries.append(bounded[query])
            return self.tokenizer(queries, texts, truncation="longest_first", max_length=max_length, padding=False)

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
    def _forward(self, encoded: dict[str, list[list[int]]], batch: list[int]) -> list[float]:
        features = self._pad(encoded, batch)
        logits = self.network(**features).logits.float()  # upcast before anything else: fp16 ties
        if self.num_labels == 2:
            # Two-class rerankers: the log-odds of "relevant", so sigmoid() gives its softmax probability.
            return (logits[:, 1] - logits[:, 0]).tolist()
        return logits[:, 0].tolist()

    def _pad(self, encoded: dict[str, list[list[int]]], batch: list[int]) -> dict[str, torch.Tensor]:
        width = max(len(encoded["input_ids"][i]) for i in batch)
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


@torch.inference_mode()
def _probe_logits(network: torch.nn.Module, features: dict[str, torch.Tensor]) -> torch.Tensor:
    return network(**features).logits.float()


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def plan_batches_subset(lengths: list[int], indices: list[int], max_tokens: int) -> list[list[int]]:
    """Re-plan only ``indices`` (a batch that failed) under a smaller budget."""
    sub = plan_batches([lengths[i] for i in indices], max_tokens)
    return [[indices[j] for j in batch] for batch in sub]
