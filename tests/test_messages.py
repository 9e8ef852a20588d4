"""The master/worker messages: every type round-trips, and bad lines are refused."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from timerserver.lateness import DEFAULT_BUCKETS
from timerserver.messages import (
    MAX_LINE,
    MAX_LOAD,
    Configure,
    Load,
    LogEvent,
    MalformedMessage,
    StatsAnswer,
    StatsRequest,
    StopFigures,
    checkStats,
    decode,
    encode,
)


class RoundTripTests(SynchronousTestCase):
    def test_everyType(self) -> None:
        for message in (
            Configure({"argv": ["--interval", "0.5", "--message", "a\nb"]}, 2, 4),
            StatsRequest(7),
            StatsAnswer(7, {"accepted": 3, "refused": {"full": 1}}),
            LogEvent("info", "worker says\nhello", None),
            LogEvent("error", "oops", "Traceback (most recent call last):\n..."),
            StopFigures(closed=10, cancelled=12, skipped=0),
            Load(0),
            Load(19368),
            Load(3, 0),
            Load(3, 960),
        ):
            line = encode(message)
            self.assertEqual(line.count(b"\n"), 1, line)  # one line, whatever the text holds
            self.assertTrue(line.endswith(b"\n"))
            self.assertEqual(decode(line), message)
            self.assertEqual(decode(line.rstrip(b"\n")), message)

    def test_optionalFieldMayBeLeftOut(self) -> None:
        self.assertEqual(decode(b'{"type":"log","level":"info","text":"x"}'), LogEvent("info", "x"))

    @settings(max_examples=100, deadline=None)
    @given(st.text(), st.integers(0, 2**53), st.integers(0, 2**53), st.integers(0, 2**53))
    def test_anyTextAndFigures(self, text: str, a: int, b: int, c: int) -> None:
        self.assertEqual(decode(encode(LogEvent("warn", text))), LogEvent("warn", text))
        self.assertEqual(decode(encode(StopFigures(a, b, c))), StopFigures(a, b, c))


class MalformedTests(SynchronousTestCase):
    def assertMalformed(self, line: bytes, why: str) -> None:
        e = self.assertRaises(MalformedMessage, decode, line)
        self.assertIn(why, str(e))

    def test_notJSON(self) -> None:
        self.assertMalformed(b"stats", "not JSON")
        self.assertMalformed(b"\xff\xfe{", "not JSON")
        self.assertMalformed(b'{"type": "log"', "not JSON")

    def test_notAnObject(self) -> None:
        self.assertMalformed(b"[1, 2]", "not a JSON object")
        self.assertMalformed(b"42", "not a JSON object")

    def test_unknownOrMissingType(self) -> None:
        self.assertMalformed(b'{"type": "reboot"}', "no known message type")
        self.assertMalformed(b'{"id": 1}', "no known message type")
        self.assertMalformed(b'{"type": ["log"]}', "no known message type")

    def test_missingField(self) -> None:
        self.assertMalformed(b'{"type": "stop-figures", "closed": 1, "cancelled": 2}', "skipped")

    def test_unknownField(self) -> None:
        self.assertMalformed(b'{"type": "stats-request", "id": 1, "extra": 2}', "extra")

    def test_wrongTypes(self) -> None:
        for line in (
            {"type": "stats-request", "id": "1"},
            {"type": "stats-request", "id": True},
            {"type": "stats-request", "id": 1.5},
            {"type": "stats-answer", "id": 1, "stats": [1]},
            {"type": "log", "level": "info", "text": None},
            {"type": "log", "level": "info", "text": "x", "traceback": 3},
            {"type": "configure", "config": "argv", "number": 1, "fd": 3},
            {"type": "configure", "config": {}, "number": "1", "fd": 3},
        ):
            self.assertRaises(MalformedMessage, decode, json.dumps(line).encode())

    def test_load(self) -> None:
        self.assertEqual(encode(Load(7, 900)), b'{"type":"load","open":7,"capacity":900}\n')
        self.assertEqual(encode(Load(7)), b'{"type":"load","open":7,"capacity":null}\n')
        self.assertEqual(decode(b'{"type":"load","open":7}'), Load(7, None))  # capacity unsaid
        self.assertEqual(decode(b'{"type":"load","open":7,"capacity":0}'), Load(7, 0))
        for line in (
            {"type": "load", "open": 7, "capacity": "7"},
            {"type": "load", "open": 7, "capacity": 7.0},
            {"type": "load", "open": 7, "capacity": True},
            {"type": "load", "open": 7, "capacity": [7]},
            {"type": "load"},
            {"type": "load", "open": "7"},
            {"type": "load", "open": 7.0},
            {"type": "load", "open": None},
            {"type": "load", "open": False},
            {"type": "load", "open": 7, "closed": 1},
        ):
            self.assertRaises(MalformedMessage, decode, json.dumps(line).encode())
        for count in (-1, MAX_LOAD, 10**400):
            line = b'{"type":"load","open":%d}' % count
            self.assertMalformed(line, "out of range")
            line = b'{"type":"load","open":1,"capacity":%d}' % count
            self.assertMalformed(line, "'capacity'")
        self.assertRaises(MalformedMessage, Load, -1)  # nor can one be made
        self.assertRaises(MalformedMessage, Load, 1, -1)

    def test_deeplyNested(self) -> None:
        """JSON nested deeper than the parser's recursion limit: malformed, not a RecursionError."""
        self.assertMalformed(b"[" * 100_000, "not JSON")
        self.assertMalformed(b'{"type":"log","level":"info","text":' + b"[" * 100_000, "not JSON")

    def test_tooLong(self) -> None:
        line = encode(LogEvent("info", "x" * MAX_LINE))
        self.assertMalformed(line, "over")


class StatsShapeTests(SynchronousTestCase):
    """A worker's figures must have the shape of a snapshot for the master to sum them."""

    GOOD = {
        "connections_open": 2, "accepted": 5, "refused": {"full": 1}, "lateness_sum": 0.5,
        "lateness_bounds": list(DEFAULT_BUCKETS),
        "lateness_counts": [0] * (len(DEFAULT_BUCKETS) + 1),
        "process": {"process_cpu_seconds_total": 1.5}, "granularity": 0.01,
    }  # fmt: skip

    def test_snapshotsAndPartsOfThem(self) -> None:
        for stats in (self.GOOD, {}, {"log_lines_dropped": 3}, {"lateness_bounds": []}):
            checkStats(stats)

    def test_otherShapes(self) -> None:
        for change in (
            {"lateness_counts": [1, 2, 3]},
            {"lateness_bounds": [0.5], "lateness_counts": [1, 2]},
            {"lateness_bounds": [], "lateness_counts": [1]},
            {"accepted": -1},
            {"accepted": float("nan")},
            {"lateness_sum": float("inf")},
            {"accepted": 10**400},
            {"accepted": True},
            {"accepted": "5"},
            {"accepted": [5]},
            {"refused": {"full": "1"}},
            {"refused": [1]},
            {"process": {"process_cpu_seconds_total": {"nested": 1}}},
            {"lateness_counts": "abc"},
            {"workers_up": {"1": 1}},
        ):
            stats = {**self.GOOD, **change}
            self.assertRaises(MalformedMessage, checkStats, stats)
