"""Long documents as overlapping token windows, scored as separate pairs (Cohere's semantics).

A document longer than the model's window (``max_length`` minus the query and special tokens)
becomes windows of that many tokens, each overlapping the previous one by about a tenth and cut
at word boundaries; the document's score is the maximum over its windows. Windows are plain
substrings of the document, so they are ordinary pairs for the cache and for every backend, and
a document that fits in one window is scored exactly as without chunking.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._errors import InvalidRequestError
from .text_bound import prefix_for_tokens

MAX_WINDOWS_PER_REQUEST = 10_000
_WORD = re.compile(r"\S+")

Spans = list[tuple[int, int]]


@dataclass(frozen=True)
class ChunkSettings:
    """What the request asked for; ``None`` everywhere means one window, truncated (the default)."""

    max_length: int
    max_chunks_per_doc: int | None = None
    max_tokens_per_doc: int | None = None

    @property
    def enabled(self) -> bool:
        return self.max_chunks_per_doc is not None or self.max_tokens_per_doc is not None


class TokenCounter:
    """Token spans of a text, from the model's tokenizer or, without one, whitespace words."""

    def __init__(self, spans: Callable[[str], Spans], special_tokens: int) -> None:
        self.spans = spans
        self.special_tokens = special_tokens

    @classmethod
    def words(cls) -> TokenCounter:
        """An approximation for models whose tokenizer is not on this machine."""
        return cls(lambda text: [m.span() for m in _WORD.finditer(text)], special_tokens=4)


class TokenizerStore:
    """Each model folder's tokenizer (loaded without the weights), once per folder; ``clear`` forgets them.

    A process has one (:data:`SHARED_TOKENIZERS`, owned by the runtime: :func:`dheera_local.close_all`).
    """

    def __init__(self) -> None:
        self._counters: dict[str, TokenCounter] = {}
        self._lock = threading.Lock()

    def is_loaded(self, folder: Path) -> bool:
        """True when the tokenizer of ``folder`` is already loaded."""
        with self._lock:
            return str(folder) in self._counters

    def counter_for(self, folder: Path | None) -> TokenCounter:
        """The model's tokenizer from its folder; whitespace words without one."""
        if folder is None:
            return TokenCounter.words()
        key = str(folder)
        with self._lock:
            if key not in self._counters:
                self._counters[key] = _load_counter(key)
            return self._counters[key]

    def clear(self) -> None:
        with self._lock:
            self._counters.clear()


def _load_counter(folder: str) -> TokenCounter:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)

    def spans(text: str) -> Spans:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
        return [tuple(span) for span in encoded["offset_mapping"]]

    return TokenCounter(spans, tokenizer.num_special_tokens_to_add(pair=True))


SHARED_TOKENIZERS = TokenizerStore()


def counter_for(folder: Path | None) -> TokenCounter:
    """The tokenizer of ``folder`` from the shared store."""
    return SHARED_TOKENIZERS.counter_for(folder)


def document_windows(query: str, texts: list[str], settings: ChunkSettings, counter: TokenCounter) -> list[list[str]]:
    """Each document's windows; raises InvalidRequestError past 10,000 windows in all."""
    if not settings.enabled:
        windows = [[text] for text in texts]
    else:
        width = window_width(len(counter.spans(query)), counter.special_tokens, settings.max_length)
        read = _tokens_read(width, settings)
        windows = []
        for text in texts:
            # Windows are substrings of the prefix the limits let them reach: the rest is never tokenized.
            text = prefix_for_tokens(text, read, lambda part: len(counter.spans(part)))
            windows.append(_windows_of(text, counter.spans(text), width, settings))
    total = sum(len(w) for w in windows)
    if total > MAX_WINDOWS_PER_REQUEST:
        raise InvalidRequestError(
            f"this request makes {total} document windows ({len(texts)} documents"
            + (f", up to {settings.max_chunks_per_doc} chunks each" if settings.max_chunks_per_doc else "")
            + f"); the limit is {MAX_WINDOWS_PER_REQUEST}. Send fewer documents or lower max_chunks_per_doc",
            field="documents",
        )
    return windows


def window_width(query_tokens: int, special_tokens: int, max_length: int) -> int:
    """Document tokens per window; a very long query is truncated instead of starving the document."""
    return max(max_length - query_tokens - special_tokens, max_length // 4, 1)


def _tokens_read(width: int, settings: ChunkSettings) -> int:
    """Tokens of a document its windows can reach: ``max_tokens_per_doc``, else ``max_chunks_per_doc`` windows."""
    if settings.max_tokens_per_doc is not None:
        return settings.max_tokens_per_doc
    return (settings.max_chunks_per_doc or 1) * width


def _windows_of(text: str, spans: Spans, width: int, settings: ChunkSettings) -> list[str]:
    truncated = settings.max_tokens_per_doc is not None and len(spans) > settings.max_tokens_per_doc
    if truncated:
        spans = spans[: settings.max_tokens_per_doc]
    if not spans or (not truncated and len(spans) <= width):
        return [text]  # fits: exactly the unchunked pair, so the cache is shared with unchunked calls
    return [text[spans[start][0] : spans[end - 1][1]] for start, end in token_windows(spans, width, settings)]


def token_windows(spans: Spans, width: int, settings: ChunkSettings) -> list[tuple[int, int]]:
    """``[start, end)`` token ranges of at most ``width`` tokens, overlapping, cut at word starts."""
    count = len(spans)
    starts = [i for i in range(count) if i == 0 or spans[i][0] > spans[i - 1][1]]
    overlap = width // 10
    windows: list[tuple[int, int]] = []
    start = 0
    while True:
        end = start + width
        if end >= count:
            windows.append((start, count))
            break
        end = _snap(starts, end, floor=start + width // 2)
        windows.append((start, end))
        if settings.max_chunks_per_doc is not None and len(windows) >= settings.max_chunks_per_doc:
            break
        start = max(_snap(starts, end - overlap, floor=start + 1), start + 1)
    if settings.max_chunks_per_doc is not None:
        windows = windows[: settings.max_chunks_per_doc]
    return windows


def _snap(word_starts: list[int], position: int, floor: int) -> int:
    """The last word start at or before ``position`` but after ``floor``; else ``position``."""
    at = bisect.bisect_right(word_starts, position) - 1
    return word_starts[at] if at >= 0 and word_starts[at] > floor else position
