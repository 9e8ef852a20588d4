"""
Steering new connections toward the emptier workers of C{--workers N}.

The kernel spreads a C{SO_REUSEPORT} group's connections by a hash of their
addresses, blind to how many each worker holds.  When a worker is killed its
clients reconnect spread over every socket, so the survivors accumulate
connections: in the chaos soak one of 2 workers came to hold 19,368 of
20,000, and its death sent 19,000 clients back at once.  A classic BPF
program attached to the group (C{SO_ATTACH_REUSEPORT_CBPF}) picks the socket
instead: a random number below 1,000, then a ladder of thresholds, one per
worker, so that worker I gets C{shares[i]} thousandths of new connections.
A return value past the group falls back to the hash; where the kernel
refuses the program, the hash stays.

The weights (L{weights}) come from each worker's count of open connections,
reported every 0.5 s::

    w_i = (max_count - count_i) + floor     floor = max(1, mean / 10)

for a running worker, 0 for a slot without one (uniform if none runs).  A
worker just started in a slot (the spare, configured) runs there only once
its first report arrives, which a worker sends as soon as it serves: until
then it gets no new connection, which would wait in its socket's backlog
(for as long as the spare was stopped, say) while the others serve.  If no
worker runs yet (the pool starting) the workers started share new
connections evenly (every slot, if none was started): the kernel must send
them somewhere, and each worker serves its socket's backlog once it starts.
At start the first worker to report gets every new connection until the
others report (some 20 ms later on an idle machine).

Each report also says how many connections the worker can hold now: the
lower of C{--max-connections} and its current soft open-file limit less
L{timerserver.config.FILE_RESERVE} (lowered under it by C{prlimit}, say).  A
worker with no room left gets no new connection (weight 0) while another
has room, and one with little room gets at most its room as weight; the
counts, maximum and mean above are then those of the workers with room.
Without this the full worker, whose count stays low because it cannot
accept, was the emptiest and got most new connections: with worker 1
capped at 14 descriptors, 107 to 141 of each burst of 150 clients got no
welcome while worker 2 had room; with this, all 600 of four such bursts
were welcomed, by worker 2.  When every worker is full they are
weighted as if none were: the kernel must send new connections somewhere,
and each refuses what it cannot hold.
The deficit term sends new connections to whoever is below the fullest, in
proportion to how far below, so the counts converge instead of following
the hash; balanced workers get equal weights (random, like the hash).  The
floor keeps every running worker taking a share (before the shares are
rounded to thousandths: from about 12 workers up, the fullest of a very
uneven pool may round to none until the others catch up), so that one whose
count is understated (its accept queue and the last half second are not in its
report) is not flooded, and it damps the loop that the reports' lag would
otherwise swing.  A simulation of the chaos soak (2 workers, 20,000
clients, one killed every 30 s, its clients back within 1-3 s, reports
0.5 s apart and 0.3-1 s behind) put at most 18,442 connections on the
killed worker with the hash, 11,775-13,307 with this floor; a floor of a
hundredth of the mean did better with fresh reports (10,513) and worse
with late ones, a quarter worse with both.

A worker silent for L{STALE_AFTER} seconds (stopped, wedged, its reports
dropped) counts as not running: new connections go to the others until it
reports again.

L{Steering} re-attaches the program only when a share moved by more than
L{THRESHOLD} thousandths, and at most once per L{MIN_INTERVAL} seconds: the
kernel copies the program (a few dozen instructions) at each attach.  It
also attaches it again every L{REFRESH} seconds, changed or not: the
program belongs to the group, which any process of the same user can join
with C{SO_REUSEPORT} and attach its own program to, and the kernel cannot
be asked which program is attached.  The master refuses to join a group
that is in use (L{timerserver.workersockets}), but a foreign process may
not; this bounds how long one can keep the steering wrong.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys
from collections.abc import Callable, Sequence

SO_ATTACH_REUSEPORT_CBPF = 51
"""C{setsockopt} option (Linux 4.5+): a classic BPF program picks the socket of the group."""

SCALE = 1000
"""The random number's range: shares are in thousandths."""
THRESHOLD = 20
"""Thousandths a share must move by before the program is replaced."""
MIN_INTERVAL = 0.5
"""Seconds between two attaches at least."""
STALE_AFTER = 2.0
"""Seconds without a report after which a worker gets no new connections."""
REFRESH = 5.0
"""Seconds after which the program is attached again even if unchanged."""

_SKF_AD_RANDOM = 0xFFFFF000 + 56  # SKF_AD_OFF + SKF_AD_RANDOM
_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_ALU_MOD_K = 0x04 | 0x90 | 0x00  # BPF_ALU | BPF_MOD | BPF_K
_JGE_K = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K
_INSN = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k


def shares(weights: Sequence[float]) -> list[int]:
    """
    C{weights} as thousandths that sum to L{SCALE} (largest remainders).

    @raise ValueError: no weights, a negative or non-finite one, or all zero.
    """
    if not weights:
        raise ValueError("no workers to steer to")
    if any(not (0 <= w < float("inf")) for w in weights):
        raise ValueError(f"weights must be finite and non-negative: {list(weights)}")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("every weight is 0")
    exact = [w * SCALE / total for w in weights]
    result = [int(x) for x in exact]
    byRemainder = sorted(range(len(exact)), key=lambda i: result[i] - exact[i])
    for i in byRemainder[: SCALE - sum(result)]:
        result[i] += 1
    return result


def program(weights: Sequence[float]) -> bytes:
    """
    The classic BPF program (an array of C{struct sock_filter}) that sends a
    new connection to socket I of the group with probability proportional to
    C{weights[i]}::

        ld rand; mod #1000; jge #c0, +1; ret #0; jge #c1, +1; ret #1; ... ret #n-1

    where C{c_i} is the sum of the first I+1 shares.

    @raise ValueError: as L{shares}.
    """
    parts = shares(weights)
    code = [(_LD_W_ABS, 0, 0, _SKF_AD_RANDOM), (_ALU_MOD_K, 0, 0, SCALE)]
    cumulative = 0
    for index, share in enumerate(parts[:-1]):
        cumulative += share
        code += [(_JGE_K, 1, 0, cumulative), (_RET_K, 0, 0, index)]
    code.append((_RET_K, 0, 0, len(parts) - 1))
    return b"".join(_INSN.pack(*insn) for insn in code)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def attach(sock: socket.socket, code: bytes) -> None:
    """
    Attach C{code} (from L{program}) to the C{SO_REUSEPORT} group of
    C{sock}, replacing any program it had.

    @raise OSError: the kernel refused it (not Linux, before 4.5, not a
        reuseport socket).
    """
    if not sys.platform.startswith("linux"):
        raise OSError(f"SO_ATTACH_REUSEPORT_CBPF is Linux only, not {sys.platform}")
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(code) // _INSN.size, ctypes.addressof(buffer))
    # The kernel copies the instructions during the call: buffer may go after it.
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))


def weights(
    counts: Sequence[int | None], capacities: Sequence[int | None] | None = None
) -> list[float]:
    """
    Each slot's weight from its worker's open connections (C{None}: no
    worker runs in that slot) and how many it can hold now (C{None}: no
    limit known), as the module docstring explains.
    """
    limits = list(capacities) if capacities is not None else [None] * len(counts)
    room: list[int | None] = [
        None if c is None or cap is None else cap - c for c, cap in zip(counts, limits, strict=True)
    ]
    running = [i for i, c in enumerate(counts) if c is not None]
    if not running:
        return [1.0] * len(counts)
    spare = [i for i in running if (r := room[i]) is None or r > 0]
    chosen = spare or running  # every one full: spread as if none were
    taken = [counts[i] or 0 for i in chosen]
    fullest = max(taken)
    floor = max(1.0, sum(taken) / len(taken) / 10)
    result = [0.0] * len(counts)
    for i in chosen:
        weight = float(fullest - (counts[i] or 0)) + floor
        r = room[i]
        result[i] = weight if r is None or not spare else min(weight, float(r))
    return result


class Steering:
    """
    The latest count of each slot's worker, and the program that follows them.

    @param attachTo: steers the group by these weights (L{WorkerSockets.steer}),
        returning whether the kernel took the program, or C{None} if it
        failed for now (the next update tries again); after a refusal
        nothing more is tried.
    @param seconds: the clock that bounds how often it attaches.
    @ivar counts: per slot (0 to N-1), the worker's open connections, or
        C{None} while no worker runs there (or one started there has not
        reported yet).
    @ivar capacities: per slot, how many connections its worker can hold
        now, or C{None} if it did not say.
    @ivar reported: per slot, when its count was reported.
    @ivar current: the shares attached, or C{None} while the hash decides.
    """

    def __init__(
        self,
        count: int,
        attachTo: Callable[[list[int]], bool | None],
        seconds: Callable[[], float],
    ) -> None:
        self.counts: list[int | None] = [None] * count
        self.capacities: list[int | None] = [None] * count
        self.reported: list[float] = [0.0] * count
        self.attachTo = attachTo
        self.seconds = seconds
        self.current: list[int] | None = None
        self.attaches = 0
        self.refused = False
        self._lastAttach: float | None = None
        self._waiting: set[int] = set()
        """Slots whose worker started and has not reported yet."""

    def started(self, slot: int) -> None:
        """
        A fresh worker was started in C{slot}: it gets no new connection
        until its first report says it serves (steered at once then), as
        if none ran there.
        """
        self.counts[slot] = None
        self.capacities[slot] = None
        self._waiting.add(slot)
        self.update(now=True)

    def ended(self, slot: int) -> None:
        """No worker runs in C{slot} now: steer at once."""
        self.counts[slot] = None
        self._waiting.discard(slot)
        self.update(now=True)

    def report(self, slot: int, count: int, capacity: int | None = None) -> None:
        """
        The worker of C{slot} holds C{count} connections, and can hold
        C{capacity} (C{None}: it did not say).
        """
        first = slot in self._waiting  # a fresh worker serves now: steer at once
        self._waiting.discard(slot)
        self.counts[slot] = count
        self.capacities[slot] = capacity
        self.reported[slot] = self.seconds()
        self.update(now=first)

    def update(self, now: bool = False) -> None:
        """
        Attach the program the counts ask for, if it differs enough (or
        L{REFRESH} has passed since the last attach) and, unless
        C{now} (a worker started, ended or sent its first report: rare, and
        bounded by the restart back-off), L{MIN_INTERVAL} has passed since the last attach.
        """
        if self.refused:
            return
        time = self.seconds()
        live = [
            None if abs(time - when) > STALE_AFTER else count
            for count, when in zip(self.counts, self.reported, strict=True)
        ]
        if self._waiting and all(count is None for count in live):
            # Nobody serves yet (the pool starting): spread over the workers
            # that started, whose backlogs they serve once they start.
            wanted = shares([float(i in self._waiting) for i in range(len(live))])
        else:
            wanted = shares(weights(live, self.capacities))
        current = self.current or shares([1.0] * len(self.counts))  # the hash: about even
        pairs = list(zip(wanted, current, strict=True))
        last = self._lastAttach
        # A share to or from nothing always counts: with 50 workers or more an
        # even share is itself under the threshold.
        if (
            max(abs(a - b) for a, b in pairs) <= THRESHOLD
            and all((a == 0) == (b == 0) for a, b in pairs)
            and not (self.current is not None and last is not None and abs(time - last) >= REFRESH)
        ):
            return
        if not now and last is not None and abs(time - last) < MIN_INTERVAL:
            return  # the next report (within 0.5 s) tries again
        self._lastAttach = time
        attached = self.attachTo(wanted)
        if attached is None:
            return  # failed for now: the next report (MIN_INTERVAL on) tries again
        if not attached:
            self.refused = True
            return
        self.current = wanted
        self.attaches += 1
