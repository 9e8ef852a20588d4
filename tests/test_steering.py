"""
Steering new connections: the BPF program built from weights, the weights
built from counts, when L{Steering} re-attaches, and a real C{SO_REUSEPORT}
group on loopback that follows the program.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.helpers import captureLog
from timerserver import steering
from timerserver.listener import Listener
from timerserver.steering import (
    MIN_INTERVAL,
    REFRESH,
    SCALE,
    STALE_AFTER,
    Steering,
    attach,
    program,
    shares,
    weights,
)
from timerserver.workersockets import WorkerSockets

RAND = 0xFFFFF000 + 56


def instructions(code: bytes) -> list[tuple[int, int, int, int]]:
    return [struct.unpack("=HBBI", code[i : i + 8]) for i in range(0, len(code), 8)]


def run(code: bytes, rand: int) -> int:
    """Interpret the ladder the way the kernel would, for C{ld rand} = C{rand}."""
    a, pc = 0, 0
    insns = instructions(code)
    while True:
        op, jt, jf, k = insns[pc]
        if op == 0x20 and k == RAND:
            a = rand
        elif op == 0x94:
            a %= k
        elif op == 0x35:
            pc += jt if a >= k else jf
        elif op == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")
        pc += 1


class ProgramTests(SynchronousTestCase):
    def test_ladder(self) -> None:
        self.assertEqual(
            instructions(program([1, 1, 2])),
            [
                (0x20, 0, 0, RAND),  # ld rand
                (0x94, 0, 0, SCALE),  # mod #1000
                (0x35, 1, 0, 250),  # jge #250, skip the ret
                (0x06, 0, 0, 0),  # ret #0
                (0x35, 1, 0, 500),
                (0x06, 0, 0, 1),
                (0x06, 0, 0, 2),  # the rest: the last socket
            ],
        )

    def test_oneWorker(self) -> None:
        self.assertEqual(
            instructions(program([3])), [(0x20, 0, 0, RAND), (0x94, 0, 0, SCALE), (0x06, 0, 0, 0)]
        )

    def test_everyRandomValueGoesWhereTheSharesSay(self) -> None:
        code = program([0, 3, 1, 0])
        chosen = [run(code, r) for r in range(SCALE)]
        self.assertEqual([chosen.count(i) for i in range(4)], [0, 750, 250, 0])
        self.assertEqual(run(code, 2**32 - 1), chosen[(2**32 - 1) % SCALE])

    def test_sharesSumToTheScale(self) -> None:
        self.assertEqual(shares([1, 1, 1]), [334, 333, 333])
        self.assertEqual(shares([1, 0]), [1000, 0])
        self.assertEqual(sum(shares([0.1, 7, 13.5, 2e6])), SCALE)

    def test_badWeightsAreRefused(self) -> None:
        for bad in ([], [0, 0], [1, -1], [float("nan"), 1], [float("inf"), 1]):
            self.assertRaises(ValueError, program, bad)


class WeightTests(SynchronousTestCase):
    def test_theEmptierGetsMore(self) -> None:
        self.assertEqual(weights([100, 100]), [10.0, 10.0])
        self.assertEqual(weights([0, 1000]), [1050.0, 50.0])  # the floor: a tenth of the mean
        self.assertEqual(weights([0, 0]), [1.0, 1.0])  # at least 1

    def test_slotsWithoutAWorkerGetNothing(self) -> None:
        self.assertEqual(weights([None, 500]), [0.0, 50.0])
        self.assertEqual(weights([None, None]), [1.0, 1.0])  # nobody runs: uniform

    def test_aFullWorkerGetsNothingWhileAnotherHasRoom(self) -> None:
        """
        The review's case: worker 1 at its open-file limit holds few
        connections (it cannot accept more), and was the emptiest.
        """
        self.assertEqual(weights([2, 100], [0, 960]), [0.0, 10.0])
        self.assertEqual(weights([2, 100], [2, 960]), [0.0, 10.0])  # at its capacity
        self.assertEqual(weights([2, 100], [1, 960]), [0.0, 10.0])  # over it (lowered since)
        # Among the others the counts steer as before: the full one is left out.
        self.assertEqual(weights([5, 0, 1000, None], [5, None, 2000, 10]), [0, 1050, 50, 0])

    def test_littleRoomIsAtMostThatMuchWeight(self) -> None:
        self.assertEqual(weights([0, 1000], [3, 2000]), [3.0, 50.0])
        self.assertEqual(weights([0, 1000], [5000, 2000]), [1050.0, 50.0])  # room to spare

    def test_everyWorkerFullIsAsIfNoneWere(self) -> None:
        """The kernel must send them somewhere: each refuses what it cannot hold."""
        self.assertEqual(weights([0, 1000], [0, 1000]), weights([0, 1000]))
        self.assertEqual(weights([None, 7], [None, 7]), [0.0, 1.0])


class SteeringTests(SynchronousTestCase):
    def steering(self, count: int = 2) -> tuple[Steering, Clock, list[list[int]]]:
        clock = Clock()
        attached: list[list[int]] = []

        def attachTo(shares: list[int]) -> bool:
            attached.append(shares)
            return True

        return Steering(count, attachTo, clock.seconds), clock, attached

    def serving(self, steer: Steering, count: int = 2) -> None:
        """Start a worker in every slot, each then reporting (at once) that it holds none."""
        for slot in range(count):
            steer.started(slot)
        for slot in range(count):
            steer.report(slot, 0)

    def test_balancedWorkersAreNotReSteered(self) -> None:
        steer, clock, attached = self.steering()
        steer.report(0, 1000)
        steer.report(1, 1010)  # too soon after the first: waits for the next report
        self.assertEqual(attached, [[1000, 0]])  # for a moment, only worker 1 ran
        for count in range(4):
            clock.advance(MIN_INTERVAL)
            steer.report(0, 1000 + count)
            steer.report(1, 1010)
        self.assertEqual(attached, [[1000, 0], [524, 476]])  # then a few thousandths: kept

    def test_startedAndEndedSteerAtOnce(self) -> None:
        steer, _, attached = self.steering()
        steer.started(0)
        steer.started(1)  # none serves yet: spread over the started ones
        self.assertEqual(attached, [[1000, 0], [500, 500]])
        steer.report(0, 0)  # a worker's first report: at once, however soon
        steer.report(1, 0)
        steer.report(1, 1000)  # too soon after the last: waits for the next report
        steer.ended(1)
        steer.started(1)  # its spare: nothing until it reports
        steer.report(1, 0)  # then at once, not half a second later
        self.assertEqual(
            attached, [[1000, 0], [500, 500], [1000, 0], [500, 500], [1000, 0], [500, 500]]
        )

    def test_aStartedWorkerGetsNothingUntilItReports(self) -> None:
        """
        The review's case: worker 2 killed, the spare (stopped, or slow to
        start serving) configured in its slot.  Before, it was marked running
        with no connection, the emptiest, and got most new connections, to
        wait in its socket's backlog, while worker 1 served.
        """
        steer, clock, attached = self.steering()
        self.serving(steer)
        clock.advance(MIN_INTERVAL)
        steer.report(0, 100)
        steer.ended(1)
        steer.started(1)
        self.assertEqual(attached[-1], [1000, 0])
        for _ in range(int(REFRESH / MIN_INTERVAL) * 2):  # 10 s: worker 1 keeps reporting
            clock.advance(MIN_INTERVAL)
            steer.report(0, 100)
            self.assertEqual(attached[-1], [1000, 0])
        self.assertEqual(steer.counts, [100, None])
        clock.advance(0.1)
        steer.report(1, 0)  # it serves: its share at once
        self.assertEqual(attached[-1], [45, 955])  # 5 : 100 + 5 (the floor)

    def test_aPoolWhoseWorkersHaveNotReportedIsSpreadOverThem(self) -> None:
        """
        At start nobody has reported: new connections still go somewhere,
        to the started workers (each serves its backlog once it starts), not
        to a slot without a worker.
        """
        steer, _, attached = self.steering(3)
        steer.started(0)
        steer.started(2)  # slot 1's spawn failed: in back-off
        self.assertEqual(attached[-1], [500, 0, 500])
        steer.report(2, 0)
        self.assertEqual(attached[-1], [0, 0, 1000])  # only worker 3 serves yet

    def test_followsTheCountsAtMostTwiceASecond(self) -> None:
        steer, clock, attached = self.steering()
        self.serving(steer)
        clock.advance(MIN_INTERVAL)
        steer.report(1, 9000)
        self.assertEqual(attached[4:], [[955, 45]])  # 9,000 + 450 : 0 + 450 (the floor)
        clock.advance(0.1)
        steer.report(0, 5000)  # a change, but too soon: kept for the next report
        self.assertEqual(len(attached), 5)
        clock.advance(MIN_INTERVAL)
        steer.report(1, 9000)
        self.assertEqual(attached[-1], [870, 130])  # 4,000 + 700 : 0 + 700
        clock.advance(MIN_INTERVAL)
        steer.report(0, 5010)  # within a few thousandths: not re-attached
        self.assertEqual(len(attached), 6)
        self.assertEqual(steer.attaches, 6)

    def test_aDeadWorkersSlotGetsNothing(self) -> None:
        steer, clock, attached = self.steering(3)
        self.serving(steer, 3)
        steer.ended(1)
        self.assertEqual(attached[-1], [500, 0, 500])
        clock.advance(MIN_INTERVAL)
        steer.report(0, 100)
        steer.report(2, 100)
        steer.started(1)  # the spare took its socket: nothing until it serves
        self.assertEqual(attached[-1], [500, 0, 500])
        steer.report(1, 0)  # its first report, with no connection yet
        self.assertEqual(attached[-1], [56, 889, 55])  # 6.7 : 100 + 6.7 : 6.7

    def test_withManyWorkersADeadOneStillLosesItsShare(self) -> None:
        """At 64 workers an even share (15 thousandths) is under the threshold."""
        steer, _, attached = self.steering(64)
        for slot in range(64):
            steer.started(slot)
        self.assertNotIn(0, attached[-1])
        steer.ended(5)
        self.assertEqual(attached[-1][5], 0)
        steer.started(5)
        self.assertGreater(attached[-1][5], 0)

    def test_aSilentWorkerGetsNothing(self) -> None:
        steer, clock, attached = self.steering()
        steer.report(0, 100)
        steer.report(1, 100)
        clock.advance(STALE_AFTER + 0.1)
        steer.report(0, 100)  # worker 2 stopped reporting (SIGSTOP, wedged)
        self.assertEqual(attached, [[1000, 0]])

    def test_aFullWorkerIsSteeredAroundUntilItHasRoom(self) -> None:
        steer, clock, attached = self.steering()
        self.serving(steer)
        clock.advance(MIN_INTERVAL)
        steer.report(0, 3, 0)  # its open-file limit was lowered: no room
        self.assertEqual(attached[-1], [0, 1000])
        self.assertEqual(steer.capacities, [0, None])
        clock.advance(MIN_INTERVAL)
        steer.report(0, 3, 900)  # raised again
        self.assertEqual(attached[-1], [200, 800])  # 0 + 1 : 3 + 1
        steer.ended(0)
        steer.started(0)  # a fresh worker: its capacity is unknown until it reports
        self.assertEqual(steer.capacities, [None, None])

    def test_theProgramIsAttachedAgainEveryRefresh(self) -> None:
        """Another process of the same user may have attached its own to the group."""
        steer, clock, attached = self.steering()
        self.serving(steer)
        self.assertEqual(len(attached), 4)
        del attached[:2]  # the starts
        for _ in range(int(REFRESH / MIN_INTERVAL) - 1):
            clock.advance(MIN_INTERVAL)
            steer.report(0, 0)
            steer.report(1, 0)
        self.assertEqual(len(attached), 2)  # unchanged: not attached again yet
        clock.advance(MIN_INTERVAL)
        steer.report(0, 0)
        self.assertEqual(attached[2:], [[500, 500]])  # the same program, again
        clock.advance(MIN_INTERVAL)
        steer.report(1, 0)
        self.assertEqual(len(attached), 3)  # and not again until the next refresh

    def test_aRefusalIsFinal(self) -> None:
        clock = Clock()
        calls: list[list[int]] = []

        def refuse(shares: list[int]) -> bool:
            calls.append(shares)
            return False

        steer = Steering(2, refuse, clock.seconds)
        steer.report(0, 0)
        steer.report(1, 500)
        clock.advance(10)
        steer.report(1, 900)
        self.assertEqual(len(calls), 1)
        self.assertTrue(steer.refused)


def reusePortGroup(count: int) -> list[socket.socket]:
    """C{count} listening sockets on one loopback port with C{SO_REUSEPORT}, in order."""
    socks: list[socket.socket] = []
    port = 0
    for _ in range(count):
        sock = socket.socket()
        socks.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        port = sock.getsockname()[1]
        sock.listen(256)
        sock.setblocking(False)
    return socks


class LoopbackTests(SynchronousTestCase):
    """The kernel follows the program: each socket's accept queue tells where clients went."""

    def setUp(self) -> None:
        self.socks = reusePortGroup(2)
        for sock in self.socks:
            self.addCleanup(sock.close)
        self.port = self.socks[0].getsockname()[1]

    def attachOrSkip(self, weights: list[float]) -> None:
        try:
            attach(self.socks[0], program(weights))
        except OSError as e:
            raise SkipTest(f"the kernel refuses SO_ATTACH_REUSEPORT_CBPF: {e}") from None

    def connectAndCount(self, clients: int = 50) -> list[int]:
        """Connect C{clients}, then how many each socket's accept queue holds."""
        opened = []
        for _ in range(clients):
            client = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            opened.append(client)
            self.addCleanup(client.close)
        counts = []
        for sock in self.socks:
            accepted = 0
            while accepted <= clients:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                accepted += 1
            counts.append(accepted)
        return counts

    def test_allGoWhereTheWeightIs(self) -> None:
        self.attachOrSkip([1, 0])
        self.assertEqual(self.connectAndCount(), [50, 0])
        self.attachOrSkip([0, 1])  # replaced, not added to
        self.assertEqual(self.connectAndCount(), [0, 50])

    def test_workerSocketsSteer(self) -> None:
        listener = Listener.parse("tcp:0:interface=127.0.0.1")
        sockets = WorkerSockets(listener, Clock(), 2)
        sockets.listen()
        self.addCleanup(sockets.close)
        self.socks, self.port = sockets._sockets, sockets.address.port  # type: ignore[attr-defined]
        if not sockets.steer([0, 1]):
            raise SkipTest("the kernel refuses SO_ATTACH_REUSEPORT_CBPF")
        self.assertEqual(self.connectAndCount(), [0, 50])
        self.assertRaises(ValueError, sockets.steer, [1, 1, 1])
        self.assertRaises(ValueError, sockets.steer, [-1, 1])


class RefusedTests(SynchronousTestCase):
    def logged(self) -> list[dict[str, Any]]:
        return captureLog(self)

    def test_aSharedSocketIsOneLineOnce(self) -> None:
        sockets = WorkerSockets(Listener.parse("tcp:0:interface=127.0.0.1"), Clock(), 2)
        sockets.fds = [10, 10]  # as for unix: and systemd: endpoints: no socket of its own
        events = self.logged()
        self.assertFalse(sockets.steer([1, 0]))
        self.assertFalse(sockets.steer([0, 1]))
        [event] = events
        self.assertIn("not steered", event["log_format"])
        self.assertIn("shared", event["why"])

    def test_aFailureForNowIsTriedAgain(self) -> None:
        """ENOMEM (a memory cgroup at its limit) is not "cannot": the hash stayed for good."""
        failures = [OSError(errno.ENOMEM, "Cannot allocate memory")] * 2
        attached: list[bytes] = []

        def attach(sock: socket.socket, code: bytes) -> None:
            if failures:
                raise failures.pop()
            attached.append(code)

        self.patch(steering, "attach", attach)
        clock = Clock()
        sockets = WorkerSockets(Listener.parse("tcp:0:interface=127.0.0.1"), clock, 2)
        sockets.listen()
        self.addCleanup(sockets.close)
        events = self.logged()
        steer = Steering(2, sockets.steer, clock.seconds)
        steer.started(0)
        self.assertEqual((steer.refused, steer.current), (False, None))
        clock.advance(MIN_INTERVAL)
        steer.started(1)
        self.assertEqual((steer.refused, steer.current), (False, None))
        [event] = events  # once a minute
        self.assertEqual(
            (event["log_level"].name, event["why"]), ("warn", "Cannot allocate memory")
        )
        for _ in range(3):  # tried again: worker 2 holds 1,000, worker 1 none
            clock.advance(MIN_INTERVAL)
            steer.report(0, 0)
            steer.report(1, 1000)
        self.assertFalse(steer.refused)
        self.assertEqual(len(attached), 1)
        assert steer.current is not None
        self.assertGreater(steer.current[0], steer.current[1])

    def test_theKernelRefusing(self) -> None:
        def refuse(sock: socket.socket, code: bytes) -> None:
            raise OSError(92, "Protocol not available")

        self.patch(steering, "attach", refuse)
        listener = Listener.parse("tcp:0:interface=127.0.0.1")
        sockets = WorkerSockets(listener, Clock(), 2)
        sockets.listen()
        self.addCleanup(sockets.close)
        events = self.logged()
        self.assertFalse(sockets.steer([1, 0]))
        self.assertFalse(sockets.steer([1, 0]))
        [event] = events
        self.assertEqual(event["why"], "Protocol not available")


class PortInUseTests(SynchronousTestCase):
    """A second C{--workers} master on a port in use: one line, not a second group member."""

    def group(self, port: int = 0, count: int = 2) -> WorkerSockets:
        sockets = WorkerSockets(Listener.parse(f"tcp:{port}:interface=127.0.0.1"), Clock(), count)
        sockets.listen()
        self.addCleanup(sockets.close)
        return sockets

    def test_anotherMastersPortIsInUse(self) -> None:
        first = self.group()
        port = first.address.port  # type: ignore[attr-defined]
        second = WorkerSockets(Listener.parse(f"tcp:{port}:interface=127.0.0.1"), Clock(), 2)
        e = self.assertRaises(SystemExit, second.listen)
        self.assertEqual(
            str(e),
            f"twistd timerserver: cannot listen on tcp:{port}:interface=127.0.0.1: "
            f"Couldn't listen on 127.0.0.1:{port}: [Errno 98] Address already in use.",
        )
        self.assertEqual((second.fds, second._sockets), ([], []))  # nothing left open
        self.assertFalse(second.perWorker)
        # The first group is whole: clients still reach only its sockets.
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(client.close)
        accepted = 0
        for sock in first._sockets:
            try:
                sock.accept()[0].close()
                accepted += 1
            except BlockingIOError:
                pass
        self.assertEqual(accepted, 1)

    def test_aFreePortIsListenedOnAgain(self) -> None:
        """The probe lets go of the port: the group binds it, and again once closed."""
        first = self.group()
        port = first.address.port  # type: ignore[attr-defined]
        first.close()
        again = self.group(port)
        self.assertEqual(again.address.port, port)  # type: ignore[attr-defined]
        self.assertEqual(len(again.fds), 2)
