"""
The baseline: the timer server as a Twisted user would write it by hand.

One C{callLater} per connection, called again from its own callback on every
tick; the same welcome, echo and message as C{twistd timerserver}.

    python bench/baseline_server.py --port tcp:0:interface=127.0.0.1 --interval 2
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import endpoints, protocol, reactor
from twisted.python import log

WELCOME = b"Welcome to the timer server\r\n"
MESSAGE = b"Periodic per connection message\r\n"


class Periodic(protocol.Protocol):
    call = None

    def connectionMade(self) -> None:
        self.transport.write(WELCOME)
        self.call = reactor.callLater(self.factory.interval, self.tick)

    def tick(self) -> None:
        self.transport.write(MESSAGE)
        self.call = reactor.callLater(self.factory.interval, self.tick)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason: object = None) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", default="tcp:5051:interface=127.0.0.1")
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args()
    factory = protocol.Factory.forProtocol(Periodic)
    factory.interval = args.interval
    factory.noisy = False

    def listening(port: object) -> None:
        print(f"baseline listening on {port.getHost()}", flush=True)

    def failed(failure: object) -> None:
        print(f"baseline cannot listen: {failure}", flush=True)
        reactor.stop()

    endpoints.serverFromString(reactor, args.port).listen(factory).addCallbacks(listening, failed)
    log.startLogging(sys.stdout, setStdout=False)
    reactor.run()


if __name__ == "__main__":
    main()
