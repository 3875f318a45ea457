"""Zipf-distributed item popularity: a few items draw most of the traffic, as in a real sale.

The rank order is a seeded shuffle of the catalog, so every locust process agrees on which
items are hot without talking to the others, and the hot items are not simply the lowest ids.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence


def parse_ids(spec: str) -> list[int]:
    """Item ids from ``"1-1000"``, ``"3,5,8"`` or a mix (``"1-10,42"``)."""
    ids: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        low, sep, high = part.partition("-")
        try:
            ids.extend(range(int(low), int(high) + 1) if sep else [int(low)])
        except ValueError:
            raise ValueError(f"bad item id spec {part!r} in {spec!r}") from None
    if not ids:
        raise ValueError(f"item id spec {spec!r} names no item")
    return ids


class Zipf:
    """Draws item ids with probability proportional to ``1 / rank ** exponent``."""

    def __init__(self, item_ids: Sequence[int], exponent: float = 1.1, seed: int = 11) -> None:
        if not item_ids:
            raise ValueError("Zipf needs at least one item id")
        if exponent <= 0:
            raise ValueError(f"Zipf exponent must be > 0, got {exponent}")
        self.ranked = list(item_ids)
        random.Random(seed).shuffle(self.ranked)
        weights = (1 / rank**exponent for rank in range(1, len(self.ranked) + 1))
        self._cumulative = list(itertools.accumulate(weights))

    def pick(self, rng: random.Random, top: int | None = None) -> int:
        """One item id; only among the ``top`` most popular when given."""
        hi = len(self.ranked) if top is None else max(1, min(top, len(self.ranked)))
        x = rng.random() * self._cumulative[hi - 1]
        return self.ranked[bisect.bisect_right(self._cumulative, x, 0, hi - 1)]

    def hottest(self, count: int) -> list[int]:
        """The ``count`` most popular item ids, hottest first."""
        return self.ranked[:count]

    def share_of_top(self, count: int) -> float:
        """Expected fraction of :meth:`pick` draws that land in the ``count`` hottest items."""
        count = max(0, min(count, len(self.ranked)))
        return self._cumulative[count - 1] / self._cumulative[-1] if count else 0.0
