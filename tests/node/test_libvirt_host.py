"""The private libvirtd: it answers on its own socket with our qemu.conf, leaves the machine's /etc/libvirt
as it was, and stops without leaving a process behind; in network namespaces made by the test, hosts answer
over TCP at their namespace's address to the client namespace only."""

from __future__ import annotations

import secrets
import subprocess
import tempfile
from pathlib import Path

import libvirt

from trustedlaunch.node.libvirt_host import QEMU_CONF, LibvirtHost, NamespaceNetwork


def machine_file(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def test_private_libvirtd_starts_answers_and_stops_cleanly() -> None:
    machine_qemu_conf = machine_file(Path("/etc/libvirt/qemu.conf"))  # None where no package installed it
    host = LibvirtHost(Path(tempfile.mkdtemp(prefix="tl-lvh-")))
    try:
        host.start()
        connection = libvirt.open(host.uri)
        try:
            assert connection.getLibVersion() >= 9_000_000
            assert connection.listAllDomains() == []
        finally:
            connection.close()
        assert (host.base / "etc" / "qemu.conf").read_text() == QEMU_CONF
        assert machine_file(Path("/etc/libvirt/qemu.conf")) == machine_qemu_conf  # mounted privately
        pid = host.pid
        assert host.running and pid is not None
        assert Path(f"/proc/{pid}/exe").resolve() == Path("/usr/sbin/libvirtd")
    finally:
        host.remove()
    assert not host.running and not host.base.exists()
    assert not Path(f"/proc/{pid}").exists()


def test_hosts_in_network_namespaces_answer_over_tcp_from_the_client_namespace_only() -> None:
    network = NamespaceNetwork(f"tl-{secrets.token_hex(3)}")
    hosts: list[LibvirtHost] = []
    try:
        for _ in range(2):
            namespace, address = network.add_host()
            hosts.append(
                LibvirtHost(Path(tempfile.mkdtemp(prefix="tl-lvh-")), namespace=namespace, address=address)
            )
            hosts[-1].start()
        for host in hosts:
            assert host.tcp_uri.startswith("qemu+tcp://10.254.")
            answer = subprocess.run(
                ["ip", "netns", "exec", network.client, "virsh", "-c", host.tcp_uri, "uri"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert answer.returncode == 0 and answer.stdout.strip() == host.tcp_uri, answer.stderr
        # a host namespace has no route to the other host: only the client reaches both
        across = subprocess.run(
            ["ip", "netns", "exec", network.hosts[0], "virsh", "-c", hosts[1].tcp_uri, "uri"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert across.returncode != 0 and "unreachable" in across.stderr.lower(), across.stderr
    finally:
        for host in hosts:
            host.remove()
        network.remove()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert network.client not in listed and not any(host.running for host in hosts)
