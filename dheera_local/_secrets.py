"""The secrets in use (API keys, HF tokens, the proxy's master key), masked out of every message.

A secret is registered where it is resolved for use (``api_key=``, ``HF_TOKEN``, the token saved by
``hf auth login``, a server's configured keys). Every :class:`~dheera_local.DheeraError` message and
every record of dheera_local's loggers passes through :func:`mask`, so a token that an endpoint
echoes back (in a body, a redirect's ``Location``, a quoted value) never reaches an error, a log
line or an HTTP answer. Foreign text is quoted with :func:`quote`, which masks *before* cutting to
length: a token straddling the cut would otherwise leak its first characters.

A secret is masked in every spelling a message can carry it in: as written, escaped as ``repr``,
``ascii`` and JSON escape it (httpx quotes an illegal header as ``b'Bearer ...'``), percent-encoded
(a URL's query) and base64-encoded (``Authorization: Basic``); and so is each run of 8 or more of its
characters that no escaping changes (letters, digits, ``._~-``), whatever escaping a message applies.

Keys are normalised where they are read (:func:`clean_key`): surrounding whitespace goes (a secret
mounted from a file ends in a newline), and a control or non-ASCII character inside one is refused,
since no HTTP header can carry it.

Log records are also made single-line (:func:`escape_controls`): a value an attacker chose (a
request path holding ``%0a``) cannot forge a log line or send terminal escapes. :func:`install`
attaches the filter that does both to a handler, for the logging our CLI and server configure;
dheera_local's own loggers and httpx's and httpcore's (which print an answer's headers at DEBUG)
carry it from import.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections import OrderedDict
from urllib.parse import quote as percent_encode
from urllib.parse import quote_plus

MASK = "***"
# Shorter values are not secrets worth the name, and masking them would garble every message.
MIN_SECRET_LENGTH = 4
# A process that sees many keys (a multi-tenant proxy) keeps masking the most recent ones.
MAX_SECRETS = 4096
LOGGER_NAMES = ("dheera_local", "dheera_local.server")
# Loggers of the HTTP stack that carries our tokens. Filters do not apply to records of child
# loggers, so each name that logs is listed (httpcore logs an answer's headers at DEBUG).
HTTP_LOGGER_NAMES = (
    "httpx", "httpcore", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy",
    "httpcore.socks",
)  # fmt: skip

_secrets: OrderedDict[str, tuple[str, ...]] = OrderedDict()
_ordered: list[str] = []  # every spelling of every secret, longest first, so a longer one is masked whole
_lock = threading.Lock()
# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_KEY_CHARACTERS = re.compile("[ -~]*")
_PLAIN_RUN = re.compile(r"[A-Za-z0-9._~-]{8,}")  # printable ASCII: what an HTTP header value can carry


def register(secret: str | None) -> None:
    """Mask ``secret``, in each of its spellings, in every later message of this process."""
    if not secret or len(secret) < MIN_SECRET_LENGTH:
        return
    global _ordered
    with _lock:
        if secret in _secrets:
            _secrets.move_to_end(secret)
            return
        _secrets[secret] = spellings(secret)
        if len(_secrets) > MAX_SECRETS:
            _secrets.popitem(last=False)
        _ordered = sorted({s for forms in _secrets.values() for s in forms}, key=len, reverse=True)


def registered() -> tuple[str, ...]:
    """The secrets masked now, oldest first (with :func:`forget_all_but`: a test leaves the registry as it found it)."""
    with _lock:
        return tuple(_secrets)


def forget_all_but(kept: tuple[str, ...]) -> None:
    """Stop masking every secret not in ``kept`` (a test's own keys would otherwise mask later tests' text)."""
    global _ordered
    with _lock:
        for secret in [s for s in _secrets if s not in kept]:
            del _secrets[secret]
        _ordered = sorted({s for forms in _secrets.values() for s in forms}, key=len, reverse=True)


def register_userinfo(user: str | None, password: str | None) -> None:
    """Mask URL credentials: the password, ``user:password`` (and its base64, as Basic auth sends it);
    the user name alone only without a password (then it is the token)."""
    if password:
        register(password)
        register(f"{user or ''}:{password}")
    elif user:
        register(user)


def spellings(secret: str) -> tuple[str, ...]:
    """``secret`` as written, escaped, percent-encoded and base64-encoded."""
    raw = secret.encode("utf-8", "surrogatepass")
    forms = {
        secret,
        repr(secret)[1:-1],
        ascii(secret)[1:-1],
        json.dumps(secret)[1:-1],
        repr(raw)[2:-1],
        percent_encode(secret, safe=""),
        percent_encode(secret, safe="/:@"),
        quote_plus(secret),
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),  # inside a longer base64 text: no padding
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        # Its runs of characters that no escaping changes: an escaping not listed above (a repr of a
        # repr, a dict quoted in a message) still leaves these whole.
        *_PLAIN_RUN.findall(secret),
    }
    return tuple(form for form in forms if len(form) >= MIN_SECRET_LENGTH)


def mask(text: str) -> str:
    """``text`` with every registered secret, in any of its spellings, replaced by ``***``."""
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


def escape_controls(text: str) -> str:
    """``text`` on one line: control characters become escapes (``\\n``, ``\\x1b``)."""
    return _CONTROLS.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]


def clean_key(value: str, name: str) -> str:
    """A key as it will be sent: surrounding whitespace stripped. Raises ValueError naming ``name``
    (never the value) when a character inside it cannot go in an HTTP header."""
    key = value.strip()
    if not _KEY_CHARACTERS.fullmatch(key):
        position = next(i for i, char in enumerate(key) if not " " <= char <= "~")
        kind = "a control character" if _CONTROLS.match(key[position]) else "a non-ASCII character"
        raise ValueError(
            f"{name} holds {kind} at position {position}; an HTTP header cannot carry it "
            "(surrounding whitespace is stripped, inner characters are not): fix the key"
        )
    return key


# The attributes every LogRecord has; any other was passed as ``extra=`` (a JSON formatter writes it as a key).
RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class MaskingFilter(logging.Filter):
    """Masks secrets in the final text of every record (message and arguments) it sees, and in the text of
    its ``extra=`` fields, and escapes control characters, so that one record is one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = escape_controls(mask(message))
        if cleaned != message:
            record.msg, record.args = cleaned, None
        for name, value in list(vars(record).items()):
            if isinstance(value, str) and name not in RECORD_ATTRIBUTES:
                setattr(record, name, escape_controls(mask(value)))
        return True


_FILTER = MaskingFilter()


def install(handler: logging.Handler) -> None:
    """Mask and escape every record ``handler`` writes, whatever its logger (the CLI's and server's)."""
    if _FILTER not in handler.filters:
        handler.addFilter(_FILTER)


for _name in LOGGER_NAMES + HTTP_LOGGER_NAMES:
    logging.getLogger(_name).addFilter(_FILTER)
