"""Hypothesis fuzzing of both sans-I/O handshakes (tsproxy.proto).

Properties, for SOCKS5 and HTTP CONNECT alike:

- a valid handshake (random methods, logins, address types, names, ports, headers, line ends,
  pipelined payload), cut into any pieces, gives exactly the expected request, leftover and
  sent bytes;
- any input (random bytes, or a valid handshake with a few bytes changed, inserted or cut),
  in any pieces, with or without EOF: nothing but ProtocolError is ever raised, the bytes held
  never exceed the cap (proto_harness.run checks it after every call), and the outcome is the
  one the same bytes fed whole give.

CI runs a bounded, repeatable fuzz: TSPROXY_FUZZ_EXAMPLES (default 300) examples per property,
derandomized, no deadline, and no example database written into the tree. A longer run draws
fresh random examples every time:

    TSPROXY_FUZZ_EXAMPLES=50000 python3 -m pytest tests/unit/test_proto_fuzz.py -q

Add `--hypothesis-seed=N` to repeat one such run; a failure prints the shrunk example.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from proto_harness import Make, Outcome, run, split

from tsproxy.proto import (
    AssociateRequest,
    Authenticate,
    ConnectRequest,
    HttpConnectHandshake,
    Socks5Handshake,
)

pytestmark = pytest.mark.unit

FUZZ = settings(
    max_examples=int(os.environ.get("TSPROXY_FUZZ_EXAMPLES", "300")),
    derandomize="TSPROXY_FUZZ_EXAMPLES" not in os.environ,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Header values: visible ASCII, space, tab and obs-text (bytes 0x80-0xFF read as latin-1).
VALUE_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f")
LABEL = st.from_regex(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", fullmatch=True)
HOSTNAME = st.builds(
    lambda labels, dot: ".".join(labels)[:253].rstrip(".-") + dot,
    st.lists(LABEL, min_size=1, max_size=8), st.sampled_from(["", "."]),
).filter(lambda name: name not in ("", "."))
# Login text: at most 60 characters, so that their UTF-8 always fits a length byte.
SECRET = st.text(max_size=60)
# RFC 7617: a Basic user-id cannot hold ':'; no lone surrogates, they are not UTF-8.
BASIC_USER = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=":"),
                     min_size=1, max_size=60)


def accepts(user: str, password: str) -> Authenticate:
    return lambda u, p: (u, p) == (user, password)


def address(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """(kind, host as the request carries it, packed form for SOCKS)."""
    kind = draw(st.sampled_from(["ipv4", "ipv6", "name"]))
    if kind == "ipv4":
        packed = draw(st.binary(min_size=4, max_size=4))
        return kind, str(ipaddress.IPv4Address(packed)), packed
    if kind == "ipv6":
        packed = draw(st.binary(min_size=16, max_size=16))
        return kind, str(ipaddress.IPv6Address(packed)), packed
    name = draw(HOSTNAME)
    return kind, name, name.encode()


@st.composite
def socks5_handshakes(draw: st.DrawFn) -> tuple[bytes, Authenticate | None, Outcome]:
    auth = draw(st.booleans())
    wanted = 2 if auth else 0
    # 0xFF ("no acceptable method") stands in for a draw of the wanted method itself.
    others = draw(st.lists(st.integers(0, 255).map(lambda m: 0xFF if m == wanted else m),
                           max_size=20))
    methods = draw(st.permutations([wanted, *others]))
    data = bytes([5, len(methods), *methods])
    sent = bytes([5, wanted])
    authenticate, user = None, None
    if auth:
        user = draw(st.text(min_size=1, max_size=60))
        password = draw(SECRET)
        raw_user, raw_password = user.encode(), password.encode()
        data += bytes([1, len(raw_user)]) + raw_user + bytes([len(raw_password)]) + raw_password
        sent += b"\x01\x00"
        authenticate = accepts(user, password)
    kind, host, packed = address(draw)
    atyp = {"ipv4": b"\x01", "ipv6": b"\x04", "name": b"\x03" + bytes([len(packed)])}[kind]
    # UDP ASSOCIATE may name port 0 (the client does not know its port yet).
    command = draw(st.sampled_from([1, 3]))
    port = draw(st.integers(1 if command == 1 else 0, 65535))
    data += bytes([5, command, draw(st.integers(0, 255))]) + atyp + packed + port.to_bytes(2, "big")
    payload = draw(st.binary(max_size=64))
    kind = ConnectRequest if command == 1 else AssociateRequest
    expected = Outcome(sent, kind(host, port, "socks5", user), payload)
    return data + payload, authenticate, expected


@st.composite
def http_handshakes(draw: st.DrawFn) -> tuple[bytes, Authenticate | None, Outcome]:
    kind, host, _ = address(draw)
    port = draw(st.integers(1, 65535))
    digits = str(port).zfill(draw(st.integers(len(str(port)), 5)))
    target = f"[{host}]:{digits}" if kind == "ipv6" else f"{host}:{digits}"
    version = draw(st.sampled_from(["HTTP/1.0", "HTTP/1.1"]))
    names = st.text(TCHAR, min_size=1, max_size=20).filter(
        lambda name: name.lower() != "proxy-authorization")
    headers = [f"{name}:{draw(st.sampled_from(['', ' ', '  ', chr(9)]))}{value}"
               for name, value in draw(st.lists(
                   st.tuples(names, st.text(VALUE_CHARS, max_size=40)), max_size=8))]
    authenticate, user = None, None
    if draw(st.booleans()):
        user = draw(BASIC_USER)
        password = draw(SECRET)
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        scheme = draw(st.sampled_from(["Basic", "basic", "BASIC"]))
        where = draw(st.integers(0, len(headers)))
        headers.insert(where, f"Proxy-Authorization: {scheme} {token}")
        authenticate = accepts(user, password)
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    head = eol.join([f"CONNECT {target} {version}", *headers, "", ""])
    payload = draw(st.binary(max_size=64))
    expected = Outcome(b"", ConnectRequest(host, port, "http", user), payload)
    return head.encode("latin-1") + payload, authenticate, expected


def mutate(draw: st.DrawFn, data: bytes) -> bytes:
    """A few random edits: the inputs a fuzzer finds by starting from something valid."""
    edited = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(edited)))
        edit = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        byte = draw(st.integers(0, 255))
        if edit == "replace" and at < len(edited):
            edited[at] = byte
        elif edit == "insert":
            edited[at:at] = bytes([byte]) * draw(st.integers(1, 300))
        elif edit == "delete":
            del edited[at:at + draw(st.integers(1, 8))]
        else:
            del edited[at:]
    return bytes(edited)


def kind_of(reason: str | None) -> str:
    """A refusal's reason without the client's data in it."""
    return re.sub(r"\b[0-9]+\b", "N", str(reason).split("'")[0].split(" (")[0].split(":")[0])


def pieces(draw: st.DrawFn, data: bytes) -> list[bytes]:
    return split(data, draw(st.lists(st.integers(0, len(data)), max_size=12)))


def same_in_any_pieces(draw: st.DrawFn, make: Make, data: bytes) -> None:
    eof = draw(st.booleans())
    whole = run(make, [data] if data else [], eof)  # b"" would be EOF
    assert run(make, pieces(draw, data), eof) == whole
    # How far inputs get: `--hypothesis-show-statistics` tallies these.
    event("request" if whole.request else "pending" if whole.pending else kind_of(whole.error))


@FUZZ
@given(socks5_handshakes(), st.data())
def test_socks5_valid_handshake_in_any_pieces(
        case: tuple[bytes, Authenticate | None, Outcome], data: st.DataObject) -> None:
    raw, authenticate, expected = case
    make = lambda: Socks5Handshake(authenticate)  # noqa: E731
    assert run(make, [raw]) == expected
    assert run(make, pieces(data.draw, raw)) == expected


@FUZZ
@given(http_handshakes(), st.data())
def test_http_valid_handshake_in_any_pieces(
        case: tuple[bytes, Authenticate | None, Outcome], data: st.DataObject) -> None:
    raw, authenticate, expected = case
    make = lambda: HttpConnectHandshake(authenticate)  # noqa: E731
    assert run(make, [raw]) == expected
    assert run(make, pieces(data.draw, raw)) == expected


@FUZZ
@given(st.one_of(
    socks5_handshakes().flatmap(lambda case: st.tuples(st.just(case[0]), st.just(case[1]))),
    st.tuples(st.binary(max_size=600).map(lambda tail: b"\x05" + tail),
              st.sampled_from([None, accepts("alice", "secret")])),
    st.tuples(st.binary(max_size=600), st.sampled_from([None, accepts("alice", "secret")])),
), st.booleans(), st.data())
def test_socks5_any_input(
        case: tuple[bytes, Authenticate | None], edit: bool, data: st.DataObject) -> None:
    raw, authenticate = case
    if edit:
        raw = mutate(data.draw, raw)
    same_in_any_pieces(data.draw, lambda: Socks5Handshake(authenticate), raw)


@FUZZ
@given(st.one_of(
    http_handshakes().flatmap(lambda case: st.tuples(st.just(case[0]), st.just(case[1]))),
    st.tuples(st.binary(max_size=600), st.sampled_from([None, accepts("alice", "secret")])),
    st.tuples(  # lines of anything, so headers and credentials get reached too
        st.lists(st.binary(max_size=80), max_size=10).map(
            lambda lines: b"CONNECT h:1 HTTP/1.1\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"),
        st.sampled_from([None, accepts("alice", "secret")])),
), st.booleans(), st.data())
def test_http_any_input(
        case: tuple[bytes, Authenticate | None], edit: bool, data: st.DataObject) -> None:
    raw, authenticate = case
    if edit:
        raw = mutate(data.draw, raw)
    same_in_any_pieces(data.draw, lambda: HttpConnectHandshake(authenticate), raw)
