"""
The front door under attack: a real C{twistd timerserver} on its defaults
(only C{--interval} and a free loopback port chosen), over plain TCP, TLS
(C{ssl:}) and behind C{haproxy:tcp:}, with 1,000 reading clients in their
own process and, beside them, each attack in turn from processes of its own:

 - C{tls-idle} (ssl): TLS sockets that never send a ClientHello, up to 5,000
   open at once, reopened as the server drops them, then held;
 - C{no-header} (haproxy): the same with PROXY sockets that send no header;
 - C{garbage} (haproxy): the malformed headers of tests/test_proxyheader.py
   in a loop;
 - C{untrusted} (haproxy, C{--proxy-from 127.0.0.2/32}, the readers on
   127.0.0.2): valid headers from 127.0.0.3 in a loop;
 - C{spoof} (haproxy, C{--max-per-peer 2}): 5,000 valid headers claiming
   1,000 client addresses, held;
 - C{rate} (tcp and ssl): 4,000 connects a second, each closed at once
   with an ordinary close (FIN); C{rate-rst} the same closed with RST.

Per attack: the reading clients' messages received against what their
schedule made due (target 100%); the server's descriptors and RSS before,
at peak and a few seconds after (target: bounded, back to the baseline);
its CPU seconds; its log lines, and any traceback.  Then what a refused TLS
connect costs the server (it closes at accept) against a full handshake.
Everything is bounded in count and time, on loopback; every process it
starts is stopped by its pid.  The machine's cores are shared: figures are
noisy, CPU is reported as seconds per attack beside a no-attack control,
with the seconds the server waited for a core.  About 8 minutes.

    python -m bench.attack [--modes tcp,ssl,haproxy] [--attacks ...] [--duration 15]
        [--readers 1000] [--tls-readers 1000] [--no-cost] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.attackers import GARBAGE, clientAddress, v1
from bench.results import writeResults
from tests.serverprocess import ServerProcess
from tests.tlshelpers import Certificates
from timerserver.config import DEFAULT_HANDSHAKE_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
PORT = "tcp:0:interface=127.0.0.1"
HAPROXY = "haproxy:" + PORT
MIB = 1024 * 1024
CHILDREN: list[subprocess.Popen[str]] = []
"""Every client process started, to be stopped by pid whatever happens."""


def spawn(kind: str, cfg: dict[str, Any]) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.attackers", kind, json.dumps(cfg)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    CHILDREN.append(child)
    return child


def answer(child: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The next JSON line of C{child}, waiting at most C{timeout} seconds."""
    got: list[str] = []
    reading = threading.Thread(target=lambda: got.append(child.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reading.start()
    reading.join(timeout)
    if not got or not got[0].strip():
        child.kill()
        raise RuntimeError(f"client process {child.args[3:4]} gave no answer in {timeout}s")
    result: dict[str, Any] = json.loads(got[0])
    return result


def stopChildren() -> None:
    for child in CHILDREN:
        if child.poll() is None:
            child.kill()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            pass


class Sampler(threading.Thread):
    """The server's open descriptors and RSS every 0.2 s, and their peaks since L{reset}."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.running = True
        self.peakFds = self.peakRss = 0
        self.lock = threading.Lock()

    def now(self) -> tuple[int, int]:
        return self.process.num_fds(), self.process.memory_info().rss

    def reset(self) -> None:
        with self.lock:
            self.peakFds, self.peakRss = self.now()

    def peaks(self) -> tuple[int, int]:
        with self.lock:
            return self.peakFds, self.peakRss

    def cpu(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def waited(self) -> float:
        """Seconds the server was ready to run but waited for a core (the machine is shared)."""
        with open(f"/proc/{self.process.pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9

    def run(self) -> None:
        while self.running:
            try:
                fds, rss = self.now()
            except psutil.Error:
                return
            with self.lock:
                self.peakFds, self.peakRss = max(self.peakFds, fds), max(self.peakRss, rss)
            time.sleep(0.2)


class Readers:
    """The reading clients, in C{processes} processes of their own."""

    def __init__(self, cfg: dict[str, Any], count: int, processes: int) -> None:
        self.children = []
        shares = [count // processes + (i < count % processes) for i in range(processes)]
        offset = 0
        for share in shares:
            self.children.append(spawn("reader", {**cfg, "count": share, "offset": offset}))
            offset += share
        hello = [answer(c, 120) for c in self.children]
        self.connected = sum(h["connected"] for h in hello)
        self.welcomed = sum(h["welcomed"] for h in hello)
        self.count = count

    def window(self, start: float, end: float) -> dict[str, Any]:
        for child in self.children:
            child.stdin.write(f"window {start!r} {end!r}\n")  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]
        parts = [answer(c, 60) for c in self.children]
        total: dict[str, Any] = {
            k: sum(p[k] for p in parts)
            for k in ("expected", "received", "clientsShort", "closedByServer", "unwelcomed")
        }
        total["unexpectedBytes"] = sum(p["unexpectedBytes"] for p in parts)
        late = [p["latenessSeconds"] for p in parts if p["latenessSeconds"]]
        total["latenessSeconds"] = (
            {k: max(s[k] for s in late) for k in ("median", "p99", "max")} if late else None
        )
        return total

    def close(self) -> None:
        for child in self.children:
            child.stdin.close()  # type: ignore[union-attr]
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()


@dataclass
class Run:
    """One server, its reading clients, and the attacks made on it in turn."""

    mode: str
    attacks: list[str]
    extra: list[str] = field(default_factory=list)
    readerSource: str = "127.0.0.1"

    @property
    def label(self) -> str:
        return " ".join([self.mode, *self.extra])


def runs(modes: list[str], maxPerPeer: int) -> list[Run]:
    every = {
        "tcp": [Run("tcp", ["none", "rate", "rate-rst"])],
        "ssl": [Run("ssl", ["none", "tls-idle", "rate-rst", "rate"])],
        "haproxy": [
            Run("haproxy", ["none", "no-header", "garbage"]),
            Run("haproxy", ["untrusted"], ["--proxy-from", "127.0.0.2/32"], "127.0.0.2"),
            Run("haproxy", ["spoof"], ["--max-per-peer", str(maxPerPeer)]),
        ],
    }
    return [run for mode in modes for run in every[mode]]


def attackers(attack: str, port: int, a: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The client processes of C{attack}: (kind, configuration) each."""
    base = {"port": port, "duration": a.duration}
    holdAfter = DEFAULT_HANDSHAKE_TIMEOUT + 5
    if attack in ("tls-idle", "no-header"):
        return [
            (
                "hold",
                {
                    **base,
                    "sources": ["127.13.0.5"],
                    "count": a.idle_sockets,
                    "openRate": a.open_rate,
                    "holdAfter": holdAfter,
                },
            )
        ]
    if attack in ("garbage", "untrusted"):
        if attack == "garbage":
            payloads, sources = GARBAGE, ["127.13.0.6"]
        else:
            payloads = [v1(clientAddress(9, i), 40000 + i, port) for i in range(250)]
            sources = ["127.0.0.3"]
        return [
            (
                "loop",
                {
                    **base,
                    "sources": sources,
                    "payloads": [p.hex() for p in payloads],
                    "concurrency": a.loop_concurrency,
                    "rate": a.loop_rate,
                    "timeout": holdAfter,
                },
            )
        ]
    if attack == "spoof":
        return [
            (
                "spoof",
                {
                    **base,
                    "sources": ["127.13.0.7"],
                    "count": a.spoof_connections,
                    "addresses": a.spoof_addresses,
                    "openRate": a.open_rate,
                },
            )
        ]
    if attack in ("rate", "rate-rst"):
        n = a.rate_processes
        return [
            (
                "rate",
                {
                    **base,
                    "sources": [f"127.13.0.{10 + 4 * i + j}" for j in range(4)],
                    "rate": a.rate / n,
                    "close": "rst" if attack == "rate-rst" else "fin",
                },
            )
            for i in range(n)
        ]
    assert attack == "none", attack
    return []


def attackWindow(
    run: Run,
    attack: str,
    server: Server,
    sampler: Sampler,
    readers: Readers,
    a: argparse.Namespace,
) -> dict[str, Any]:
    """Make C{attack} beside the readers; measure the server before, during and after."""
    fdsBefore, rssBefore = sampler.now()
    mark, count, problems = len(server.lines), server.count, server.problems
    sampler.reset()
    cpu0, waited0 = sampler.cpu(), sampler.waited()
    start = time.monotonic()
    children = [spawn(kind, cfg) for kind, cfg in attackers(attack, server.port, a)]
    if children:
        results = [answer(c, a.duration + DEFAULT_HANDSHAKE_TIMEOUT + 30) for c in children]
    else:
        time.sleep(a.duration)
        results = []
    attackEnd = time.monotonic()
    cpuAttack = sampler.cpu() - cpu0
    waited = sampler.waited() - waited0
    time.sleep(a.settle)
    end = time.monotonic()
    cpuWindow = sampler.cpu() - cpu0
    fdsPeak, rssPeak = sampler.peaks()
    fdsAfter, rssAfter = sampler.now()
    lines = server.lines[mark:]
    logLines, tracebacks = server.count - count, server.problems - problems
    time.sleep(1.5)  # a message due just before the end may still be on its way
    reading = readers.window(start, end)
    # Not back yet: wait (bounded) for the descriptors to come back, and say how long.
    recovered: float | None = 0.0
    if fdsAfter > fdsBefore + 2:
        recovered = None
        while time.monotonic() - end < a.recovery:
            if sampler.now()[0] <= fdsBefore + 2:
                recovered = round(time.monotonic() - end, 1)
                break
            time.sleep(1)
    attacker: dict[str, Any] = {}
    for result in results:
        for k, v in result.items():
            if k == "seconds":
                attacker[k] = max(attacker.get(k, 0), v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                attacker[k] = attacker.get(k, 0) + v
            else:
                attacker.setdefault(k, v)
    return {
        "mode": run.mode,
        "server": run.label,
        "attack": attack,
        "readers": reading,
        "attacker": attacker,
        "attackSeconds": round(attackEnd - start, 2),
        "windowSeconds": round(end - start, 2),
        "cpuAttackSeconds": round(cpuAttack, 3),
        "cpuWindowSeconds": round(cpuWindow, 3),
        "waitedForCpuSeconds": round(waited, 3),
        "fds": {"before": fdsBefore, "peak": fdsPeak, "after": fdsAfter},
        "rss": {"before": rssBefore, "peak": rssPeak, "after": rssAfter},
        "logLines": logLines,
        "tracebacks": tracebacks,
        "secondsToRecoverAfterWindow": recovered,
        "logSample": sorted({re.sub(r"^\S+ ", "", line).strip() for line in lines})[:12],
    }


class Server(ServerProcess):
    """
    A L{ServerProcess} that counts every log line and traceback but keeps
    only the first L{KEEP} lines and the last L{TAIL} (a flood of tracebacks
    must not fill this process's memory).
    """

    KEEP = 20_000
    TAIL = 200

    def _read(self) -> None:
        self.count = self.problems = 0
        self.tail: deque[str] = deque(maxlen=self.TAIL)
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.count += 1
            if b"Traceback (most recent call last)" in raw:
                self.problems += 1
            line = raw.decode("utf-8", "replace")
            if len(self.lines) < self.KEEP:
                self.lines.append(line)
            self.tail.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines if self.count <= self.KEEP else self.tail)


def serverPort(mode: str, certs: Certificates | None) -> str:
    if mode == "ssl":
        assert certs is not None
        return certs.endpoint()
    return HAPROXY if mode == "haproxy" else PORT


def runServer(run: Run, a: argparse.Namespace, certs: Certificates | None) -> dict[str, Any]:
    """One server: its readers, each of its attacks in turn, then a clean stop."""
    server = Server("--interval", str(a.interval), *run.extra, port=serverPort(run.mode, certs))
    sampler = Sampler(server.pid)
    sampler.start()
    rows = []
    try:
        time.sleep(1)
        idleFds, idleRss = sampler.now()
        limit = sampler.process.rlimit(psutil.RLIMIT_NOFILE)[0]
        tls = run.mode == "ssl"
        count = a.tls_readers if tls else a.readers
        readers = Readers(
            {
                "port": server.port,
                "interval": a.interval,
                "ca": str(certs.chain) if tls and certs else None,
                "proxy": run.mode == "haproxy",
                "source": run.readerSource,
            },
            count,
            a.reader_processes,
        )
        print(
            f"\n{run.label}: server pid {server.pid} on port {server.port}; "
            f"{readers.welcomed}/{count} readers welcomed",
            flush=True,
        )
        time.sleep(2)
        for attack in [x for x in run.attacks for _ in range(1 if x == "none" else a.repeat)]:
            if a.attacks and attack not in a.attacks and attack != "none":
                continue
            row = attackWindow(run, attack, server, sampler, readers, a)
            row["readerCount"] = count
            row["readersWelcomed"] = readers.welcomed
            row["fdLimit"] = limit
            rows.append(row)
            printRow(row)
        readers.close()
        time.sleep(2)
        endFds, endRss = sampler.now()
        server.stop(timeout=30)
        stopped = re.search(r"closed (\d+) connections, cancelled (\d+) timers", server.output)
        return {
            "server": run.label,
            "rows": rows,
            "idleFdsAtStart": idleFds,
            "idleFdsAtEnd": endFds,
            "idleRssAtStart": idleRss,
            "idleRssAtEnd": endRss,
            "stopLine": stopped.group(0) if stopped else None,
            "logLinesInAll": server.count,
            "tracebacksInWholeLog": server.problems,
        }
    finally:
        sampler.running = False
        server.kill()


def tlsCost(keyType: str, a: argparse.Namespace) -> dict[str, Any]:
    """
    Server CPU per TLS connect refused at accept (the server full) against
    per full handshake (connect, handshake, the welcome, then an RST) on a
    server with room, both beside the same C{fill} held TLS connections;
    and per full handshake closed with an ordinary close (FIN).
    """
    certs = Certificates() if keyType == "ecdsa" else RsaCertificates()
    out: dict[str, Any] = {"key": keyType}
    for case, count, close, extra in (
        ("refused", a.cost_refused, "rst", ["--max-connections", str(a.cost_fill)]),
        ("handshake", a.cost_handshakes, "rst", []),
        ("handshakeFin", a.cost_fin, "fin", []),
    ):
        if not count:
            continue
        server = Server("--interval", str(a.interval), *extra, port=certs.endpoint())
        try:
            sampler = Sampler(server.pid)
            child = spawn(
                "tlscost",
                {
                    "port": server.port,
                    "ca": str(certs.chain),
                    "fill": a.cost_fill,
                    "count": count,
                    "concurrency": 20,
                    "timeLimit": 60,
                    "close": close,
                },
            )
            answer(child, 60)
            time.sleep(1)
            idle0, t0 = sampler.cpu(), time.monotonic()
            time.sleep(3)
            idleRate = (sampler.cpu() - idle0) / (time.monotonic() - t0)
            lines, problems = server.count, server.problems
            cpu0, t0 = sampler.cpu(), time.monotonic()
            child.stdin.write("go\n")  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]
            result = answer(child, 120)
            time.sleep(1)  # the server's side of the last closes
            seconds = time.monotonic() - t0
            cpu = sampler.cpu() - cpu0 - idleRate * seconds
            child.stdin.close()  # type: ignore[union-attr]
            child.wait(15)
            done = sum(v for k, v in result.items() if k.startswith(("refused", "handshake")))
            out[case] = {
                **result,
                "close": close,
                "serverCpuSeconds": round(cpu, 3),
                "idleCpuPerSecond": round(idleRate, 4),
                "usPerConnect": round(cpu / max(1, done) * 1e6, 1),
                "logLines": server.count - lines,
                "tracebacks": server.problems - problems,
            }
            server.stop(timeout=60)
        finally:
            server.kill()
    if "refused" in out and "handshake" in out:
        out["ratio"] = round(out["handshake"]["usPerConnect"] / out["refused"]["usPerConnect"], 1)
    return out


class RsaCertificates(Certificates):
    """The same files as L{Certificates}, for an RSA 2048 CA and server key."""

    def __init__(self) -> None:
        super().__init__()
        import trustme

        self.ca = trustme.CA(key_type=trustme.KeyType.RSA)
        cert = self.ca.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType.RSA)
        cert.private_key_pem.write_to_path(str(self.key))
        cert.cert_chain_pems[0].write_to_path(str(self.cert))
        self.ca.cert_pem.write_to_path(str(self.chain))


def pct(r: dict[str, Any]) -> str:
    expected = r["expected"]
    share = 100.0 * r["received"] / expected if expected else 0.0
    return f"{r['received']:,}/{expected:,} {share:.2f}%"


def attackerSummary(row: dict[str, Any]) -> str:
    t = row["attacker"]
    ages = t.get("secondsToServerClose") or {}
    low, high = ages.get("min", 0), ages.get("max", 0)
    attack = row["attack"]
    connected = t.get("connected", 0)
    if attack == "none":
        return "no attack (control)"
    if attack in ("tls-idle", "no-header"):
        return (
            f"opened {t['opened']:,} (peak {t['peakOpen']:,} open); server dropped "
            f"{t.get('closedByServer', 0):,} after {low:.2f}-{high:.2f} s; "
            f"{t['stillOpenAtEnd']} left at end; {t.get('bytesReceived', 0)} bytes received"
        )
    if attack in ("garbage", "untrusted"):
        return (
            f"{connected:,} connects ({connected / t['seconds']:,.0f}/s); server closed "
            f"{t.get('closedByServer', 0):,}, median {ages.get('median', 0) * 1000:.1f} ms, "
            f"max {high * 1000:.0f} ms; {t.get('notClosedInTime', 0)} not closed; "
            f"{t.get('bytesReceived', 0)} bytes received"
        )
    if attack == "spoof":
        return (
            f"{connected:,} connects claiming {t['distinctAddresses']:,} addresses: "
            f"{t.get('welcomed', 0):,} welcomed, {t.get('toldBusy', 0):,} told busy; "
            f"{t['openAtStop']:,} open at the end"
        )
    errors = sum(v for k, v in t.items() if k.startswith("connectError"))
    return (
        f"{connected:,} connect+close ({'RST' if attack == 'rate-rst' else 'FIN'}) "
        f"in {row['attackSeconds']:.1f} s "
        f"({t.get('connectsPerSecond', 0):,}/s); {errors} connect errors, "
        f"{t.get('connectTimeout', 0)} connects not done in 3 s"
    )


def backText(row: dict[str, Any]) -> str:
    seconds = row["secondsToRecoverAfterWindow"]
    if seconds == 0:
        return "yes"
    if seconds is None:
        return "NO (not within --recovery)"
    return f"NO: {seconds:.0f} s later"


def printRow(row: dict[str, Any]) -> None:
    f, m = row["fds"], row["rss"]
    r = row["readers"]
    late = r["latenessSeconds"] or {}
    print(
        f"  {row['attack']:10} readers {pct(r)} (p99 late {late.get('p99', 0) * 1000:.0f} ms); "
        f"fds {f['before']:,}/{f['peak']:,}/{f['after']:,} (back: {backText(row)}); "
        f"RSS {m['before'] / MIB:.1f}/{m['peak'] / MIB:.1f}/{m['after'] / MIB:.1f} MiB; "
        f"CPU {row['cpuAttackSeconds']:.2f} s in {row['attackSeconds']:.0f} s "
        f"(waited {row['waitedForCpuSeconds']:.2f} s); "
        f"log {row['logLines']}, tracebacks {row['tracebacks']}\n"
        f"             {attackerSummary(row)}",
        flush=True,
    )


def printTables(servers: list[dict[str, Any]], costs: list[dict[str, Any]]) -> None:
    rows = [row for s in servers for row in s["rows"]]
    print(
        "\n| server | attack | readers: received / expected | fds before / peak / after"
        " | back to baseline | RSS MiB before / peak / after | server CPU s (attack s)"
        " | waited for a core s"
        " | log lines | tracebacks |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        f, m = row["fds"], row["rss"]
        print(
            f"| {row['server']} | {row['attack']} | {pct(row['readers'])} "
            f"| {f['before']:,} / {f['peak']:,} / {f['after']:,} | {backText(row)} "
            f"| {m['before'] / MIB:.1f} / {m['peak'] / MIB:.1f} / {m['after'] / MIB:.1f} "
            f"| {row['cpuAttackSeconds']:.2f} ({row['attackSeconds']:.0f}) "
            f"| {row['waitedForCpuSeconds']:.2f} "
            f"| {row['logLines']:,} | {row['tracebacks']:,} |"
        )
    print("\n| server | attack | what the attacker did and saw |")
    print("| --- | --- | --- |")
    for row in rows:
        print(f"| {row['server']} | {row['attack']} | {attackerSummary(row)} |")
    print("\n| server | idle fds at start / after the readers left | stop line | tracebacks |")
    print("| --- | --- | --- | --- |")
    for s in servers:
        print(
            f"| {s['server']} | {s['idleFdsAtStart']} / {s['idleFdsAtEnd']} | {s['stopLine']} "
            f"| {s['tracebacksInWholeLog']} |"
        )
    if costs:
        print(
            "\n| key | refused at accept (server full) | handshake + welcome + RST "
            "| ratio | handshake + welcome + FIN | log lines, tracebacks (FIN) |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for c in costs:
            r, h = c["refused"], c["handshake"]
            fin = c.get("handshakeFin")
            finText = f"{fin['usPerConnect']:,.0f} us ({fin['attempts']:,})" if fin else "-"
            finLog = f"{fin['logLines']:,}, {fin['tracebacks']:,}" if fin else "-"
            print(
                f"| {c['key']} | {r['usPerConnect']:,.0f} us ({r['serverCpuSeconds']:.2f} s for "
                f"{r['attempts']:,}) | {h['usPerConnect']:,.0f} us ({h['serverCpuSeconds']:.2f} s "
                f"for {h['attempts']:,}) | {c['ratio']}x | {finText} | {finLog} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--modes", default="tcp,ssl,haproxy")
    parser.add_argument(
        "--attacks",
        default="",
        help="only these (tls-idle,no-header,garbage,untrusted,spoof,rate,rate-rst); default all",
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per attack")
    parser.add_argument("--repeat", type=int, default=1, help="each attack N times in a row")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after, then measure")
    parser.add_argument("--interval", type=float, default=1.0, help="the server's --interval")
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--tls-readers", type=int, default=1000)
    parser.add_argument("--reader-processes", type=int, default=1)
    parser.add_argument("--idle-sockets", type=int, default=5000, help="tls-idle, no-header")
    parser.add_argument("--open-rate", type=float, default=2000, help="opens a second (hold)")
    parser.add_argument("--loop-concurrency", type=int, default=100, help="garbage, untrusted")
    parser.add_argument("--loop-rate", type=float, default=2000, help="garbage, untrusted")
    parser.add_argument("--spoof-connections", type=int, default=5000)
    parser.add_argument("--spoof-addresses", type=int, default=1000)
    parser.add_argument("--max-per-peer", type=int, default=2, help="the spoof run's server")
    parser.add_argument("--rate", type=float, default=4000, help="connects a second")
    parser.add_argument("--rate-processes", type=int, default=2)
    parser.add_argument(
        "--recovery", type=float, default=120, help="longest wait for the server to recover"
    )
    parser.add_argument("--no-cost", action="store_true", help="skip the TLS cost figures")
    parser.add_argument("--cost-keys", default="ecdsa,rsa")
    parser.add_argument("--cost-fill", type=int, default=20)
    parser.add_argument("--cost-refused", type=int, default=3000)
    parser.add_argument("--cost-handshakes", type=int, default=1000)
    parser.add_argument("--cost-fin", type=int, default=300, help="handshakes closed with FIN")
    parser.add_argument("--json", default="bench/results/attack.json")
    a = parser.parse_args()
    a.attacks = [x for x in a.attacks.split(",") if x]

    def terminated(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    began = time.monotonic()
    servers: list[dict[str, Any]] = []
    costs: list[dict[str, Any]] = []
    try:
        modes = [m for m in a.modes.split(",") if m]
        certs = Certificates() if "ssl" in modes else None
        for run in runs(modes, a.max_per_peer):
            if a.attacks and not set(run.attacks) & set(a.attacks):
                continue
            servers.append(runServer(run, a, certs))
        if not a.no_cost:
            for key in a.cost_keys.split(","):
                costs.append(tlsCost(key, a))
                c = costs[-1]
                print(
                    f"\nTLS cost ({key}): refused {c['refused']['usPerConnect']:,.0f} us, "
                    f"handshake {c['handshake']['usPerConnect']:,.0f} us ({c['ratio']}x)",
                    flush=True,
                )
    finally:
        stopChildren()
    printTables(servers, costs)
    print(f"\n{time.monotonic() - began:.0f} s in all; command: python -m bench.attack "
          + " ".join(sys.argv[1:]))  # fmt: skip
    writeResults(
        {"arguments": vars(a), "servers": servers, "tlsCost": costs, "command": sys.argv},
        a.json,
    )


if __name__ == "__main__":
    main()
