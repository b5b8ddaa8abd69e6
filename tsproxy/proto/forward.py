"""A forward's "handshake": none. A client that connects to a forward's port has asked for
the forward's target by connecting, so the request is complete before a byte is read, and
nothing is ever said back: a refusal is the connection closed, a success the target's own
bytes. It has the shape of the other handshakes, so the server serves all three one way.
"""

from __future__ import annotations

from http import HTTPStatus

from tsproxy_generator.model import Forward

from .base import ConnectRequest, Reply


class ForwardHandshake:
    leftover = b""

    def __init__(self, forward: Forward) -> None:
        self.event = ConnectRequest(forward.host, forward.target_port, "forward", None)

    def reply(self, code: Reply, bound: tuple[str, int] | None = None) -> bytes:
        return b""

    def refusal(self, code: Reply, status: HTTPStatus | None = None) -> tuple[bytes, str]:
        return b"", "closed"
