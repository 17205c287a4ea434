"""The one interface every backend implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Backend(Protocol):
    """Scores pairs. ``name`` is what the response reports as the serving backend."""

    name: str

    def score(self, query: str, texts: list[str]) -> list[float]:
        """Raw logits for ``(query, text)`` pairs, in the order of ``texts``."""
        ...

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        """The async twin of :meth:`score`; never blocks the event loop."""
        ...

    def describe(self) -> dict[str, str]:
        """Details worth reporting (device, dtype, endpoint), without secrets."""
        ...
