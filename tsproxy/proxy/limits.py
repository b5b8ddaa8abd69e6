"""Connection caps: max_connections in all, max_connections_per_client from one address.

A connection holds its slot from accept to close, handshake included, so a slow or stuck
client counts too. Beyond a cap the connection is still answered (SOCKS REP 1 or 2, HTTP
503), but only REFUSING_MAX of those refusals run at once; past that a connection is closed
at once, so a flood costs the proxy nothing that lasts.
"""

from __future__ import annotations

REFUSING_MAX = 256

GLOBAL = "too many connections"
PER_CLIENT = "too many connections from this client"


class Limits:
    def __init__(self, total: int, per_client: int) -> None:
        self.total_max = total
        self.per_client_max = per_client
        self.active = 0
        self.refusing = 0
        self._per_client: dict[str, int] = {}

    def admit(self, client: str) -> str | None:
        """Take a slot for a connection from `client`; the cap it would break otherwise."""
        if self.active >= self.total_max:
            return GLOBAL
        count = self._per_client.get(client, 0)
        if count >= self.per_client_max:
            return PER_CLIENT
        self._per_client[client] = count + 1
        self.active += 1
        return None

    def release(self, client: str) -> None:
        self.active -= 1
        count = self._per_client[client] - 1
        if count:
            self._per_client[client] = count
        else:
            del self._per_client[client]  # the map only holds clients with connections

    def start_refusal(self) -> bool:
        """Whether an over-cap connection may still be answered before closing."""
        if self.refusing >= REFUSING_MAX:
            return False
        self.refusing += 1
        return True

    def end_refusal(self) -> None:
        self.refusing -= 1
