"""
The kernel's floor under a periodic message: what one 35-byte message costs
to C{send} on one loopback TCP connection and to C{recv} on the other end,
with no server, no event loop and no process to wake.  One process holds
both ends of N connections, sends one message on each, then reads each.

bench/server.py's CPU per message (server and load clients) can be no lower
than this; at 100,000 messages a second on two cores it says how much of the
machine the kernel alone takes.

    python -m bench.floor [--connections 1000,9000] [--messages 200000]
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import time
from typing import Any

from bench.results import writeResults

MESSAGE = b"Periodic per connection message\r\n"


def connectPairs(count: int) -> tuple[list[socket.socket], list[socket.socket]]:
    """C{count} loopback TCP connections: their server ends and their client ends."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    servers, clients = [], []
    try:
        for _ in range(count):
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
            for sock in (client, server):
                sock.setblocking(False)
            clients.append(client)
            servers.append(server)
    finally:
        listener.close()
    return servers, clients


def measure(count: int, messages: int) -> dict[str, Any]:
    servers, clients = connectPairs(count)
    sending = receiving = 0.0
    sent = received = 0
    try:
        time.sleep(0.2)
        while sent < messages:
            t0 = time.process_time()
            for sock in servers:
                sock.send(MESSAGE)
            t1 = time.process_time()
            for sock in clients:
                received += len(sock.recv(65536)) // len(MESSAGE)
            t2 = time.process_time()
            sending += t1 - t0
            receiving += t2 - t1
            sent += count
            time.sleep(0.02)  # each round's delayed ACKs go out between rounds, as in a server
    finally:
        for sock in servers + clients:
            sock.close()
    return {
        "connections": count,
        "messages": sent,
        "received": received,
        "sendMicroseconds": sending / sent * 1e6,
        "recvMicroseconds": receiving / sent * 1e6,
        "coresAt100000PerSecond": (sending + receiving) / sent * 100_000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", default="1000,9000")
    parser.add_argument("--messages", type=int, default=200_000, help="per connection count")
    parser.add_argument("--json", default="bench/results/floor.json")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = []
    for count in map(int, args.connections.split(",")):
        results.append(measure(count, args.messages))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(f"\n{'connections':>12}{'send us':>9}{'recv us':>9}{'cores at 100k/s':>17}")
    for r in results:
        print(
            f"{r['connections']:>12}{r['sendMicroseconds']:>9.2f}{r['recvMicroseconds']:>9.2f}"
            f"{r['coresAt100000PerSecond']:>17.2f}"
        )
    writeResults(results, args.json)


if __name__ == "__main__":
    main()
