"""The private libvirtd: it answers on its own socket with our qemu.conf, leaves the machine's /etc/libvirt
as it was, and stops without leaving a process behind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import libvirt

from trustedlaunch.node.libvirt_host import QEMU_CONF, LibvirtHost


def test_private_libvirtd_starts_answers_and_stops_cleanly() -> None:
    machine_qemu_conf = Path("/etc/libvirt/qemu.conf").read_bytes()
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
        assert Path("/etc/libvirt/qemu.conf").read_bytes() == machine_qemu_conf  # mounted privately
        pid = host.pid
        assert host.running and pid is not None
        assert Path(f"/proc/{pid}/exe").resolve() == Path("/usr/sbin/libvirtd")
    finally:
        host.remove()
    assert not host.running and not host.base.exists()
    assert not Path(f"/proc/{pid}").exists()
