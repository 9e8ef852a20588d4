"""
L{LatenessHistogram}: how late periodic messages go out against their due
time, counted into fixed buckets with one C{bisect} and one list increment
per message: no lock, no label lookup.
"""

from __future__ import annotations

from bisect import bisect_left

DEFAULT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025,
    0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds in seconds: fine around the wheel's 10 ms tick, and around
twice the coarser ticks many workers get (the lateness alert's threshold)."""


class LatenessHistogram:
    """
    @ivar bounds: the buckets' upper bounds (the last bucket, C{+Inf}, has none).
    @ivar counts: observations per bucket, not cumulative; one more than C{bounds}.
    @ivar total: the sum of the observations, in seconds.
    """

    def __init__(self, bounds: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"bounds must be increasing, not {bounds!r}")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def record(self, seconds: float) -> None:
        """Count one message that went out C{seconds} late (early counts as 0)."""
        if seconds < 0.0:
            seconds = 0.0
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
