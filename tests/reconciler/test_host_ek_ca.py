"""Per-host EK CA: a node's attestations accept only the EK CA of the host that created its vTPM (the host's
registered CA when its libvirt made the vTPM, else the platform CA of the swtpm we started), so an EK
certificate from another host's CA fails with an EK certificate finding. Real CAs and a real swtpm."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from trustedlaunch.control.reconciler import node_ek_cas
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.findings import AttestationError, Check
from trustedlaunch.store.models import Node, NodeHost
from trustedlaunch.tpm.ekca import EkCa, create_ek_ca, verify_ek_certificate
from trustedlaunch.tpm.vtpm import Vtpm


def pem(ca: EkCa) -> str:
    return ca.certificate.public_bytes(Encoding.PEM).decode()


def on_host(host: NodeHost | None, driver: str = "libvirt") -> Node:
    return Node(name="aks-nodepool1-0", driver=driver if host is not None else "qemu", host=host)


def test_a_node_accepts_only_the_ek_ca_of_the_host_that_made_its_vtpm(tmp_path: Path) -> None:
    platform, host_a, host_b = (create_ek_ca(tmp_path / name, common_name=name) for name in ("p", "a", "b"))
    made_by_b = Vtpm.create(tmp_path / "tpm-b", ek_ca=host_b)
    certificate = x509.load_der_x509_certificate((made_by_b.state_dir / "ek-rsa2048.crt").read_bytes())

    a = NodeHost(name="a", uri="qemu+tcp://a/system", memory_mib=4096, vcpus=4, ek_ca_certificate=pem(host_a))
    b = NodeHost(name="b", uri="qemu+tcp://b/system", memory_mib=4096, vcpus=4, ek_ca_certificate=pem(host_b))
    assert node_ek_cas(on_host(a), platform.certificate) == [host_a.certificate]
    with pytest.raises(AttestationError) as refused:  # made on host A, certified by host B's CA
        verify_ek_certificate(certificate, node_ek_cas(on_host(a), platform.certificate))
    finding = refused.value.finding
    assert (finding.check, finding.component) == (Check.EK_CERTIFICATE, "EK")
    assert "EK certificate is not from a trusted EK CA" in finding.message
    verify_ek_certificate(certificate, node_ek_cas(on_host(b), platform.certificate))  # its own host's CA

    # the platform CA is not accepted for a vTPM a host made, and a host's CA not for our own swtpm's
    platform_vtpm = Vtpm.create(tmp_path / "tpm-p", ek_ca=platform)
    ours = x509.load_der_x509_certificate((platform_vtpm.state_dir / "ek-rsa2048.crt").read_bytes())
    with pytest.raises(AttestationError):
        verify_ek_certificate(ours, node_ek_cas(on_host(a), platform.certificate))
    own_swtpm_host = NodeHost(name="c", uri="qemu+tcp://c/system", memory_mib=4096, vcpus=4)
    for node in (on_host(None), on_host(own_swtpm_host)):
        assert node_ek_cas(node, platform.certificate) == [platform.certificate]
        verify_ek_certificate(ours, node_ek_cas(node, platform.certificate))
        with pytest.raises(AttestationError):
            verify_ek_certificate(certificate, node_ek_cas(node, platform.certificate))


def test_an_unreadable_host_ek_ca_names_the_host(tmp_path: Path) -> None:
    platform = create_ek_ca(tmp_path / "p")
    broken = NodeHost(
        name="broken", uri="qemu+tcp://x/system", memory_mib=1, vcpus=1, ek_ca_certificate="junk"
    )
    with pytest.raises(TrustedLaunchError, match="node host broken: its EK CA certificate is not a PEM"):
        node_ek_cas(on_host(broken), platform.certificate)
