"""
What bench/chaos.py measured, checked against what the soak requires, and
its summary in words.
"""

from __future__ import annotations

import math
from typing import Any

SCRAPE_MARGIN = 0.5
RESUME_MARGIN = 0.1
GROWTH_LIMIT = 0.05
WELCOME_WITHIN = 1.0


def analyse(soak: Any, records: list[list[Any]], stopAt: float, exit: float) -> dict[str, Any]:
    """The soak's figures and checks, from its client records, events and samples."""
    plan = soak.plan
    interval = plan.interval
    events = soak.events
    stops = [e for e in events if e["kind"] == "stop-worker" and "continuedAt" in e]
    masterStops = [e for e in events if e["kind"] == "stop-master" and "continuedAt" in e]
    pinned = [e for e in events if e["kind"] == "kill-pinned"]
    connectedAt = next(e["at"] for e in events if e["kind"] == "connected")
    kills = [e["at"] for e in events if e["kind"].startswith("kill")]

    def ended(closed: float | None) -> float:
        """When a connection stopped being served: its worker's kill, if that closed it."""
        if closed is None:
            return stopAt
        killed = [k for k in kills if k <= closed <= k + 5.0]
        return min(killed[-1] if killed else closed, stopAt)

    def stoppedBy(record: list[Any]) -> dict[str, Any] | None:
        local, _, welcomed, _, _, closed, _ = record
        for stop in stops:
            alive = welcomed is not None and welcomed < stop["at"]
            if alive and (closed is None or closed > stop["continuedAt"]):
                if local in stop["victimSet"]:
                    return stop
        return None

    for stop in stops:
        stop["victimSet"] = set(stop.pop("victims"))
    healthy = lost = gapped = 0
    lostRecords: list[list[Any]] = []
    resumes: list[float] = []
    welcomes: list[float] = []
    pinnedWelcomes: list[float] = []
    stoppedWelcomes: list[float] = []
    stopWindows = [(e["at"], e["continuedAt"]) for e in stops]
    neverWelcomed = 0
    for record in records:
        _, started, welcomed, count, _, closed, gaps = record
        if started > connectedAt:  # a reconnection
            if welcomed is None:
                neverWelcomed += closed is None
            else:
                late = welcomed - started
                inPinned = any(
                    p["at"] <= started <= p.get("restoredAt", p["at"]) + 2.0 for p in pinned
                )
                # One that connected while a worker was stopped may have met
                # that worker's socket: it waits for the SIGCONT.
                inStop = any(a <= welcomed and started <= b for a, b in stopWindows)
                if inStop:
                    stoppedWelcomes.append(late)
                else:
                    (pinnedWelcomes if inPinned else welcomes).append(late)
        if welcomed is None:
            continue
        stop = stoppedBy(record)
        if stop is not None:
            after = [end for begin, end in gaps if begin < stop["continuedAt"] < end]
            if after:
                resumes.append(after[0] - stop["continuedAt"])
            continue
        # A message due in the last 0.3 s may still be on its way.
        due = max(0, math.floor((ended(closed) - welcomed - 0.3) / interval))
        healthy += 1
        missing = max(0, due - count)
        lost += missing
        if missing:
            lostRecords.append(record)
        gapped += bool(gaps)
    # Scrapes that overlap the master's stop (it cannot answer) or its pinned
    # file limit (it cannot accept) are reported apart.
    masterWindows = [(e["at"], e["continuedAt"]) for e in masterStops]
    pinnedWindows = [(e["at"], e.get("restoredAt", e["at"])) for e in pinned]

    def during(s: dict[str, Any], windows: list[tuple[float, float]]) -> bool:
        return any(a - 0.1 <= s["at"] + s["seconds"] and s["at"] <= b for a, b in windows)

    scrapes = [s for s in soak.scrapes.results if not during(s, masterWindows + pinnedWindows)]
    pinnedScrapes = [s for s in soak.scrapes.results if during(s, pinnedWindows)]
    gets = [s for s in scrapes if s["kind"] != "post"]
    posts = [s for s in scrapes if s["kind"] == "post"]
    limit = 1.0 + SCRAPE_MARGIN
    growth = resourceGrowth(soak.samples)
    output = soak.server.output
    result: dict[str, Any] = {
        "plan": {k: v for k, v in vars(plan).items() if k != "faults"},
        "schedule": plan.schedule(),
        "connections": plan.connections,
        "records": len(records),
        "healthyRecords": healthy,
        "messagesLost": lost,
        "healthyRecordsWithGaps": gapped,
        "lostExamples": lostRecords[:5],
        "stoppedWorkerClients": len(resumes),
        "resumeMax": max(resumes, default=None),
        "reconnections": len(welcomes),
        "welcomeMax": max(welcomes, default=None),
        "welcomeP50": percentile(welcomes, 0.5),
        "welcomeP99": percentile(welcomes, 0.99),
        "welcomeWithin1sShare": sum(w <= WELCOME_WITHIN for w in welcomes) / len(welcomes)
        if welcomes
        else None,
        "reconnectionsWhileAWorkerWasStopped": len(stoppedWelcomes),
        "stoppedWelcomeMax": max(stoppedWelcomes, default=None),
        "welcomeOver1s": sum(w > WELCOME_WITHIN for w in welcomes),
        "reconnectionsNeverWelcomed": neverWelcomed,
        "pinnedReconnections": len(pinnedWelcomes),
        "pinnedWelcomeMax": max(pinnedWelcomes, default=None),
        "pinnedSpawnFailures": output.count("could not be started"),
        "scrapes": len(gets),
        "scrapesNot200": sum(s["status"] != 200 for s in gets),
        "scrapeMax": max((s["seconds"] for s in gets), default=None),
        "scrapesOverDeadline": sum(s["seconds"] > limit for s in gets),
        "scrapeFailures": [{**s, "at": s["at"] - connectedAt} for s in gets if s["status"] != 200][
            :20
        ],
        "scrapesWhileFilesPinned": len(pinnedScrapes),
        "scrapesWhileFilesPinnedAnswered": sum(s["status"] == 200 for s in pinnedScrapes),
        "posts": len(posts),
        "postsNot405": sum(s["status"] != 405 for s in posts),
        "postFailures": [{**s, "at": s["at"] - connectedAt} for s in posts if s["status"] != 405][
            :20
        ],
        "postMax": max((s["seconds"] for s in posts), default=None),
        "logTraffic": [{k: e.get(k) for k in ("refused", "accepted")} for e in masterStops],
        "growth": growth,
        "samples": soak.samples,
        "tracebacks": output.count("Traceback"),
        "unhandled": output.count("Unhandled"),
        "masterExitSeconds": exit,
        "events": [{k: v for k, v in e.items() if k != "victimSet"} for e in events],
    }
    checks = {
        "no message lost on healthy workers": lost == 0 and healthy > 0,
        "stopped worker's clients resumed within one interval": bool(resumes)
        and max(resumes) <= interval + RESUME_MARGIN,
        "reconnections welcomed within 1 s": bool(welcomes)
        and result["welcomeOver1s"] == 0
        and neverWelcomed == 0,
        "scrapes answered within the deadline": bool(gets)
        and result["scrapesOverDeadline"] == 0
        and result["scrapesNot200"] == 0,
        "POSTs refused with 405 within the deadline": bool(posts)
        and result["postsNot405"] == 0
        and max(s["seconds"] for s in posts) <= limit,
        "RSS and descriptors flat (under 5%)": all(
            g is None or g < GROWTH_LIMIT for g in growth.values()
        ),
        "no traceback in the log": result["tracebacks"] == 0 and result["unhandled"] == 0,
        "master exits within --shutdown-timeout + 5 s": exit <= 5.0 + 5.0,
    }
    result["checks"] = checks
    result["passed"] = all(checks.values())
    return result


def percentile(values: list[float], share: float) -> float | None:
    """The value below which C{share} of C{values} lie."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def resourceGrowth(samples: list[dict[str, Any]]) -> dict[str, float | None]:
    """
    Growth from the first sample to the last: the master's RSS and
    descriptors, and the workers' summed (they hold the same connections
    between them whichever pids they have).
    """
    if len(samples) < 2:
        return {}
    first, last = samples[0], samples[-1]

    def total(sample: dict[str, Any], what: str, labels: list[str]) -> int:
        return sum(sample[label][what] for label in labels if label in sample)

    growth: dict[str, float | None] = {}
    for what in ("rss", "fds"):
        a, b = first["master"][what], last["master"][what]
        growth[f"master {what}"] = (b - a) / a if a else None
        a, b = total(first, what, ["1", "2"]), total(last, what, ["1", "2"])
        growth[f"workers {what}"] = (b - a) / a if a else None
    return growth


def summary(r: dict[str, Any]) -> str:
    """The result in a few lines."""

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}s"

    lines = [
        f"chaos soak: {r['connections']} connections, {r['plan']['seconds'] / 60:.1f} min, "
        f"interval {r['plan']['interval']}s, {len(r['schedule'])} faults",
        f"  healthy connection records {r['healthyRecords']}: messages lost {r['messagesLost']}"
        f" (records with gaps {r['healthyRecordsWithGaps']})",
        f"  stopped worker's clients {r['stoppedWorkerClients']}: resumed within "
        f"{secs(r['resumeMax'])} of SIGCONT",
        f"  reconnections {r['reconnections']}: welcomed p50 {secs(r['welcomeP50'])}, "
        f"p99 {secs(r['welcomeP99'])}, max {secs(r['welcomeMax'])}; over 1 s "
        f"{r['welcomeOver1s']}, never {r['reconnectionsNeverWelcomed']}",
        f"  reconnections while a worker was stopped {r['reconnectionsWhileAWorkerWasStopped']}"
        f": welcomed within {secs(r['stoppedWelcomeMax'])} (after its SIGCONT)",
        f"  reconnections while the spawn failed (limit pinned) {r['pinnedReconnections']}: "
        f"welcomed within {secs(r['pinnedWelcomeMax'])}; failed spawns logged "
        f"{r['pinnedSpawnFailures']}",
        f"  scrapes {r['scrapes']}: slowest {secs(r['scrapeMax'])}, over the deadline "
        f"{r['scrapesOverDeadline']}, not 200 {r['scrapesNot200']}",
        f"  POSTs {r['posts']}: slowest {secs(r['postMax'])}, not 405 {r['postsNot405']}",
        "  growth: "
        + ", ".join(
            f"{k} {'-' if v is None else f'{v * 100:+.1f}%'}" for k, v in r["growth"].items()
        ),
        f"  tracebacks {r['tracebacks']}, unhandled {r['unhandled']}; master exit "
        f"{secs(r['masterExitSeconds'])} after SIGTERM",
    ]
    for name, ok in r["checks"].items():
        lines.append(f"  [{'PASS' if ok else 'FAIL'}] {name}")
    return "\n".join(lines)
