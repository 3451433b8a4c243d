"""The client's address behind trusted proxies, over both shapes of headers a server gives:
repeated lines joined into one value (ASGI), or kept apart behind `get_all` (Granian)."""

from __future__ import annotations

import ipaddress

import pytest

from noroshi.http.forwarded import ClientAddress

TRUSTED = ClientAddress([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1")])


class Lines(dict[str, str]):
    """Headers whose repeated lines stay apart, as Granian's are."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__({"x-forwarded-for": lines[0]} if lines else {})
        self.lines = lines

    def get_all(self, name: str) -> list[str]:
        return self.lines if name == "x-forwarded-for" else []


@pytest.mark.parametrize(
    ("peer", "lines", "client"),
    [
        ("203.0.113.1", ["198.51.100.1"], "203.0.113.1"),  # the peer is no proxy of ours
        ("10.0.0.1", [], "10.0.0.1"),  # a trusted peer that forwards nobody
        ("10.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.1", ["6.6.6.6, 198.51.100.1, 10.0.0.2"], "198.51.100.1"),  # right-most untrusted
        ("10.0.0.1", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),  # one line per proxy
        ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], "10.0.0.3"),  # all trusted: the first of them
        ("10.0.0.1", ["198.51.100.1:4711"], "198.51.100.1"),
        ("::1", ["[2001:db8::7]:443"], "2001:db8::7"),
        ("::1", ["2001:db8::7"], "2001:db8::7"),
        ("10.0.0.1", ["198.51.100.1, unknown, 10.0.0.2"], "10.0.0.2"),  # not an address: stop
        ("10.0.0.1", [" , "], "10.0.0.1"),
    ],
)
def test_the_right_most_untrusted_hop_is_the_client(
    peer: str, lines: list[str], client: str
) -> None:
    joined = {"x-forwarded-for": ", ".join(lines)} if lines else {}
    assert TRUSTED(peer, joined) == client
    assert TRUSTED(peer, Lines(lines)) == client


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    assert ClientAddress([])("10.0.0.1", {"x-forwarded-for": "198.51.100.1"}) == "10.0.0.1"
