"""The SOCKS5 UDP header (RFC 1928 section 7): every good and bad datagram -> exact result."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_proto_fuzz import FUZZ, HOSTNAME

from tsproxy.proto.socks5_udp import (
    FRAGMENT,
    MALFORMED,
    Datagram,
    DatagramError,
    datagram_header,
    parse_datagram,
)

pytestmark = pytest.mark.unit

V6 = bytes.fromhex("fd7a115ca1e000000000000000000001")


@pytest.mark.parametrize(("raw", "expected"), [
    (b"\x00\x00\x00\x01\x64\x46\x00\x02\x00\x35query", Datagram("100.70.0.2", 53, b"query")),
    (b"\x00\x00\x00\x04" + V6 + b"\x01\xbb\x00", Datagram("fd7a:115c:a1e0::1", 443, b"\x00")),
    (b"\x00\x00\x00\x03\x08web.fgpu\x00\x35?", Datagram("web.fgpu", 53, b"?")),
    (b"\x00\x00\x00\x03\x09127.0.0.1\x00\x35", Datagram("127.0.0.1", 53, b"")),  # policy's job
    (b"\x00\x00\x00\x01\x64\x46\x00\x02\xff\xff", Datagram("100.70.0.2", 65535, b"")),  # empty
    (b"\xff\xff\x00\x01\x64\x46\x00\x02\x00\x35x", Datagram("100.70.0.2", 53, b"x")),  # RSV
    (b"\x00\x00\x00\x03\xfd" + b"a." * 126 + b"a\x00\x35", Datagram("a." * 126 + "a", 53, b"")),
])
def test_parsed(raw: bytes, expected: Datagram) -> None:
    assert parse_datagram(raw) == expected


@pytest.mark.parametrize(("raw", "kind", "reason"), [
    (b"", MALFORMED, "datagram of 0 bytes"),
    (b"\x00\x00\x00", MALFORMED, "datagram of 3 bytes"),
    # FRAG: a relay that does not reassemble MUST drop the datagram (RFC 1928 section 7).
    (b"\x00\x00\x01\x01\x64\x46\x00\x02\x00\x35x", FRAGMENT, "fragment 1"),
    (b"\x00\x00\x80\x01\x64\x46\x00\x02\x00\x35x", FRAGMENT, "fragment 128"),  # high bit: end
    (b"\x00\x00\x00\x02\x64\x46\x00\x02\x00\x35", MALFORMED, "address type 2 unknown"),
    (b"\x00\x00\x00\x05", MALFORMED, "address type 5 unknown"),
    (b"\x00\x00\x00\x01\x64\x46\x00\x02\x00", MALFORMED, "cut short in its header (10 needed)"),
    (b"\x00\x00\x00\x04" + V6[:8], MALFORMED, "cut short in its header (22 needed)"),
    (b"\x00\x00\x00\x03", MALFORMED, "cut short in its name's length"),
    (b"\x00\x00\x00\x03\x08web.fg", MALFORMED, "cut short in its header (15 needed)"),
    (b"\x00\x00\x00\x03\x00\x00\x35", MALFORMED, "name b'' is not a host name"),
    (b"\x00\x00\x00\x03\xff" + b"a." * 127 + b"a\x00\x35", MALFORMED, "is not a host name"),
    (b"\x00\x00\x00\x03\x04a\x00b.\x00\x35", MALFORMED, "is not a host name"),
    (b"\x00\x00\x00\x03\x04\xc3\xa9t\xc3\x00\x35", MALFORMED, "is not a host name"),
    (b"\x00\x00\x00\x03\x40" + b"a" * 64 + b"\x00\x35", MALFORMED, "is not a host name"),
    (b"\x00\x00\x00\x01\x64\x46\x00\x02\x00\x00x", MALFORMED, "port 0 (host '100.70.0.2')"),
])
def test_refused(raw: bytes, kind: str, reason: str) -> None:
    with pytest.raises(DatagramError) as caught:
        parse_datagram(raw)
    assert caught.value.kind == kind
    assert reason in caught.value.reason, caught.value.reason


@pytest.mark.parametrize(("host", "port", "header"), [
    ("100.70.0.2", 53, b"\x00\x00\x00\x01\x64\x46\x00\x02\x00\x35"),
    ("fd7a:115c:a1e0::1", 443, b"\x00\x00\x00\x04" + V6 + b"\x01\xbb"),
    ("fd7a:115c:a1e0::1%tailscale0", 443, b"\x00\x00\x00\x04" + V6 + b"\x01\xbb"),
    ("::ffff:100.70.0.2", 53, b"\x00\x00\x00\x01\x64\x46\x00\x02\x00\x35"),
])
def test_header_of_an_answer(host: str, port: int, header: bytes) -> None:
    assert datagram_header(host, port) == header


@st.composite
def datagrams(draw: st.DrawFn) -> tuple[bytes, Datagram]:
    kind = draw(st.sampled_from(["ipv4", "ipv6", "name"]))
    if kind == "name":
        host = draw(HOSTNAME)
        address = b"\x03" + bytes([len(host)]) + host.encode()
    else:
        packed = draw(st.binary(min_size=4 if kind == "ipv4" else 16,
                                max_size=4 if kind == "ipv4" else 16))
        host = str(ipaddress.ip_address(packed))
        address = (b"\x01" if kind == "ipv4" else b"\x04") + packed
    port, data = draw(st.integers(1, 65535)), draw(st.binary(max_size=64))
    rsv = draw(st.binary(min_size=2, max_size=2))
    return rsv + b"\x00" + address + port.to_bytes(2, "big") + data, Datagram(host, port, data)


@FUZZ
@given(datagrams())
def test_any_valid_datagram(case: tuple[bytes, Datagram]) -> None:
    raw, expected = case
    assert parse_datagram(raw) == expected


@FUZZ
@given(st.one_of(st.binary(max_size=300), datagrams().map(lambda case: case[0][:-1])))
def test_any_input_parses_or_is_refused(raw: bytes) -> None:
    """Nothing but DatagramError, whatever arrives; what parses names a usable destination."""
    try:
        datagram = parse_datagram(raw)
    except DatagramError as error:
        assert error.kind in (FRAGMENT, MALFORMED)
        return
    assert datagram.port > 0 and raw.endswith(datagram.data)


@FUZZ
@given(st.ip_addresses(), st.integers(1, 65535), st.binary(max_size=64))
def test_answers_parse_back(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int,
                            data: bytes) -> None:
    """What the relay sends a client is what a client's parser (the same RFC) reads."""
    shown = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    parsed = parse_datagram(datagram_header(str(address), port) + data)
    assert parsed == Datagram(str(shown or address), port, data)
