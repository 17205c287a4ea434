"""The engine options are one typed, immutable object, checked once at the edge; the rules that read it
(the score of a logit, the resume key, the endpoint's base, the window length) each live in one function."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import SecretStr, ValidationError

from conftest import TINY_BERT_ID
from dheera_local import InvalidRequestError, Reranker
from dheera_local._cache.store import KeyMaker
from dheera_local._engine.orchestrator import relevance_score, sigmoid
from dheera_local._engine.plan import DEFAULT_MAX_LENGTH
from dheera_local._models.identity import ModelIdentity
from dheera_local._options import (
    DEFAULT_OPTIONS,
    OPTION_NAMES,
    OptionSpec,
    RerankOptions,
    build_options,
    check_optional_int,
    merge_options,
    numerics_fields,
    option_specs,
)
from dheera_local.score.job import ScoreJob
from dheera_local.score.resume import job_key

PACKAGE = Path(__file__).resolve().parent.parent / "dheera_local"
IDENTITY = ModelIdentity("org/model", "abc123", 512)
# A value other than the default for every option that changes the scores; a new such option must be added
# here (the first test says so), and then its value changes the resume key.
NUMERICS_SAMPLES: dict[str, Any] = {
    "backend": "local", "api_base": "http://127.0.0.1:9", "api_format": "cohere", "dtype": "float16",
    "max_length": 128, "raw_scores": True, "instruction": "find cities", "prompt": "Is it relevant?",
}  # fmt: skip
OTHER_SAMPLES: dict[str, Any] = {
    "api_key": "sk-test-0123456789", "cache": False, "cache_dir": "/tmp/elsewhere", "device": "cpu",
    "timeout": 5.0, "batch_tokens": 4096,
}  # fmt: skip


def _job(tmp_path: Path, options: RerankOptions) -> ScoreJob:
    source = tmp_path / "pairs.jsonl"
    if not source.exists():
        source.write_text('{"query": "q", "document": "d"}\n', encoding="utf-8")
    return ScoreJob(model="org/model", input=source, output=tmp_path / "out.jsonl", options=options)


# The object ------------------------------------------------------------------------------------------------


def test_the_options_are_immutable_and_typed() -> None:
    options = build_options(api_key="sk-test-0123456789", cache_dir="~/scores", timeout="2.5")
    with pytest.raises(ValidationError):
        options.dtype = "float16"  # type: ignore[misc]
    assert isinstance(options.api_key, SecretStr) and "sk-test" not in repr(options)
    assert isinstance(options.cache_dir, Path) and not str(options.cache_dir).startswith("~")
    assert options.timeout == 2.5
    assert build_options() is DEFAULT_OPTIONS == RerankOptions()


@pytest.mark.parametrize(
    ("values", "field"),
    [({"dtype": "flaot16"}, "dtype"), ({"device": "cpux"}, "device"), ({"backend": "remot"}, "backend"),
     ({"api_format": "jina?"}, "api_format"), ({"max_length": 4}, "max_length"), ({"colour": 1}, "colour")],
)  # fmt: skip
def test_making_one_refuses_a_bad_value_naming_the_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        RerankOptions(**values)
    assert caught.value.field == field


def test_replace_checks_what_it_changes_and_keeps_the_rest() -> None:
    options = build_options(dtype="float32", api_key="sk-test-0123456789")
    changed = options.replace(raw_scores=True, instruction="find cities")
    assert (changed.raw_scores, changed.instruction, changed.dtype) == (True, "find cities", "float32")
    assert changed.api_key == options.api_key and options.raw_scores is False  # the original is untouched
    assert options.replace() is options
    with pytest.raises(InvalidRequestError) as caught:
        options.replace(device="gpu0")
    assert caught.value.field == "device"


def test_merge_takes_an_object_made_at_the_edge_as_is() -> None:
    options = build_options(dtype="float32")
    assert merge_options(options, {}) is options  # no second check below the edge
    assert merge_options(options, {"max_length": 64}).max_length == 64
    assert merge_options(None, {"dtype": "float32"}) == options
    with pytest.raises(InvalidRequestError) as caught:
        merge_options({"dtype": "float32"}, {})  # type: ignore[arg-type]
    assert caught.value.field == "options"


def test_every_option_is_enumerable_with_its_spec() -> None:
    specs = option_specs()
    assert tuple(specs) == OPTION_NAMES == tuple(RerankOptions.model_fields)
    assert all(isinstance(spec, OptionSpec) and spec.help for spec in specs.values())


def test_a_score_job_takes_keyword_options_and_checks_them_when_made(tmp_path: Path) -> None:
    job = ScoreJob(model="org/model", input=tmp_path / "in.jsonl", output=tmp_path / "out.jsonl",
                   options={"dtype": "float32", "device": "cpu"})  # type: ignore[arg-type]  # fmt: skip
    assert job.options == build_options(dtype="float32", device="cpu")
    with pytest.raises(InvalidRequestError) as caught:
        ScoreJob(model="org/model", input=tmp_path / "in.jsonl", output=tmp_path / "out.jsonl",
                 options={"dtype": "flaot16"})  # type: ignore[arg-type]  # fmt: skip
    assert caught.value.field == "dtype"


# The resume key --------------------------------------------------------------------------------------------


def test_every_option_is_sampled_here() -> None:
    assert set(NUMERICS_SAMPLES) == {name for name, spec in option_specs().items() if spec.numerics}
    assert set(OTHER_SAMPLES) == {name for name, spec in option_specs().items() if not spec.numerics}


@pytest.mark.parametrize("name", sorted(NUMERICS_SAMPLES))
def test_an_option_that_changes_the_scores_changes_the_resume_key(tmp_path: Path, name: str) -> None:
    default = job_key(_job(tmp_path, DEFAULT_OPTIONS), IDENTITY)
    assert job_key(_job(tmp_path, build_options(**{name: NUMERICS_SAMPLES[name]})), IDENTITY) != default


@pytest.mark.parametrize("name", sorted(OTHER_SAMPLES))
def test_an_option_that_does_not_leaves_the_resume_key(tmp_path: Path, name: str) -> None:
    default = job_key(_job(tmp_path, DEFAULT_OPTIONS), IDENTITY)
    assert job_key(_job(tmp_path, build_options(**{name: OTHER_SAMPLES[name]})), IDENTITY) == default


class _WithNewOptions(RerankOptions):
    """The options as a future version might have them: one option that changes scores, one that does not."""

    temperature: Annotated[int | None, OptionSpec(check_optional_int, "a new numerics option")] = None
    threads: Annotated[int | None, OptionSpec(check_optional_int, "a new speed option", numerics=False)] = None


def test_a_new_option_changes_the_resume_key_unless_marked_as_not_numerics(tmp_path: Path) -> None:
    default = job_key(_job(tmp_path, _WithNewOptions()), IDENTITY)
    assert default == job_key(_job(tmp_path, DEFAULT_OPTIONS), IDENTITY)  # at its default: the key as before
    assert job_key(_job(tmp_path, _WithNewOptions(temperature=3)), IDENTITY) != default
    assert job_key(_job(tmp_path, _WithNewOptions(threads=3)), IDENTITY) == default
    assert numerics_fields(_WithNewOptions(temperature=3))["temperature"] == 3


def test_the_resume_key_of_an_existing_run_is_unchanged(tmp_path: Path) -> None:
    """A run interrupted under the version that keyed backend, api_base and dtype by hand resumes."""
    options = build_options(dtype="float32", device="cpu", batch_tokens=2048)
    job = _job(tmp_path, options)
    stat = job.input.stat()
    before = {  # score/resume.py's key as it was written before the options were an object
        "version": 1,
        "input": [str(job.input.resolve()), stat.st_size, stat.st_mtime_ns],
        "output": str(job.output.resolve()),
        "errors": str(job.errors_path.resolve()),
        "model": [IDENTITY.model_id, IDENTITY.revision, IDENTITY.max_length],
        "fields": ["query", "document", "id"],
        "rerank": False,
        "engine": ["auto", None, "float32"],
    }
    assert job_key(job, IDENTITY) == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()


# One function per rule -------------------------------------------------------------------------------------


def test_a_logit_becomes_a_score_in_one_function() -> None:
    assert relevance_score(2.0) == sigmoid(2.0) and relevance_score(2.0, build_options(raw_scores=True)) == 2.0
    assert relevance_score(float("nan")) != relevance_score(float("nan"))  # a bad row's NaN stays NaN
    callers = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] == "testing":
            continue  # the loopback servers play the remote servers, which apply their own sigmoid
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "sigmoid":
                callers.append(path.relative_to(PACKAGE).as_posix())
    assert callers == ["_engine/orchestrator.py"], callers  # relevance_score's own call


def test_pair_scores_report_scores_as_rerank_does_with_the_same_options(hub_cache: Path) -> None:
    pairs = [("capital city", "washington is the capital"), ("capital city", "a river")]
    with Reranker() as reranker:
        plain = reranker.score_pairs(TINY_BERT_ID, pairs, device="cpu", dtype="float32", cache=False)
        raw = reranker.score_pairs(TINY_BERT_ID, pairs, device="cpu", dtype="float32", cache=False, raw_scores=True)
        ranked = reranker.rerank(TINY_BERT_ID, pairs[0][0], [d for _, d in pairs], raw_scores=True, cache=False,
                                 device="cpu", dtype="float32")  # fmt: skip
    assert plain.scores == [sigmoid(logit) for logit in plain.logits]
    assert raw.scores == raw.logits == plain.logits
    assert sorted(raw.scores, reverse=True) == [result.relevance_score for result in ranked.results]


def test_an_endpoint_is_keyed_by_its_base_with_or_without_a_slash(isolated_env: Path) -> None:
    reranker = Reranker()
    slash = reranker.plan("my-reranker", api_base="http://127.0.0.1:9/")
    bare = reranker.plan("my-reranker", api_base="http://127.0.0.1:9")
    assert slash.identity == bare.identity
    assert slash.identity.model_id == "http://127.0.0.1:9#my-reranker"
    assert slash.cache_identity(0) == bare.cache_identity(0)
    assert slash.max_length == DEFAULT_MAX_LENGTH and slash.identity.max_length == 0  # the key keeps its 0
    # The key of an entry written before: the identity's fields, hashed as KeyMaker always has.
    key = KeyMaker(slash.cache_identity(0))("q", "d")
    assert key == KeyMaker(ModelIdentity(
        "http://127.0.0.1:9#my-reranker", "remote", 0, numerics="cohere:http://127.0.0.1:9/rerank#my-reranker"
    ))("q", "d")  # fmt: skip


def test_requests_coalesce_only_with_the_same_numerics() -> None:
    from dheera_local._engine.request import build_request
    from dheera_local.server.coalescing import request_key

    options = build_options(api_key="sk-test-0123456789", dtype="float32")
    keys = {
        request_key("m", build_request("org/model", "q", ["d"], options=options.replace(**changes)))
        for changes in ({}, {"raw_scores": True}, {"instruction": "find cities"}, {"prompt": "Relevant?"})
    }
    assert len(keys) == 4  # a body's instruction or prompt is its own computation, as raw_scores was
    same = build_request("org/model", "q", ["d"], options=options.replace(api_key="sk-other-0123456789", cache=False))
    assert request_key("m", same) == request_key("m", build_request("org/model", "q", ["d"], options=options))


def test_a_local_cache_key_is_pinned() -> None:
    """Cache entries written by earlier versions stay valid: the key of a fixed identity and pair never moves."""
    identity = ModelIdentity("org/model", "abc123", 512, numerics="float32")
    assert KeyMaker(identity)("a query", "a document") == PINNED_KEY


PINNED_KEY = "ec457ce2fbb2b72dd26e04e78424098603f0bb0b3d9de195e9323abae0e165f6"  # computed by main at 10e729f
