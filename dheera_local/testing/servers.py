"""Real loopback HTTP servers speaking the TEI, HF hosted and Cohere rerank formats, for tests.

They score with sentence-transformers directly, never through dheera_local's engine, so a test that
compares their answers with the local backend compares two implementations. Point ``api_base`` (or
``DHEERA_HF_INFERENCE_URL``) at one to test your code's remote path without a network. Each server
records every request and can be told to misbehave::

    with Servers() as servers:
        tei = servers.tei(model_folder, max_client_batch_size=32)
        tei.fail(Fault(503), Fault(429, headers={"Retry-After": "1"}))  # the next two scoring requests
        tei.always = Fault(delay=2.0)                                    # then every one is slow
        ...
        assert [len(r.body["texts"]) for r in tei.scoring()] == [32, 32, 32, 4]

Formats (see /work/shared/reference/rerank-wire-formats.md):

* ``tei``: ``GET /info``, ``POST /rerank`` -> bare array sorted by score, sigmoid unless
  ``raw_scores``; ``{"error", "error_type"}`` errors; 413/422 "batch size N > maximum allowed batch
  size M"; a plain-text 413 for bodies over the payload limit.
* ``hf``: ``POST /models/ORG/NAME`` with ``{text, text_pair}`` inputs -> ``[{label, score}]`` (no
  ``top_k``) or ``[[{label, score}], ...]`` (``top_k`` given), as transformers' pipeline answers.
* ``cohere``: ``POST /rerank``, ``/v1/rerank``, ``/v2/rerank`` -> ``results[]`` (or Voyage's ``data[]``),
  ``document`` as a string or ``{text}``, sliced to ``top_n``; the tokens scored reported as
  ``usage="cohere"`` (``meta.tokens.input_tokens``) or ``usage="vllm"`` (``usage.total_tokens``) say,
  not at all by default (Cohere's own API reports search units only).
"""

from __future__ import annotations

import json
import math
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TEI_PAYLOAD_LIMIT = 2_000_000


def sigmoid(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-logit))


def softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(value - top) for value in row]
    return [value / sum(exps) for value in exps]


class Scorer:
    """Raw logits from sentence-transformers for one model folder (one row of labels per pair)."""

    def __init__(self, folder: Path) -> None:
        from sentence_transformers import CrossEncoder  # torch loads when a server first scores

        self.encoder = CrossEncoder(str(folder), device="cpu")
        config = self.encoder.model.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self._lock = threading.Lock()  # fast tokenizers refuse concurrent use

    def rows(self, pairs: list[tuple[str, str]]) -> list[list[float]]:
        import torch

        with self._lock:
            logits = self.encoder.predict(pairs, activation_fn=torch.nn.Identity(), show_progress_bar=False)
        return [[float(v) for v in row] for row in logits.reshape(len(pairs), -1)]

    def tokens(self, pairs: list[tuple[str, str]]) -> int:
        """The pairs' input ids as the model's tokenizer encodes them (special tokens in, no padding)."""
        queries, texts = [q for q, _ in pairs], [t for _, t in pairs]
        with self._lock:
            encoded = self.encoder.tokenizer(queries, texts, truncation="longest_first")
        return sum(len(ids) for ids in encoded["input_ids"])

    def relevance(self, pairs: list[tuple[str, str]]) -> list[float]:
        """What a reranking server reports: sigmoid of the one logit, softmax of the positive class."""
        return [sigmoid(row[0]) if len(row) == 1 else softmax(row)[1] for row in self.rows(pairs)]


_scorers: dict[str, Scorer] = {}
_scorers_lock = threading.Lock()


def scorer(folder: Path) -> Scorer:
    """One Scorer per model folder per test session."""
    key = str(Path(folder).resolve())
    with _scorers_lock:
        if key not in _scorers:
            _scorers[key] = Scorer(Path(folder))
        return _scorers[key]


def reference_logits(folder: Path, query: str, texts: list[str]) -> list[float]:
    """Independent logits (two-label heads: log-odds of the positive class), for assertions."""
    return [row[0] if len(row) == 1 else row[1] - row[0] for row in scorer(folder).rows([(query, t) for t in texts])]


@dataclass
class Fault:
    """How to answer one scoring request. ``status=None``: answer normally, after ``delay``.

    ``trickle``: answer 200 with ``body`` (JSON), sending one byte every ``trickle`` seconds, the
    headers too when ``trickle_headers``.
    """

    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    malformed: bool = False
    trickle: float = 0.0
    trickle_headers: bool = False


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    size: int
    client_port: int


class LoopbackServer:
    """A rerank server on 127.0.0.1 in a background thread. Settings may change between requests."""

    def __init__(
        self,
        kind: str,
        models: dict[str, Path],
        *,
        token: str | None = None,
        echo_token: bool = False,
        max_batch: int | None = None,
        limit_status: int = 422,
        info: bool = True,
        max_client_batch_size: int = 32,
        payload_limit: int = TEI_PAYLOAD_LIMIT,
        shape: str = "auto",
        results_key: str = "results",
        document_style: str = "object",
        echo_documents: bool = False,
        usage: str | None = None,
    ) -> None:
        self.kind = kind
        self.models = models
        self.token = token
        self.echo_token = echo_token
        self.max_batch = max_batch
        self.limit_status = limit_status
        self.info = info
        self.max_client_batch_size = max_client_batch_size
        self.payload_limit = payload_limit
        self.shape = shape
        self.results_key = results_key
        self.document_style = document_style
        self.echo_documents = echo_documents
        self.usage = usage
        self.always: Fault | None = None
        self.requests: list[Recorded] = []
        self.max_in_flight = 0
        self._faults: list[Fault] = []
        self._in_flight = 0
        self._lock = threading.Lock()
        self.closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def fail(self, *faults: Fault) -> None:
        """Answer the next scoring requests with ``faults``, in order."""
        with self._lock:
            self._faults.extend(faults)

    def scoring(self) -> list[Recorded]:
        """The scoring requests received (everything but ``GET``)."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    def paths(self) -> list[str]:
        with self._lock:
            return [f"{r.method} {r.path}" for r in self.requests]

    def close(self) -> None:
        self.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    # Called from handler threads ---------------------------------------------------------

    def _record(self, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else self.always


class Servers:
    """Starts loopback servers and closes them all on exit."""

    def __init__(self) -> None:
        self._started: list[LoopbackServer] = []

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._started:
            server.close()

    def start(self, kind: str, models: dict[str, Path], **options: Any) -> LoopbackServer:
        for folder in models.values():
            scorer(folder)  # load before serving, so no request waits on a model load
        server = LoopbackServer(kind, models, **options)
        self._started.append(server)
        return server

    def tei(self, folder: Path, **options: Any) -> LoopbackServer:
        return self.start("tei", {"*": folder}, **options)

    def hf(self, models: dict[str, Path], **options: Any) -> LoopbackServer:
        return self.start("hf", models, **options)

    def cohere(self, folder: Path, **options: Any) -> LoopbackServer:
        return self.start("cohere", {"*": folder}, **options)


class _Sent(Exception):
    """Raised by a fault that wrote its own answer."""


class _Reply(Exception):
    """Raised by a route to answer with ``status`` and ``body`` (JSON unless a str)."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is observable
    server_version = "loopback"

    @property
    def owner(self) -> LoopbackServer:
        return self.server.owner  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (BaseHTTPRequestHandler's name)
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._serve(b"")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("content-length") or 0)
        self._serve(self.rfile.read(length))

    def _serve(self, raw: bytes) -> None:
        owner = self.owner
        path = self.path.split("?")[0]
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {name.lower(): value for name, value in self.headers.items()}
        owner._record(Recorded(self.command, path, headers, body, len(raw), self.client_address[1]))
        try:
            try:
                self._route(path, raw, body, headers)
            except _Reply as reply:
                self._send(reply.status, reply.body, reply.headers)
            except _Sent:
                pass
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)
        finally:
            owner._done()

    def _route(self, path: str, raw: bytes, body: Any, headers: dict[str, str]) -> None:
        owner = self.owner
        self._check_token(headers)
        if self.command == "GET":
            if owner.kind == "tei" and path == "/info" and owner.info:
                raise _Reply(200, _tei_info(owner))
            raise _Reply(404, {"error": f"no route {path}", "error_type": "NotFound"})
        if owner.kind == "tei" and len(raw) > owner.payload_limit:
            raise _Reply(413, "Failed to buffer the request body: length limit exceeded")
        fault = owner._next_fault()
        if fault is not None:
            self._apply(fault)
        if not isinstance(body, dict):
            raise _Reply(422, {"error": "Failed to deserialize the JSON body", "error_type": "Validation"})
        if owner.kind == "tei" and path == "/rerank":
            raise _Reply(200, _tei_rerank(owner, body))
        if owner.kind == "hf" and path.startswith("/models/"):
            raise _Reply(200, _hf_classify(owner, path[len("/models/") :], body))
        if owner.kind == "cohere" and path in ("/rerank", "/v1/rerank", "/v2/rerank"):
            raise _Reply(200, _cohere_rerank(owner, body))
        raise _Reply(404, {"error": f"no route {path}"})

    def _check_token(self, headers: dict[str, str]) -> None:
        owner = self.owner
        sent = headers.get("authorization", "")
        if owner.token is not None and sent != f"Bearer {owner.token}":
            message = f"Invalid credentials in Authorization header: {sent!r}" if owner.echo_token else ""
            raise _Reply(401, {"error": message or "Invalid credentials in Authorization header"})

    def _apply(self, fault: Fault) -> None:
        if fault.delay and self.owner.closing.wait(fault.delay):
            raise _Reply(503, {"error": "shutting down"})
        if fault.trickle:
            self._trickle(fault)
            raise _Sent
        if fault.malformed:
            raise _Reply(200, '{"results": [{"index": 0, "relevance_score": ', {"content-type": "application/json"})
        if fault.status is not None:
            raise _Reply(fault.status, fault.body if fault.body is not None else {"error": "injected"}, fault.headers)

    def _trickle(self, fault: Fault) -> None:
        self.close_connection = True
        body = json.dumps(fault.body).encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        if not fault.trickle_headers:
            self.wfile.write(head)
            head = b""
        for byte in head + body:
            if self.owner.closing.wait(fault.trickle):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()

    def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
        if isinstance(body, (str, bytes)):
            data = body.encode() if isinstance(body, str) else body
            content_type = headers.pop("content-type", "text/plain")
        else:
            data = json.dumps(body).encode()
            content_type = "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


# The formats ---------------------------------------------------------------------------------


def _tei_info(owner: LoopbackServer) -> dict[str, Any]:
    return {
        "model_id": "loopback/reranker",
        "model_type": {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}},
        "max_input_length": 512,
        "max_client_batch_size": owner.max_client_batch_size,
        "auto_truncate": True,
        "version": "1.9.3",
    }


def _tei_rerank(owner: LoopbackServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    query, texts = body.get("query"), body.get("texts")
    if not isinstance(query, str) or not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise _Reply(422, {"error": "Failed to deserialize the JSON body: query, texts", "error_type": "Validation"})
    if not texts:
        raise _Reply(400, {"error": "`texts` cannot be empty", "error_type": "Empty"})
    if owner.max_batch is not None and len(texts) > owner.max_batch:
        message = f"batch size {len(texts)} > maximum allowed batch size {owner.max_batch}"
        raise _Reply(owner.limit_status, {"error": message, "error_type": "Validation"})
    model = scorer(owner.models["*"])
    if body.get("truncate") is False:
        longest = max(len(model.encoder.tokenizer(query, t)["input_ids"]) for t in texts)
        if longest > 512:
            message = f"Input validation error: `inputs` must have less than 512 tokens. Given: {longest}"
            raise _Reply(owner.limit_status, {"error": message, "error_type": "Validation"})
    rows = model.rows([(query, t) for t in texts])
    scores = [row[0] if body.get("raw_scores") else sigmoid(row[0]) for row in rows]
    ranked = sorted(range(len(texts)), key=lambda i: -scores[i])
    out = []
    for index in ranked:
        item: dict[str, Any] = {"index": index, "score": scores[index]}
        if body.get("return_text"):
            item["text"] = texts[index]
        out.append(item)
    return out


def _hf_classify(owner: LoopbackServer, hub_id: str, body: dict[str, Any]) -> list[Any]:
    if hub_id not in owner.models:
        raise _Reply(404, {"error": f"Model {hub_id} does not exist"})
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(i, dict) and "text" in i for i in inputs):
        raise _Reply(400, {"error": "inputs must be a list of {text, text_pair}"})
    parameters = body.get("parameters") or {}
    model = scorer(owner.models[hub_id])
    rows = model.rows([(i["text"], i.get("text_pair", "")) for i in inputs])
    per_input = [_hf_labels(model.labels, row, parameters) for row in rows]
    legacy = "top_k" not in parameters  # transformers: no top_k -> only the best label, not in a list
    if owner.shape == "nested" or (owner.shape == "auto" and not legacy):
        return per_input
    if all(len(labels) == 1 for labels in per_input):
        return [labels[0] for labels in per_input]
    if len(per_input) == 1:
        return per_input[0]
    return per_input


def _hf_labels(labels: list[str], row: list[float], parameters: dict[str, Any]) -> list[dict[str, Any]]:
    function = parameters.get("function_to_apply") or ("sigmoid" if len(row) == 1 else "softmax")
    if function == "sigmoid":
        values = [sigmoid(v) for v in row]
    elif function == "softmax":
        values = softmax(row)
    elif function == "none":
        values = row
    else:
        raise _Reply(400, {"error": f"function_to_apply {function!r} is not one of sigmoid, softmax, none"})
    ranked = sorted(
        ({"label": label, "score": value} for label, value in zip(labels, values, strict=True)),
        key=lambda item: -item["score"],
    )
    top_k = parameters.get("top_k", 1)
    return ranked if top_k is None else ranked[:top_k]


def _cohere_rerank(owner: LoopbackServer, body: dict[str, Any]) -> dict[str, Any]:
    query, documents = body.get("query"), body.get("documents")
    if not isinstance(query, str) or not query.strip():
        raise _Reply(400, {"id": str(uuid.uuid4()), "message": "invalid request: query must not be empty"})
    if not isinstance(documents, list) or not documents:
        raise _Reply(400, {"id": str(uuid.uuid4()), "message": "invalid request: list of documents must not be empty"})
    texts = [d if isinstance(d, str) else d.get("text", "") for d in documents]
    pairs = [(query, t) for t in texts]
    scores = scorer(owner.models["*"]).relevance(pairs)
    ranked = sorted(range(len(texts)), key=lambda i: -scores[i])
    limit = body.get("top_n") or body.get("top_k")
    results = []
    for index in ranked[:limit] if limit else ranked:
        item: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
        if body.get("return_documents") or owner.echo_documents:
            item["document"] = texts[index] if owner.document_style == "string" else {"text": texts[index]}
        results.append(item)
    if owner.results_key == "data":  # Voyage's shape reports its usage
        tokens = scorer(owner.models["*"]).tokens(pairs)
        return {"object": "list", "data": results, "model": body.get("model"), "usage": {"total_tokens": tokens}}
    answer = {"id": str(uuid.uuid4()), "results": results, "meta": {"api_version": {"version": "2"}}}
    if owner.usage == "cohere":
        answer["meta"]["tokens"] = {"input_tokens": scorer(owner.models["*"]).tokens(pairs), "output_tokens": 0}
    elif owner.usage == "vllm":
        answer["usage"] = {"total_tokens": scorer(owner.models["*"]).tokens(pairs)}
    return answer
