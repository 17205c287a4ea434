"""Identical requests in flight on one replica share one computation; each caller gets its own answer,
and the work stops only when every caller has gone."""

from __future__ import annotations

import asyncio

import pytest

from dheera_local._engine.request import build_request
from dheera_local._response import RerankMeta, RerankResponse, RerankResult
from dheera_local.server.coalescing import Coalescer, request_key


def answer() -> RerankResponse:
    results = [RerankResult(index=0, relevance_score=0.5)]
    return RerankResponse(results=results, id="leader", meta=RerankMeta())


def test_identical_calls_share_one_computation_with_their_own_ids() -> None:
    calls = []

    async def compute() -> RerankResponse:
        calls.append(1)
        await asyncio.sleep(0.05)
        return answer()

    async def main() -> list[RerankResponse]:
        coalescer = Coalescer()
        return await asyncio.gather(*(coalescer.run("k", compute) for _ in range(5)))

    responses = asyncio.run(main())
    assert len(calls) == 1
    assert len({response.id for response in responses}) == 5
    assert all(response.results == responses[0].results for response in responses)


def test_the_work_goes_on_for_the_others_and_stops_when_all_are_gone() -> None:
    finished: list[str] = []

    async def main() -> None:
        coalescer = Coalescer()
        gate = asyncio.Event()

        async def compute() -> RerankResponse:
            try:
                await gate.wait()
                return answer()
            finally:
                finished.append("cancelled" if not gate.is_set() else "done")

        first = asyncio.ensure_future(coalescer.run("k", compute))
        second = asyncio.ensure_future(coalescer.run("k", compute))
        await asyncio.sleep(0.01)
        first.cancel()
        await asyncio.sleep(0.01)
        assert not finished  # the second still waits: the work goes on
        second.cancel()
        await asyncio.sleep(0.01)
        assert finished == ["cancelled"]

    asyncio.run(main())


def test_a_failure_reaches_every_caller() -> None:
    async def compute() -> RerankResponse:
        await asyncio.sleep(0.01)
        raise RuntimeError("upstream exploded")

    async def main() -> list[object]:
        coalescer = Coalescer()
        return await asyncio.gather(*(coalescer.run("k", compute) for _ in range(3)), return_exceptions=True)

    assert [str(error) for error in asyncio.run(main())] == ["upstream exploded"] * 3


@pytest.mark.parametrize("change", [{"top_n": 1}, {"return_documents": True}, {"raw_scores": True}, {"query": "other"}])
def test_requests_that_answer_differently_have_different_keys(change: dict[str, object]) -> None:
    base = {"model": "org/name", "query": "q", "documents": ["a", "b"]}
    assert request_key("m", build_request(**base)) != request_key("m", build_request(**{**base, **change}))
    assert request_key("m", build_request(**base)) != request_key("other", build_request(**base))
