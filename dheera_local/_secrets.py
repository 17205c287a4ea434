"""The secrets in use (API keys, HF tokens, the proxy's master key), masked out of every message.

A secret is registered where it is resolved for use (``api_key=``, ``HF_TOKEN``, the token saved by
``hf auth login``, a server's configured keys). Every :class:`~dheera_local.DheeraError` message and
every record of dheera_local's loggers passes through :func:`mask`, so a token that an endpoint
echoes back (in a body, a redirect's ``Location``, a quoted value) never reaches an error, a log
line or an HTTP answer. Foreign text is quoted with :func:`quote`, which masks *before* cutting to
length: a token straddling the cut would otherwise leak its first characters.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

MASK = "***"
# Shorter values are not secrets worth the name, and masking them would garble every message.
MIN_SECRET_LENGTH = 4
# A process that sees many keys (a multi-tenant proxy) keeps masking the most recent ones.
MAX_SECRETS = 4096
LOGGER_NAMES = ("dheera_local", "dheera_local.server")

_secrets: OrderedDict[str, None] = OrderedDict()
_ordered: list[str] = []  # longest first, so a secret containing another is masked whole
_lock = threading.Lock()


def register(secret: str | None) -> None:
    """Mask ``secret`` in every later message of this process."""
    if not secret or len(secret) < MIN_SECRET_LENGTH:
        return
    global _ordered
    with _lock:
        if secret in _secrets:
            _secrets.move_to_end(secret)
            return
        _secrets[secret] = None
        if len(_secrets) > MAX_SECRETS:
            _secrets.popitem(last=False)
        _ordered = sorted(_secrets, key=len, reverse=True)


def mask(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _ordered:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def quote(value: object, limit: int) -> str:
    """``str(value)``, masked, then cut to ``limit`` characters: for quoting what a server sent."""
    try:
        text = str(value)
    except ValueError:  # an integer past Python's 4,300-digit limit, somewhere inside value
        text = f"<a {type(value).__name__} holding an integer too long to print>"
    return mask(text)[:limit]


class MaskingFilter(logging.Filter):
    """Masks the final text of every record (message and arguments) of the logger it is attached to."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _ordered:
            message = record.getMessage()
            masked = mask(message)
            if masked != message:
                record.msg, record.args = masked, None
        return True


_FILTER = MaskingFilter()
for _name in LOGGER_NAMES:
    logging.getLogger(_name).addFilter(_FILTER)
