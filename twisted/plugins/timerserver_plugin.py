"""The C{twistd timerserver} plugin."""

from twisted.application.service import ServiceMaker

timerserver = ServiceMaker(
    "timerserver",
    "timerserver.tap",
    "An echo server that writes a periodic message on every connection from its own timer.",
    "timerserver",
)
