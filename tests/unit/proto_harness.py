"""Feeding helpers shared by the tsproxy.proto tests (h11's tr() idea).

An Outcome is everything a server would observe from one handshake: the bytes it was told to
send (a failure's reply included), the request, the leftover payload and the failure reason.
Feeding the same bytes in any pieces must give the same Outcome.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from tsproxy.proto import (
    AssociateRequest,
    ConnectRequest,
    Failure,
    HttpConnectHandshake,
    LocalRequest,
    ProtocolError,
    Socks5Handshake,
)
from tsproxy.proto.http_head import MAX_HEAD
from tsproxy.proto.socks5 import MAX_BUFFER

Handshake = Socks5Handshake | HttpConnectHandshake
Make = Callable[[], Handshake]

# Bytes a client might pipeline after its request: must come out as .leftover untouched.
TRAILING = b"\x16\x03\x01 payload\r\n\r\n\x05\x01\x00"


@dataclass(frozen=True)
class Outcome:
    sent: bytes
    request: ConnectRequest | AssociateRequest | None = None
    leftover: bytes = b""
    error: str | None = None  # ProtocolError.reason
    local: LocalRequest | None = None  # HTTP only: GET /proxy.pac, /metrics
    kind: Failure | None = None  # ProtocolError.kind

    @property
    def pending(self) -> bool:
        return self.request is None and self.error is None and self.local is None


def cap(hs: Handshake) -> int:
    return MAX_BUFFER if isinstance(hs, Socks5Handshake) else MAX_HEAD


def run(make: Make, chunks: Iterable[bytes], eof: bool = False) -> Outcome:
    """Feed the chunks (then EOF if asked) to a fresh handshake; stop at the first failure."""
    hs = make()
    sent = bytearray()
    try:
        for chunk in [*chunks, *([b""] if eof else [])]:
            sent += hs.receive_data(chunk)
            assert hs.buffered <= cap(hs)
    except ProtocolError as error:
        assert hs.buffered == 0
        assert hs.request is None
        return Outcome(bytes(sent) + error.reply, error=error.reason, kind=error.kind)
    local = hs.local if isinstance(hs, HttpConnectHandshake) else None
    request = hs.event if isinstance(hs.event, AssociateRequest) else hs.request
    assert hs.event == (local or request)
    return Outcome(bytes(sent), request, hs.leftover, local=local)


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """`data` cut at the given offsets, without empty pieces (b"" would mean EOF)."""
    edges = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if a < b]


def tr(make: Make, data: bytes, expected: Outcome) -> None:
    """`data` gives `expected` fed whole, byte by byte, and with more bytes behind it."""
    assert run(make, [data]) == expected
    assert run(make, [data[i:i + 1] for i in range(len(data))]) == expected
    if expected.pending:
        return
    trailing = expected
    if expected.request is not None or expected.local is not None:
        trailing = replace(expected, leftover=expected.leftover + TRAILING)
    assert run(make, [data + TRAILING]) == trailing
    assert run(make, [data, TRAILING]) == trailing


def refused(make: Make, data: bytes, sent: bytes, reason: str) -> None:
    """`data` is refused with exactly `sent` and a reason containing `reason`, however fed."""
    whole = run(make, [data])
    assert whole.sent == sent
    assert whole.error is not None and reason in whole.error, whole.error
    tr(make, data, whole)


def closed_at_every_prefix(make: Make, data: bytes) -> None:
    """EOF before the request is complete closes without a reply of its own."""
    for end in range(len(data)):
        prefix = [data[:end]] if end else []  # b"" would be EOF already
        before = run(make, prefix)
        assert before.pending
        after = run(make, prefix, eof=True)
        assert after.sent == before.sent
        assert after.error == "client closed the connection mid-handshake"
