"""Every HTTP response the proxy writes itself: the tunnel's 200, the error responses (each
closes the connection) and its own resources (the PAC file, the metrics, the status page).
The parsers and the server decide on typed values (a Reply, an HTTPStatus, a LocalRequest);
the bytes are made here."""

from __future__ import annotations

from http import HTTPStatus

from .base import Failure, LocalRequest, ProtocolError, Reply

REALM = "tsproxy"
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
PAC_TYPE = "application/x-ns-proxy-autoconfig"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text exposition
PAGE_TYPE = "text/html; charset=utf-8"

# What a failed dial looks like to an HTTP client. REP 1 is what the resolver being down
# maps to, a gateway problem like the others, hence 502 rather than 500.
STATUS = {
    Reply.GENERAL_FAILURE: HTTPStatus.BAD_GATEWAY,
    Reply.NOT_ALLOWED: HTTPStatus.FORBIDDEN,
    Reply.NETWORK_UNREACHABLE: HTTPStatus.BAD_GATEWAY,
    Reply.HOST_UNREACHABLE: HTTPStatus.BAD_GATEWAY,
    Reply.CONNECTION_REFUSED: HTTPStatus.BAD_GATEWAY,
    Reply.TTL_EXPIRED: HTTPStatus.GATEWAY_TIMEOUT,
    Reply.COMMAND_NOT_SUPPORTED: HTTPStatus.METHOD_NOT_ALLOWED,
    Reply.ADDRESS_TYPE_NOT_SUPPORTED: HTTPStatus.BAD_REQUEST,
}


def response(status: HTTPStatus, *headers: str) -> bytes:
    """A complete error response: no body, and the connection closes after it."""
    lines = [f"HTTP/1.1 {status.value} {status.phrase}", *headers,
             "Content-Length: 0", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def local_reply(request: LocalRequest, content_type: str, text: str) -> bytes:
    """A resource of the proxy's own (the PAC file, the metrics, the page) as a complete
    response; HEAD gets the head alone. no-cache: browsers fetch the PAC again when they
    look, so a conf change reaches them without a stale copy (and the page is always now)."""
    body = text.encode("utf-8")
    head = "\r\n".join(["HTTP/1.1 200 OK", f"Content-Type: {content_type}",
                         f"Content-Length: {len(body)}", "Cache-Control: no-cache",
                         "Connection: close", "", ""]).encode("latin-1")
    return head if request.method == "HEAD" else head + body


def refused(status: HTTPStatus, reason: str, *headers: str) -> ProtocolError:
    """The handshake fails with `status`."""
    return ProtocolError(reason, response(status, *headers))


def bad(reason: str) -> ProtocolError:
    return refused(HTTPStatus.BAD_REQUEST, reason)


def unauthorized(reason: str) -> ProtocolError:
    return ProtocolError(reason, response(HTTPStatus.PROXY_AUTHENTICATION_REQUIRED,
                                          f'Proxy-Authenticate: Basic realm="{REALM}"'),
                         Failure.LOGIN)
