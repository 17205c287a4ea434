"""The ``dheera-local`` command line.

Subcommands: ``rerank``, ``models``, ``pull``, ``cache stats|clear``, ``serve`` (and the seed
docs' form ``dheera-local --config config.yaml``), ``score``. Errors become one line on stderr
and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from ._errors import DheeraError, InvalidRequestError
from ._options import add_engine_options, engine_options
from ._secrets import install as install_masking
from ._settings import CliSettings, engine_options_from_env

EXIT_ERROR = 1
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if _is_seed_serve_form(argv):
        argv = ["serve", *argv]  # the seed docs' `dheera_ai --config config.yaml`
    try:
        # Flags > environment > defaults: the environment's values become the parser's defaults.
        env, env_options = CliSettings.from_env(), engine_options_from_env()
    except DheeraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    parser = build_parser(env, env_options)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the command's parser, so the hint names the command's --help
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        _configure_logging(args.verbose, args.log_format)
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.handler(args)
    except DheeraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _close_runtime()


def _close_runtime() -> None:
    """The CLI owns its process: close what it shares (caches, models), if a command opened any."""
    runtime = sys.modules.get("dheera_local._engine.runtime")
    if runtime is not None:
        runtime.close_all()


def _is_seed_serve_form(argv: list[str]) -> bool:
    """The seed docs' `dheera_ai --config config.yaml [--port P]`: options only, one of them --config."""
    has_config = any(a == "--config" or a.startswith("--config=") for a in argv)
    values_only = all(a.startswith("-") or (i > 0 and argv[i - 1].startswith("--")) for i, a in enumerate(argv))
    return has_config and values_only


def _configure_logging(verbose: int, log_format: str = "text") -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(log_format))
    install_masking(handler)  # every logger's records, httpx's and uvicorn's too: secrets masked, one line each
    logging.basicConfig(level=level, handlers=[handler])


def _formatter(log_format: str) -> logging.Formatter:
    if log_format != "json":
        return logging.Formatter("%(levelname)s %(name)s: %(message)s")
    try:
        from pythonjsonlogger.json import JsonFormatter
    except ImportError as exc:
        raise ImportError("--log-format json needs python-json-logger: pip install 'dheera_local[server]'") from exc
    # One JSON object per line: time, level, logger, message (already masked by dheera_local's loggers).
    return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level"})


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line: ``error: ...`` and where to read more, exit status 2
    (argparse prints the whole usage first: 14 lines for ``rerank``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser(env: CliSettings | None = None, env_options: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """The parser; ``env`` and ``env_options`` (the environment's, see :mod:`._settings`) are its defaults."""
    env = env if env is not None else CliSettings()
    parser = Parser(
        prog="dheera-local",
        description="Local-first reranking with remote fallback.",
        epilog="Every option of `serve` and --log-format can also come from its environment variable "
        "(DHEERA_CONFIG, DHEERA_HOST, DHEERA_PORT, DHEERA_ALLOW_UNAUTHENTICATED, DHEERA_LOG_FORMAT), and every "
        "engine option from DHEERA_<OPTION> (DHEERA_DEVICE, DHEERA_DTYPE, DHEERA_MAX_LENGTH, ...); a flag wins.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    parser.add_argument("--version", action="version", version=f"dheera-local {__version__}")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default=env.log_format,
        help="log lines on stderr as text or as one JSON object each (env DHEERA_LOG_FORMAT)",
    )  # fmt: skip
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_rerank(commands)
    _add_models(commands)
    _add_pull(commands)
    _add_cache(commands)
    _add_serve(commands, env)
    _add_score(commands)
    for command in commands.choices.values():
        _default_from_env(command, env_options or {})
    return parser


def _default_from_env(parser: argparse.ArgumentParser, env_options: dict[str, Any]) -> None:
    """The environment's engine options as the defaults of the flags ``parser`` has for them."""
    dests = {action.dest for action in parser._actions}
    parser.set_defaults(**{name: value for name, value in env_options.items() if name in dests})


def _command(
    commands: Any, name: str, handler: Callable[[argparse.Namespace], int], help_: str
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_, description=help_)
    parser.set_defaults(handler=handler, command_parser=parser)
    # SUPPRESS: without -v here, the -v given before the command stands.
    parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _add_rerank(commands: Any) -> None:
    parser = _command(commands, "rerank", _cmd_rerank, "Rerank documents for a query; prints the JSON response.")
    parser.add_argument("--model", required=True, help="huggingface/ORG/NAME, ORG/NAME or a model folder")
    parser.add_argument("--query", required=True)
    parser.add_argument("documents", nargs="*", metavar="DOC", help="documents (else --documents-file or stdin)")
    parser.add_argument("--documents-file", help="one document per line, or JSONL (strings or objects)")
    parser.add_argument("--top-n", type=int)
    parser.add_argument("--return-documents", action="store_true")
    parser.add_argument("--rank-fields", help="comma-separated fields of object documents to score")
    parser.add_argument("--max-chunks-per-doc", type=int, help="score long documents as up to N windows")
    parser.add_argument("--max-tokens-per-doc", type=int, help="score up to N tokens of each document")
    add_engine_options(parser)


def _add_models(commands: Any) -> None:
    parser = _command(
        commands, "models", _cmd_models, "List the models in models.txt and whether their weights are here."
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_pull(commands: Any) -> None:
    parser = _command(commands, "pull", _cmd_pull, "Download weights into the HuggingFace cache for offline use.")
    parser.add_argument("models", nargs="+", metavar="MODEL")
    parser.add_argument("--revision", help="branch, tag or commit (default: main)")
    parser.add_argument("--if-missing", action="store_true", help="skip models whose weights are already here")


def _add_cache(commands: Any) -> None:
    parser = _command(commands, "cache", _cmd_cache, "Show or clear the score cache.")
    parser.add_argument("action", choices=("stats", "clear"))
    parser.add_argument("--cache-dir", help="score cache folder")


def _add_serve(commands: Any, env: CliSettings) -> None:
    # Each flag also comes from an environment variable, as TEI's and infinity's do (containers set env).
    parser = _command(commands, "serve", _cmd_serve, "Run the rerank proxy server (needs dheera_local[server]).")
    parser.add_argument("--config", required=env.config is None, default=env.config,
                        help="config.yaml (env DHEERA_CONFIG)")  # fmt: skip
    parser.add_argument("--host", default=env.host, help="bind address (env DHEERA_HOST; 127.0.0.1 "
                        "without a master key)")  # fmt: skip
    parser.add_argument("--port", type=int, default=env.port, help="env DHEERA_PORT")
    parser.add_argument(
        "--allow-unauthenticated", action="store_true", default=env.allow_unauthenticated,
        help="allow a non-loopback host without a master key (env DHEERA_ALLOW_UNAUTHENTICATED=1)",
    )  # fmt: skip
    limits = parser.add_argument_group("connection limits (override config.yaml's general_settings)")
    limits.add_argument("--header-timeout", type=_positive(float), metavar="S",
                        help="seconds to send a request head, else 408 and closed (default 10)")  # fmt: skip
    limits.add_argument("--body-timeout", type=_positive(float), metavar="S",
                        help="seconds to send a request body once its head is in (default 60)")  # fmt: skip
    limits.add_argument("--keep-alive-timeout", type=_positive(float), metavar="S",
                        help="seconds an idle connection stays open (default 5)")  # fmt: skip
    limits.add_argument(
        "--max-connections",
        type=_positive(int),
        metavar="N",
        help="open connections; beyond: 503 (default: half the open-file limit, at most 1024)",
    )


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value

    return parse


def _add_score(commands: Any) -> None:
    from .score.cli import add_score_arguments, run_score

    parser = _command(commands, "score", run_score, "Score (query, document) pairs from a JSONL, CSV or Parquet file.")
    add_score_arguments(parser)


def _cmd_rerank(args: argparse.Namespace) -> int:
    from ._engine.runtime import default_reranker

    documents = _read_documents(args)
    rank_fields = [f.strip() for f in args.rank_fields.split(",") if f.strip()] if args.rank_fields else None
    options = engine_options(args)  # checked here, once
    response = default_reranker().rerank(
        args.model, args.query, documents, top_n=args.top_n, return_documents=args.return_documents,
        rank_fields=rank_fields, max_chunks_per_doc=args.max_chunks_per_doc,
        max_tokens_per_doc=args.max_tokens_per_doc, options=options,
    )  # fmt: skip
    print(response.model_dump_json(indent=2))
    return 0


def _read_documents(args: argparse.Namespace) -> list[Any]:
    if args.documents:
        return list(args.documents)
    # Bytes that are not UTF-8 are kept as lone surrogates, so validation names the document they are in.
    if args.documents_file:
        path = Path(args.documents_file)
        try:
            text = path.read_bytes().decode("utf-8", "surrogateescape")
        except OSError as exc:
            raise InvalidRequestError(
                f"cannot read --documents-file {path}: {exc.strerror}", field="documents_file"
            ) from exc
        return parse_documents(text, jsonl=path.suffix in (".jsonl", ".ndjson") or None)
    if not sys.stdin.isatty():
        return parse_documents(sys.stdin.buffer.read().decode("utf-8", "surrogateescape"))
    raise InvalidRequestError(
        "no documents: pass DOC arguments, --documents-file, or pipe them on stdin", field="documents"
    )


def parse_documents(text: str, jsonl: bool | None = None) -> list[Any]:
    """Documents from text: one per line, or JSONL (a JSON string or object per line).

    ``jsonl=None`` detects JSONL: every non-empty line is a JSON string or object.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = [_json_document(line) for line in lines] if jsonl is not False else []
    if jsonl is None:
        jsonl = bool(lines) and all(doc is not None for doc in parsed)
    if not jsonl:
        return lines
    for number, doc in enumerate(parsed, start=1):
        if doc is None:
            raise InvalidRequestError(
                f"line {number} is not a JSON string or object", field="documents", index=number - 1
            )
    return parsed


def _json_document(line: str) -> Any:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, (str, dict)) else None


def _cmd_models(args: argparse.Namespace) -> int:
    rows = _model_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(row["model"]) for row in rows)
    print(f"{'MODEL':<{width}}  {'KIND':<13} {'MAX_LEN':>7} {'PARAMS':>6}  {'LICENSE':<10} {'SIZE':>8}  LOCAL WEIGHTS")
    for row in rows:
        shown = {name: row[name] or "-" for name in ("kind", "max_length", "params", "license")}
        where = f"{row['path']} ({row['revision'][:12]})" if row["path"] else _how_to_get(row)
        size = f"{row['size_bytes'] / 1e6:.0f} MB" if row["size_bytes"] else "-"
        columns = f"{shown['kind']:<13} {shown['max_length']:>7} {shown['params']:>6}  {shown['license']:<10}"
        print(f"{row['model']:<{width}}  {columns} {size:>8}  {where}")
    return 0


def _how_to_get(row: dict[str, Any]) -> str:
    from ._models.catalog import LLM_LAYERWISE

    if row["kind"] == LLM_LAYERWISE:  # pull refuses it: suggesting it would send the user into an error
        return f"no (not supported: {row['kind']}, see `dheera-local pull {row['model']}`)"
    return f"no (dheera-local pull {row['model']})"


def _model_rows() -> list[dict[str, Any]]:
    """models.txt's models (local or not), then every other cross-encoder found in the HF cache."""
    from ._errors import DheeraError
    from ._models.catalog import check_cross_encoder, known_models, lookup
    from ._models.discovery import cached_models
    from ._models.llm_templates import template_for_folder, template_for_name
    from ._settings import Settings

    cached = {model.hub_id.lower(): model for model in cached_models(Settings.from_env().hub_cache)}
    rows = []
    for known in known_models().values():
        local = cached.get(known.hub_id.lower())
        rows.append({
            "model": known.hub_id, "kind": known.kind, "max_length": known.max_length, "params": known.params,
            "languages": known.languages, "license": known.license, "source": "models.txt", "local": local is not None,
            "path": str(local.path) if local else None, "revision": local.revision if local else None,
            "size_bytes": local.size_bytes if local else None,
        })  # fmt: skip
    for model in cached.values():
        if lookup(model.hub_id) is not None:
            continue
        try:
            check_cross_encoder(model.hub_id, model.path)
        except DheeraError:
            continue  # an embedding model or an LLM in the same cache: not ours to list
        llm = template_for_folder(model.path) is not None
        if llm and template_for_name(model.hub_id) is None:
            continue  # a chat LLM of a reranker's architecture (Qwen/Qwen3-0.6B): not a reranker to list
        rows.append({
            "model": model.hub_id, "kind": "llm-reranker" if llm else "cross-encoder", "max_length": None,
            "params": None, "languages": None,
            "license": None, "source": "hf-cache", "local": True, "path": str(model.path),
            "revision": model.revision, "size_bytes": model.size_bytes,
        })  # fmt: skip
    return rows


def _cmd_pull(args: argparse.Namespace) -> int:
    from ._models.discovery import find_local_weights
    from ._models.model_ref import parse_model
    from ._models.pull import pull
    from ._settings import Settings

    settings = Settings.from_env()
    status = 0
    for model in args.models:
        try:
            weights = find_local_weights(parse_model(model), settings.hub_cache) if args.if_missing else None
            weights = weights or pull(model, settings, revision=args.revision)
        except DheeraError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = EXIT_ERROR
            continue
        print(f"{weights.model_id}: revision {weights.revision} at {weights.path}")
    return status


def _cmd_cache(args: argparse.Namespace) -> int:
    from ._cache.store import SHARED_CACHES
    from ._settings import Settings

    settings = Settings.from_env()
    folder = Path(args.cache_dir) if args.cache_dir else settings.cache_dir
    cache = SHARED_CACHES.open(folder, settings.cache_size_limit)
    if cache is None:
        print("error: the score cache cannot be opened (see the warning above)", file=sys.stderr)
        return EXIT_ERROR
    if args.action == "clear":
        removed = cache.clear()
        print(f"removed {removed} cached scores from {cache.directory}")
    else:
        print(json.dumps(cache.stats(), indent=2))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server.run import serve
    except ImportError as exc:
        if exc.name not in ("fastapi", "uvicorn", "yaml", "starlette"):
            raise  # a broken install, not a missing extra
        print(
            f"error: the server needs its extra: pip install 'dheera_local[server]' ({exc.name} is missing)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    limits = {name: getattr(args, name) for name in ("header_timeout", "body_timeout", "keep_alive_timeout",
                                                      "max_connections")}  # fmt: skip
    return serve(
        args.config, host=args.host, port=args.port, allow_unauthenticated=args.allow_unauthenticated, limits=limits
    )


if __name__ == "__main__":
    sys.exit(main())
