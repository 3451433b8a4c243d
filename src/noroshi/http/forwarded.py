"""The client's address, for the failed-authentication lockout: the peer's, or, when the peer
is a trusted proxy, the one that `X-Forwarded-For` names.

Each proxy appends the address it was reached from, so the list is read from the right: trusted
proxies are skipped, and the first hop that is not one of them is the client. Whatever lies to
its left was written by that client and may be anything. A hop that is not an address ends the
walk at the trusted hop after it, which is then the best that is known.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

from noroshi.config import IPNetwork

__all__ = ["ClientAddress"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ClientAddress:
    """`client_address(peer, headers) -> str`, given the networks of the trusted proxies."""

    __slots__ = ("_trusted",)

    def __init__(self, trusted: Sequence[IPNetwork]) -> None:
        self._trusted = tuple(trusted)

    def __call__(self, peer: str, headers: Mapping[str, str]) -> str:
        if not self._trusted or not self._is_trusted(_parse(peer)):
            return peer
        for hop in reversed(_forwarded_for(headers)):
            address = _parse(hop)
            if address is None:
                break
            peer = str(address)
            if not self._is_trusted(address):
                break
        return peer

    def _is_trusted(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in net for net in self._trusted)


def _forwarded_for(headers: Mapping[str, str]) -> list[str]:
    """Every hop, across repeated header lines (some proxies add a line of their own); a server
    whose headers keep repeated lines apart offers them through `get_all`."""
    get_all = getattr(headers, "get_all", None)
    lines = list(get_all("x-forwarded-for")) if get_all is not None else []
    if get_all is None and (line := headers.get("x-forwarded-for")):
        lines = [line]
    return [hop.strip() for line in lines for hop in line.split(",")]


def _parse(hop: str) -> IPAddress | None:
    """An address, also in the `1.2.3.4:port` and `[::1]:port` forms some proxies write."""
    if hop.startswith("["):
        hop = hop[1 : hop.find("]")]
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        return ipaddress.ip_address(hop)
    except ValueError:
        return None
