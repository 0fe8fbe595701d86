"""The control plane's node network address (TL_NODE_NETWORK_ADDRESS): where kube-apiservers listen for the
nodes of remote libvirt hosts; 127.0.0.1 without it; anything but one interface's IPv4 address refused."""

from __future__ import annotations

import pytest

from trustedlaunch.control.hosted_control_plane import (
    NODE_NETWORK_ADDRESS_ENV,
    ControlPlaneError,
    node_network_address,
)


def test_the_address_is_loopback_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NODE_NETWORK_ADDRESS_ENV, raising=False)
    assert node_network_address() == "127.0.0.1"
    monkeypatch.setenv(NODE_NETWORK_ADDRESS_ENV, " 10.254.0.1 ")
    assert node_network_address() == "10.254.0.1"


@pytest.mark.parametrize(
    ("value", "refusal"),
    [
        ("0.0.0.0", "not an IPv4 address of one interface"),
        ("224.0.0.1", "not an IPv4 address of one interface"),
        ("fd00::1", "not an IPv4 address of one interface"),
        ("control.example", "is not an IP address"),
        ("10.254.0.1 --anonymous-auth=true", "is not an IP address"),
    ],
)
def test_anything_but_an_ipv4_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str, refusal: str
) -> None:
    monkeypatch.setenv(NODE_NETWORK_ADDRESS_ENV, value)
    with pytest.raises(ControlPlaneError, match=f"{NODE_NETWORK_ADDRESS_ENV}=.*{refusal}"):
        node_network_address()
