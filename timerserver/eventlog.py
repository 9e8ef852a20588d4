"""
L{EventLog}: per-connection events logged with the peer address, with a
bound on how many lines a flood of them can write.
"""

from __future__ import annotations

from collections import Counter

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger


class EventLog:
    """
    Logs each event (refused, idle, stalled, aborted, ...) as one line with
    the peer, up to C{burst} lines per C{interval} seconds; beyond that it
    counts them and writes one summary line when the interval ends.

    Peers and kinds are passed as log fields, never as the format string.
    """

    def __init__(
        self, clock: IReactorTime, logger: Logger, interval: float = 10.0, burst: int = 20
    ) -> None:
        self._clock = clock
        self._log = logger
        self.interval = interval
        self.burst = burst
        self.totals: Counter[str] = Counter()
        self._logged = 0
        self._suppressed: Counter[str] = Counter()
        self._window: IDelayedCall | None = None

    def event(self, kind: str, peer: object, detail: str = "") -> None:
        """Log (or count, past the burst) one event of C{kind} from C{peer}."""
        self.totals[kind] += 1
        if self._window is None:
            self._window = self._clock.callLater(self.interval, self._endWindow)
        if self._logged < self.burst:
            self._logged += 1
            self._log.info(
                "{kind} connection from {peer}{detail}", kind=kind, peer=peer, detail=detail
            )
        else:
            self._suppressed[kind] += 1

    def _endWindow(self) -> None:
        self._window = None
        self._logged = 0
        self.flush()

    def flush(self) -> None:
        """Write the summary of what was not logged, if anything."""
        if self._suppressed:
            counts = ", ".join(f"{k}={n}" for k, n in sorted(self._suppressed.items()))
            self._log.info(
                "{count} more connection events not logged in the last {interval}s: {counts}",
                count=sum(self._suppressed.values()),
                interval=self.interval,
                counts=counts,
            )
            self._suppressed.clear()

    def stop(self) -> None:
        """Cancel the pending window and write its summary."""
        if self._window is not None:
            self._window.cancel()
            self._window = None
        self.flush()
