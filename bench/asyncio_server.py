"""
The same server on asyncio (or uvloop), as a user of either would write it:
one C{loop.call_later} per connection, called again from its own callback on
every tick; the same welcome, echo and message as C{twistd timerserver} and
bench/baseline_server.py.  The issue's yardstick for the message path: the
wheel must cost less per message than this on uvloop, in the same run.

    python bench/asyncio_server.py --port 0 --interval 2 [--loop uvloop]
"""

from __future__ import annotations

import argparse
import asyncio

# Run by path, like bench/baseline_server.py: its own copy of the texts.
WELCOME = b"Welcome to the timer server\r\n"
MESSAGE = b"Periodic per connection message\r\n"


class Periodic(asyncio.Protocol):
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.transport: asyncio.Transport | None = None
        self.call: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(WELCOME)  # type: ignore[attr-defined]
        self.call = asyncio.get_running_loop().call_later(self.interval, self.tick)

    def tick(self) -> None:  # never after connection_lost, which cancels it
        self.transport.write(MESSAGE)  # type: ignore[union-attr]
        self.call = asyncio.get_running_loop().call_later(self.interval, self.tick)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.call is not None:
            self.call.cancel()


async def serve(port: int, interval: float, loopName: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Periodic(interval), "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"{loopName} listening on 127.0.0.1 port={bound}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    coroutine = serve(args.port, args.interval, args.loop)
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            coroutine.close()
            raise SystemExit("uvloop is not installed: pip install 'timerserver[bench]'") from None
        uvloop.run(coroutine)
    else:
        asyncio.run(coroutine)


if __name__ == "__main__":
    main()
