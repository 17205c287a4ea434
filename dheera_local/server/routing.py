"""LiteLLM's router, for rerank: a repeated ``model_name`` is a group of deployments.

Each request tries the group's deployments in a weighted random order (LiteLLM's ``simple-shuffle``:
``weight`` where given, else equal), skipping a deployment that has served its ``rpm`` in the last
minute while another has room; a deployment that fails (every backend of it failed, or it is
overloaded) passes the request to the next, then to the groups ``router_settings.fallbacks`` names.
Bad input is never retried elsewhere: it would fail the same way.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable

from .registry import ServedModel

WINDOW = 60.0  # seconds: rpm counts the requests of the last minute


class RateWindow:
    """Requests started in the last minute, per deployment."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._starts: dict[int, deque[float]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def has_room(self, served: ServedModel) -> bool:
        if served.rpm is None:
            return True
        with self._lock:
            return len(self._recent(id(served))) < served.rpm

    def started(self, served: ServedModel) -> None:
        if served.rpm is None:
            return  # nothing to count against
        with self._lock:
            self._recent(id(served)).append(self._clock())

    def _recent(self, key: int) -> deque[float]:
        starts = self._starts.setdefault(key, deque())
        horizon = self._clock() - WINDOW
        while starts and starts[0] <= horizon:
            starts.popleft()
        return starts


def shuffled(deployments: list[ServedModel], rng: random.Random) -> list[ServedModel]:
    """A weighted random order without repeats (each pick proportional to the weights left)."""
    left = list(deployments)
    order = []
    while left:
        pick = rng.choices(range(len(left)), weights=[served.weight for served in left])[0]
        order.append(left.pop(pick))
    return order


class Router:
    """The order in which a request tries deployments: its group's, then its fallback groups'."""

    def __init__(
        self, groups: dict[str, list[ServedModel]], fallbacks: dict[str, list[str]], *, seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.groups = groups
        self.fallbacks = fallbacks
        self.window = RateWindow(clock)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def order(self, name: str) -> list[ServedModel]:
        """Deployments to try, best first: those with room under their rpm before those without."""
        result: list[ServedModel] = []
        for group in [name, *self.fallbacks.get(name, [])]:
            with self._lock:
                deployments = shuffled(self.groups.get(group, []), self._rng)
            roomy = [served for served in deployments if self.window.has_room(served)]
            result += roomy + [served for served in deployments if served not in roomy]
        return result
