"""Token-budget batching: group pairs of similar length so padding waste stays small.

A batch costs ``longest pair x pairs`` tokens once padded; batches are filled, longest first,
until the next pair would push that cost over the budget. The memory a forward pass needs is
bounded by the budget, whatever the documents' lengths.

Written here, not taken from a library: sentence-transformers and transformers batch by a fixed pair
count; TEI and infinity plan by tokens but inside their servers, not as a reusable function.
"""

from __future__ import annotations


def plan_batches(lengths: list[int], max_tokens: int, max_pairs: int | None = None) -> list[list[int]]:
    """Split pair indices into batches whose padded size stays within ``max_tokens``.

    Args:
        lengths: Token count of each pair, in input order.
        max_tokens: Budget of padded tokens per batch (a single longer pair still gets its own batch).
        max_pairs: Optional cap on pairs per batch.

    Returns:
        Batches of input indices, longest pairs first, each batch sorted by descending length.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted longest first, so the batch's padded width is its first pair's length.
        width = lengths[current[0]] if current else lengths[index]
        too_many = max_pairs is not None and len(current) >= max_pairs
        if current and (width * (len(current) + 1) > max_tokens or too_many):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
