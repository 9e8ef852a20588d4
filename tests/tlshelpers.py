"""
Certificates made in the test (trustme) and TLS clients over loopback, for
tests of C{ssl:} endpoints.
"""

from __future__ import annotations

import socket
import ssl
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest


class Certificates:
    """A throwaway CA and a server certificate for localhost and 127.0.0.1."""

    def __init__(self) -> None:
        try:
            import OpenSSL  # noqa: F401
            import trustme
        except ImportError as e:
            raise SkipTest(f"TLS tests need pip install '.[test]' ({e})") from None
        self.directory = Path(tempfile.mkdtemp(prefix="timerserver-tls-"))
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("localhost", "127.0.0.1")
        self.key = self.directory / "key.pem"
        self.cert = self.directory / "cert.pem"
        self.chain = self.directory / "chain.pem"
        cert.private_key_pem.write_to_path(str(self.key))
        cert.cert_chain_pems[0].write_to_path(str(self.cert))
        self.ca.cert_pem.write_to_path(str(self.chain))

    def endpoint(self, port: int | str = 0, interface: str = "127.0.0.1") -> str:
        return f"ssl:{port}:privateKey={self.key}:certKey={self.cert}:interface={interface}"

    def clientContext(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def connect(
        self, port: int, rcvbuf: int | None = None, context: ssl.SSLContext | None = None
    ) -> ssl.SSLSocket:
        raw = socket.socket()
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(5)
        raw.connect(("127.0.0.1", port))
        return (context or self.clientContext()).wrap_socket(raw, server_hostname="localhost")
