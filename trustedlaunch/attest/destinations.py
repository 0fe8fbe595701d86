"""Where alert webhooks may send: public unicast addresses only, unless the operator allows more.

A webhook URL is set by a subscription token, so it must not turn the control plane into a scanner of the
host and its networks: its host name is resolved the way the HTTP client resolves it (getaddrinfo, which
also reads numeric forms such as 0x7f000001, 2130706433 or 127.1) and every address it resolves to must be
a public unicast one. Loopback, private (RFC 1918, ULA, CGNAT), link-local, unspecified, multicast,
reserved and documentation addresses, IPv4-mapped/NAT64 forms of them included, are refused unless they
lie in a network of TL_WEBHOOK_ALLOWED_NETWORKS (comma-separated CIDRs, e.g. "10.0.0.0/8,127.0.0.1/32"),
the operator's allow-list for private receivers. The check runs when the URL is set and again before
every connection, which then goes to the checked address (no second DNS lookup to rebind).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Sequence

import httpx

from trustedlaunch.errors import TrustedLaunchError

ALLOWED_NETWORKS_ENV = "TL_WEBHOOK_ALLOWED_NETWORKS"
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address
DEFAULT_PORTS = {"http": 80, "https": 443}


class DestinationRefused(TrustedLaunchError):
    """A webhook host that is, or resolves to, an address alerts are not sent to."""


class DestinationUnresolved(TrustedLaunchError):
    """A webhook host name that does not resolve (now)."""


def allowed_networks_from_environment() -> tuple[IpNetwork, ...]:
    """The operator's allow-list of private receivers (TL_WEBHOOK_ALLOWED_NETWORKS); none when unset."""
    return parse_networks(os.environ.get(ALLOWED_NETWORKS_ENV, ""))


def parse_networks(text: str) -> tuple[IpNetwork, ...]:
    """Comma-separated CIDRs (a bare address is a /32 or /128); a TrustedLaunchError naming a bad one."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise TrustedLaunchError(f"{ALLOWED_NETWORKS_ENV}: '{item}' is not a network ({exc})") from None
    return tuple(networks)


def _embedded_ipv4(address: IpAddress) -> IpAddress:
    """The IPv4 address inside an IPv4-mapped, NAT64, 6to4 or Teredo IPv6 address (what a connection
    reaches through a relay)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]
        if address in NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def refusal_reason(address: IpAddress) -> str | None:
    """Why alerts may not go to `address` by default (None: a public unicast address)."""
    reached = _embedded_ipv4(address)
    for test, kind in (
        (reached.is_unspecified, "an unspecified address"),
        (reached.is_loopback, "a loopback address"),
        (reached.is_link_local, "a link-local address"),
        (reached.is_multicast, "a multicast address"),
        (isinstance(reached, ipaddress.IPv6Address) and reached.is_site_local, "a site-local address"),
        (reached.is_private, "a private address"),
        (reached.is_reserved, "a reserved address"),
        (not reached.is_global, "a non-public address"),
    ):
        if test:
            return kind
    return None


def refused(address: IpAddress, allowed: Sequence[IpNetwork]) -> str | None:
    """Why alerts may not go to `address` (None: public unicast, or inside an allowed network)."""
    reason = refusal_reason(address)
    if reason is None or any(
        candidate in network for candidate in (address, _embedded_ipv4(address)) for network in allowed
    ):
        return None
    return reason


def resolve(url: httpx.URL, allowed: Sequence[IpNetwork]) -> list[IpAddress]:
    """Every address the host of `url` resolves to (as the HTTP client would resolve it), each checked;
    DestinationRefused if any is refused, DestinationUnresolved if the name does not resolve."""
    host = url.raw_host.decode("ascii")
    port = url.port or DEFAULT_PORTS.get(url.scheme, 443)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise DestinationUnresolved(f"the webhook host '{url.host}' does not resolve ({exc})") from None
    addresses: list[IpAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise DestinationUnresolved(f"the webhook host '{url.host}' resolves to no address")
    for address in addresses:
        reason = refused(address, allowed)
        if reason is not None:
            where = f"{address} is" if str(address) == url.host else f"'{url.host}' resolves to {address},"
            raise DestinationRefused(
                f"the webhook host {where} {reason}; alerts go to public addresses only, unless the "
                f"operator allows the network in {ALLOWED_NETWORKS_ENV}"
            )
    return addresses


def pinned_request(
    client: httpx.Client, url: httpx.URL, address: IpAddress, document: object
) -> httpx.Request:
    """A JSON POST of `document` to `url` that connects to the checked `address`: the URL's host is
    replaced by the address while the Host header and the TLS server name (SNI, certificate check) stay
    those of the URL's host."""
    request = client.build_request(
        "POST",
        url.copy_with(host=str(address)),
        json=document,
        headers={"Host": url.netloc.decode("ascii")},
    )
    if url.scheme == "https":
        request.extensions["sni_hostname"] = url.raw_host.decode("ascii")
    return request
