"""SOCKS5 handshake: every good and bad input the proxy takes -> exact bytes, however it is fed."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from proto_harness import Make, Outcome, closed_at_every_prefix, refused, run, tr

from tsproxy.proto import (
    AssociateRequest,
    ConnectRequest,
    Failure,
    ProtocolError,
    Reply,
    Socks5Handshake,
    is_host,
    sniff,
)

pytestmark = pytest.mark.unit

NO_AUTH = b"\x05\x01\x00"
USER_PASS = b"\x05\x01\x02"
LOCALHOST_80 = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50"
ALICE = b"\x01\x05alice\x06secret"
# 05 REP 00 ATYP=1 0.0.0.0 port 0: every refusal of a request looks like this.
REFUSED = {code: bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0]) for code in Reply}


def domain(name: bytes, port: int = 443, command: int = 1) -> bytes:
    return bytes([5, command, 0, 3, len(name)]) + name + port.to_bytes(2, "big")


class Users:
    """An authenticate callback that knows alice and records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, user: str, password: str) -> bool:
        self.calls.append((user, password))
        return (user, password) in {("alice", "secret"), ("bob", ""), ("jürgen", "pässwörd")}


def no_auth() -> Socks5Handshake:
    return Socks5Handshake()


def with_auth() -> Socks5Handshake:
    return Socks5Handshake(Users())


def connect(host: str, port: int, user: str | None = None) -> ConnectRequest:
    return ConnectRequest(host, port, "socks5", user)


@pytest.mark.parametrize(("request_bytes", "expected"), [
    (LOCALHOST_80, connect("127.0.0.1", 80)),
    (b"\x05\x01\x00\x01\x64\x40\x00\x07\xff\xff", connect("100.64.0.7", 65535)),
    (b"\x05\x01\x00\x04" + bytes.fromhex("fd7a115ca1e000000000000000000001") + b"\x00\x16",
     connect("fd7a:115c:a1e0::1", 22)),
    (domain(b"gpu1.fgpu"), connect("gpu1.fgpu", 443)),
    (domain(b"100.64.0.7.fgpu"), connect("100.64.0.7.fgpu", 443)),
    (domain(b"Gpu1.FGPU."), connect("Gpu1.FGPU.", 443)),
    (domain(b"a." * 127), connect("a." * 127, 443)),  # 253 characters and the root's dot
    (domain(b"_srv.my-host.fgpu"), connect("_srv.my-host.fgpu", 443)),
    (domain(b"127.0.0.1", 80), connect("127.0.0.1", 80)),  # the egress policy judges it
    (domain(b"::1", 80), connect("::1", 80)),
    (domain(b".".join([b"a" * 63] * 4)[:253]), connect(".".join(["a" * 63] * 4)[:253], 443)),
    (domain(b".".join([b"a" * 63] * 4)[:253] + b"."),
     connect(".".join(["a" * 63] * 4)[:253] + ".", 443)),
    (b"\x05\x01\x07\x01\x7f\x00\x00\x01\x00\x50", connect("127.0.0.1", 80)),  # RSV ignored
])
def test_connect_without_auth(request_bytes: bytes, expected: ConnectRequest) -> None:
    tr(no_auth, NO_AUTH + request_bytes, Outcome(b"\x05\x00", expected))


def associate(host: str, port: int, user: str | None = None) -> AssociateRequest:
    return AssociateRequest(host, port, "socks5", user)


@pytest.mark.parametrize(("request_bytes", "expected"), [
    # RFC 1928 section 7: zeros when the client does not know where it will send from.
    (b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00", associate("0.0.0.0", 0)),
    (b"\x05\x03\x00\x01\x64\x50\x00\x02\x13\x88", associate("100.80.0.2", 5000)),
    (b"\x05\x03\x00\x04" + bytes(16) + b"\x00\x00", associate("::", 0)),
    (domain(b"client.fgpu", 0, command=3), associate("client.fgpu", 0)),
])
def test_udp_associate(request_bytes: bytes, expected: AssociateRequest) -> None:
    tr(no_auth, NO_AUTH + request_bytes, Outcome(b"\x05\x00", expected))


def test_udp_associate_after_a_login() -> None:
    tr(with_auth, USER_PASS + ALICE + b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00",
       Outcome(b"\x05\x02\x01\x00", associate("0.0.0.0", 0, "alice")))


def test_udp_associate_without_the_login_is_refused() -> None:
    refused(with_auth, USER_PASS + b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00",
            b"\x05\x02\x01\x01", "RFC 1929 login with version byte 5")


@pytest.mark.parametrize("greeting", [
    b"\x05\x01\x00", b"\x05\x02\x02\x00", b"\x05\x04\x80\x01\xfe\x00", bytes([5, 255, *range(255)]),
])
def test_any_greeting_offering_no_auth(greeting: bytes) -> None:
    tr(no_auth, greeting + LOCALHOST_80, Outcome(b"\x05\x00", connect("127.0.0.1", 80)))


@pytest.mark.parametrize(("login", "user"), [
    (ALICE, "alice"),
    (b"\x01\x03bob\x00", "bob"),  # PLEN 0: the callback decides
    (b"\x01\x07j\xc3\xbcrgen\x0ap\xc3\xa4ssw\xc3\xb6rd", "jürgen"),
])
def test_connect_with_auth(login: bytes, user: str) -> None:
    tr(with_auth, b"\x05\x02\x00\x02" + login + LOCALHOST_80,
       Outcome(b"\x05\x02\x01\x00", connect("127.0.0.1", 80, user)))


def test_optimistic_client_gets_its_payload_forwarded() -> None:
    """Greeting, request and payload in one write, as optimistic SOCKS clients send them."""
    hs = Socks5Handshake()
    assert hs.receive_data(NO_AUTH + domain(b"gpu1.fgpu", 80) + b"GET / HTTP/1.1\r\n") == b"\x05\x00"
    assert hs.request == connect("gpu1.fgpu", 80)
    assert hs.leftover == b"GET / HTTP/1.1\r\n"
    # Reading on before dialing is allowed: it is payload too; EOF is the caller's to see.
    assert hs.receive_data(b"\r\n") == b""
    assert hs.receive_data(b"") == b""
    assert hs.leftover == b"GET / HTTP/1.1\r\n\r\n"


def test_the_callback_is_asked_once_per_login() -> None:
    users = Users()
    hs = Socks5Handshake(users)
    for byte in b"\x05\x01\x02" + ALICE + LOCALHOST_80:
        hs.receive_data(bytes([byte]))
    assert users.calls == [("alice", "secret")]


# Refusals: (handshake factory, client bytes, exact bytes sent before closing, reason).
REFUSALS = [
    # VER != 5: close without a reply (SOCKS4, HTTP, TLS...).
    (no_auth, b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", b"", "not SOCKS5: version byte 4"),
    (no_auth, b"\x00", b"", "not SOCKS5: version byte 0"),
    # NMETHODS 0 is a complete greeting that offers nothing.
    (no_auth, b"\x05\x00", b"\x05\xff", "offered none"),
    (no_auth, b"\x05\x02\x01\x80", b"\x05\xff", "offered GSSAPI,128"),
    (no_auth, USER_PASS, b"\x05\xff", "wanted NO_AUTH"),
    (with_auth, NO_AUTH, b"\x05\xff", "wanted USERNAME_PASSWORD"),
    # RFC 1929.
    (with_auth, USER_PASS + b"\x05\x05alice\x06secret", b"\x05\x02\x01\x01", "version byte 5"),
    (with_auth, USER_PASS + b"\x01\x00\x06secret", b"\x05\x02\x01\x01", "empty user name"),
    (with_auth, USER_PASS + b"\x01\x05alice\x05wrong", b"\x05\x02\x01\x01",
     "authentication failed for user 'alice'"),
    (with_auth, USER_PASS + b"\x01\x03eve\x06secret", b"\x05\x02\x01\x01",
     "authentication failed for user 'eve'"),
    (with_auth, USER_PASS + b"\x01\x02\xff\xfe\x06secret", b"\x05\x02\x01\x01", "not in UTF-8"),
    # CMD: BIND, unknown -> REP 7, checked before the address type.
    (no_auth, NO_AUTH + b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50",
     b"\x05\x00" + REFUSED[Reply.COMMAND_NOT_SUPPORTED], "command BIND not supported"),
    # UDP ASSOCIATE: an unusable name is REP 4 as for CONNECT, ATYP unknown REP 8.
    (no_auth, NO_AUTH + domain(b"", command=3), b"\x05\x00" + REFUSED[Reply.HOST_UNREACHABLE],
     "is not a host name"),
    (no_auth, NO_AUTH + b"\x05\x03\x00\x05", b"\x05\x00" + REFUSED[Reply.ADDRESS_TYPE_NOT_SUPPORTED],
     "address type 5 not supported"),
    (no_auth, NO_AUTH + b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50",
     b"\x05\x00" + REFUSED[Reply.COMMAND_NOT_SUPPORTED], "command 9 not supported"),
    (no_auth, NO_AUTH + b"\x05\x02\x00\x09", b"\x05\x00" + REFUSED[Reply.COMMAND_NOT_SUPPORTED],
     "command BIND not supported"),
    # ATYP unknown -> REP 8 at once: the rest cannot be framed.
    (no_auth, NO_AUTH + b"\x05\x01\x00\x02", b"\x05\x00" + REFUSED[Reply.ADDRESS_TYPE_NOT_SUPPORTED],
     "address type 2 not supported"),
    (no_auth, NO_AUTH + b"\x05\x01\x00\x00", b"\x05\x00" + REFUSED[Reply.ADDRESS_TYPE_NOT_SUPPORTED],
     "address type 0 not supported"),
    # Names that can never resolve -> REP 4, as a failed lookup.
    (no_auth, NO_AUTH + domain(b""), b"\x05\x00" + REFUSED[Reply.HOST_UNREACHABLE], "b''"),
    (no_auth, NO_AUTH + domain(b"gpu1\x00.evil"), b"\x05\x00" + REFUSED[Reply.HOST_UNREACHABLE],
     "b'gpu1\\x00.evil' is not a host name"),
    (no_auth, NO_AUTH + domain("bücher.fgpu".encode()),
     b"\x05\x00" + REFUSED[Reply.HOST_UNREACHABLE], "is not a host name"),
    (no_auth, NO_AUTH + domain(b"a" * 255), b"\x05\x00" + REFUSED[Reply.HOST_UNREACHABLE],
     "is not a host name"),
    (no_auth, NO_AUTH + domain(b"a." * 127 + b"a"), b"\x05\x00" + REFUSED[Reply.HOST_UNREACHABLE],
     "is not a host name"),  # 255 characters in 128 labels
    (no_auth, NO_AUTH + domain(b".".join([b"a" * 63] * 4)[:254]),
     b"\x05\x00" + REFUSED[Reply.HOST_UNREACHABLE], "is not a host name"),  # 254 without
    (no_auth, NO_AUTH + domain(b"a" * 64 + b".fgpu"), b"\x05\x00" + REFUSED[Reply.HOST_UNREACHABLE],
     "is not a host name"),
    (no_auth, NO_AUTH + domain(b"gpu1.-.fgpu!"), b"\x05\x00" + REFUSED[Reply.HOST_UNREACHABLE],
     "is not a host name"),
    (no_auth, NO_AUTH + domain(b"gpu1..fgpu"), b"\x05\x00" + REFUSED[Reply.HOST_UNREACHABLE],
     "is not a host name"),
    (no_auth, NO_AUTH + domain(b"gpu 1.fgpu"), b"\x05\x00" + REFUSED[Reply.HOST_UNREACHABLE],
     "is not a host name"),
    (no_auth, NO_AUTH + domain(b"[::1]"), b"\x05\x00" + REFUSED[Reply.HOST_UNREACHABLE],
     "is not a host name"),
    (no_auth, NO_AUTH + domain(b"fe80::1%eth0"), b"\x05\x00" + REFUSED[Reply.HOST_UNREACHABLE],
     "is not a host name"),
    # Port 0 -> REP 2, whatever the address type.
    (no_auth, NO_AUTH + b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x00",
     b"\x05\x00" + REFUSED[Reply.NOT_ALLOWED], "port 0"),
    (no_auth, NO_AUTH + domain(b"gpu1.fgpu", port=0), b"\x05\x00" + REFUSED[Reply.NOT_ALLOWED],
     "port 0 (host 'gpu1.fgpu')"),
    # A request that is not SOCKS5 any more: close without a reply.
    (no_auth, NO_AUTH + b"\x04\x01\x00\x50", b"\x05\x00", "request with version byte 4"),
    # After a login too.
    (with_auth, USER_PASS + ALICE + b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50",
     b"\x05\x02\x01\x00" + REFUSED[Reply.COMMAND_NOT_SUPPORTED], "command BIND"),
]


@pytest.mark.parametrize(("make", "data", "sent", "reason"), REFUSALS,
                         ids=[f"{i:02}-{case[3]}" for i, case in enumerate(REFUSALS)])
def test_refused(make: Make, data: bytes, sent: bytes, reason: str) -> None:
    refused(make, data, sent, reason)


def test_wrong_password_asks_the_callback_and_empty_user_does_not() -> None:
    users = Users()
    with pytest.raises(ProtocolError):
        Socks5Handshake(users).receive_data(USER_PASS + b"\x01\x05alice\x05wrong")
    with pytest.raises(ProtocolError):
        Socks5Handshake(users).receive_data(USER_PASS + b"\x01\x00\x06secret")
    assert users.calls == [("alice", "wrong")]


@pytest.mark.parametrize(("make", "data"), [
    (no_auth, NO_AUTH + LOCALHOST_80),
    (no_auth, NO_AUTH + domain(b"gpu1.fgpu")),
    (no_auth, b"\x05\x03\x00\x01"),  # a truncated method list waits, then EOF closes
    (with_auth, USER_PASS + ALICE + LOCALHOST_80),
])
def test_eof_mid_handshake_closes_silently(make: Make, data: bytes) -> None:
    closed_at_every_prefix(make, data)


def test_truncated_method_list_waits() -> None:
    tr(no_auth, b"\x05\x03\x00\x01", Outcome(b""))


def test_a_failed_handshake_stays_failed() -> None:
    hs = Socks5Handshake()
    with pytest.raises(ProtocolError):
        hs.receive_data(b"\x04")
    with pytest.raises(ProtocolError, match="already failed") as caught:
        hs.receive_data(NO_AUTH)
    assert caught.value.reply == b""
    assert (hs.request, hs.leftover, hs.buffered) == (None, b"", 0)


@pytest.mark.parametrize(("code", "bound", "expected"), [
    (Reply.SUCCEEDED, ("100.64.0.1", 40000), "05 00 00 01 64400001 9c40"),
    (Reply.SUCCEEDED, ("fd7a:115c:a1e0::1", 1080), "05 00 00 04 fd7a115ca1e000000000000000000001 0438"),
    (Reply.SUCCEEDED, ("fe80::1%veth0", 1), "05 00 00 04 fe800000000000000000000000000001 0001"),
    (Reply.SUCCEEDED, None, "05 00 00 01 00000000 0000"),
    (Reply.HOST_UNREACHABLE, None, "05 04 00 01 00000000 0000"),
    (Reply.CONNECTION_REFUSED, None, "05 05 00 01 00000000 0000"),
    (Reply.TTL_EXPIRED, None, "05 06 00 01 00000000 0000"),
])
def test_reply(code: Reply, bound: tuple[str, int] | None, expected: str) -> None:
    hs = Socks5Handshake()
    hs.receive_data(NO_AUTH + LOCALHOST_80)
    assert hs.reply(code, bound) == bytes.fromhex(expected)


def test_every_refusal_uses_the_rfc_layout() -> None:
    for code in Reply:
        assert Socks5Handshake().reply(code) == REFUSED[code]


@pytest.mark.parametrize(("make", "data", "kind"), [
    (with_auth, USER_PASS + b"\x01\x05alice\x05wrong", Failure.LOGIN),
    (with_auth, USER_PASS + b"\x01\x00\x06secret", Failure.LOGIN),
    (with_auth, USER_PASS + b"\x02\x05alice\x06secret", Failure.LOGIN),
    (with_auth, USER_PASS + b"\x01\x02\xff\xfe\x00", Failure.LOGIN),
    (with_auth, NO_AUTH, Failure.BAD_HANDSHAKE),  # 05 FF: no login was tried
    (no_auth, b"\x04", Failure.BAD_HANDSHAKE),
    (no_auth, NO_AUTH + domain(b"bad host"), Failure.BAD_HANDSHAKE),
])
def test_failure_kind(make: Make, data: bytes, kind: Failure) -> None:
    """What failed is told by a type, never by the reply's bytes, however the bytes come."""
    outcome = run(make, [data])
    assert outcome.kind is kind
    tr(make, data, outcome)


def test_refusal_is_the_reply_and_its_rep() -> None:
    hs = Socks5Handshake()
    hs.receive_data(NO_AUTH + LOCALHOST_80)
    # SOCKS5 has no HTTP status: the REP code is the whole answer.
    assert hs.refusal(Reply.NOT_ALLOWED, HTTPStatus.SERVICE_UNAVAILABLE) == (
        REFUSED[Reply.NOT_ALLOWED], "REP 2")
    assert hs.refusal(Reply.HOST_UNREACHABLE) == (REFUSED[Reply.HOST_UNREACHABLE], "REP 4")


@pytest.mark.parametrize(("first", "protocol"), [
    (0x05, "socks5"), (ord("C"), "http"), (ord("G"), "http"), (ord("z"), "http"),
    (0x04, None), (0x16, None), (0x00, None), (ord("@"), None), (ord("["), None), (0xC3, None),
])
def test_sniff(first: int, protocol: str | None) -> None:
    assert sniff(first) == protocol


@pytest.mark.parametrize(("text", "ok"), [
    ("gpu1", True), ("gpu1.fgpu.", True), ("xn--bcher-kva.de", True), ("100.64.0.7", True),
    ("fd7a:115c:a1e0::1", True), ("a" * 63, True), ("1.2.3.999", True),
    ("", False), (".", False), ("a" * 64, False), ("gpu1-.fgpu", True), ("--1.fgpu", True), ("_dmarc.x", True), ("gpu1..", False),
    ("fe80::1%eth0", False), ("[::1]", False), ("gpu1:22", False), ("bücher.de", False),
    ("a/b", False), ("a\nb", False),
])
def test_is_host(text: str, ok: bool) -> None:
    assert is_host(text) is ok


def test_run_reports_pending() -> None:
    assert run(no_auth, [NO_AUTH]) == Outcome(b"\x05\x00")
