"""The resources the proxy serves itself on its port (`GET /proxy.pac`, `GET /metrics`, the
status page `GET /`): each made by an injected source when asked for, given the address the
request arrived on, and answered as one complete response (then the connection closes)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from tsproxy_generator.model import Listen

from ..proto import LocalRequest, local_reply
from ..proto.http_connect import METRICS_PATH, PAC_PATH, PAGE_PATH
from ..proto.http_response import METRICS_TYPE, PAC_TYPE, PAGE_TYPE, response
from .access import client_host

# The text of a resource, for a request that arrived on this address.
LocalSource = Callable[[Listen], Awaitable[str]]
NAMES = {PAC_PATH: "pac", METRICS_PATH: "metrics", PAGE_PATH: "page"}  # log lines, counters
TYPES = {PAC_PATH: PAC_TYPE, METRICS_PATH: METRICS_TYPE, PAGE_PATH: PAGE_TYPE}


async def answer(sources: dict[str, LocalSource], request: LocalRequest,
                 sock: socket.socket) -> tuple[bytes, str, str]:
    """The response, and the counter and log outcome it ends the connection with."""
    what, name = f"{request.method} {request.path}", NAMES[request.path]
    source = sources.get(request.path)
    if source is None:
        return response(HTTPStatus.NOT_FOUND), name, f"{what}: not served"
    local = sock.getsockname()
    arrival = Listen(ipaddress.ip_address(client_host(local[0])), local[1])
    try:
        text = await source(arrival)
    except OSError as error:  # the conf directory unreadable, say
        return (response(HTTPStatus.INTERNAL_SERVER_ERROR), f"{name} error",
                f"{what}: cannot build it: {error}")
    return local_reply(request, TYPES[request.path], text), name, \
        f"{what}: served ({len(text)} bytes)"
