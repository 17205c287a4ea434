"""Long texts cut before they are tokenized: a model reads at most a window's tokens of a document.

Tokenizing a 10 MB document in full to keep its first 512 tokens cost 1.2 GB and 14 s (issue 26). The
prefix a window can read is found from the characters instead: a first guess of ``CHARS_PER_TOKEN``
characters per token (English averages 4-5 on WordPiece and SentencePiece vocabularies), cut back to the
last whitespace so the tokens before the cut are those of the whole text (every pre-tokenizer we load
splits on whitespace), then *checked*: the prefix is tokenized and must hold ``CUT_MARGIN`` tokens more
than asked, else the guess grows 4x. A text that is short, or whose characters make few tokens (long runs
of spaces), is kept whole, so the cut never changes a score; it only bounds what the tokenizer sees.
"""

from __future__ import annotations

from collections.abc import Callable

CHARS_PER_TOKEN = 8
# Tokens past the ones read: those nearest the cut may be split differently than in the whole text.
CUT_MARGIN = 16


def prefix_for_tokens(text: str, tokens: int, count_tokens: Callable[[str], int]) -> str:
    """A prefix of ``text`` holding at least ``tokens`` (+ margin) of its tokens; ``text`` itself when shorter.

    Args:
        text: The document.
        tokens: Tokens a reader takes from its start (a window, ``max_tokens_per_doc``, chunks x width).
        count_tokens: Tokens of a string, without special tokens (called on prefixes only).
    """
    need = tokens + CUT_MARGIN
    limit = need * CHARS_PER_TOKEN
    while limit < len(text):
        prefix = _cut_at_whitespace(text, limit)
        if count_tokens(prefix) >= need:
            return prefix
        limit *= 4
    return text


def _cut_at_whitespace(text: str, limit: int) -> str:
    """``text[:limit]`` shortened to before its last whitespace in the second half; at ``limit`` without one
    (a run that long is one word to most tokenizers: WordPiece reads a word over 100 characters as [UNK])."""
    for position in range(limit, limit // 2, -1):
        if text[position].isspace():
            return text[:position]
    return text[:limit]
