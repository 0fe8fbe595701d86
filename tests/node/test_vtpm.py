"""Per-VM vTPM lifecycle with the real swtpm_setup and swtpm."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from node_helpers import processes_under

from trustedlaunch.findings import AttestationError, Check
from trustedlaunch.tpm.ekca import EkCa, create_ek_ca, verify_ek_certificate
from trustedlaunch.tpm.vtpm import Vtpm, VtpmError


@pytest.fixture(scope="module")
def ek_ca(tmp_path_factory: pytest.TempPathFactory) -> EkCa:
    return create_ek_ca(tmp_path_factory.mktemp("ekca") / "ca")


def certificates(vtpm: Vtpm) -> list[x509.Certificate]:
    return [x509.load_der_x509_certificate(path.read_bytes()) for path in vtpm.ek_certificates()]


def test_create_manufactures_rsa_and_ecc_eks_certified_by_our_ca(tmp_path: Path, ek_ca: EkCa) -> None:
    vtpm = Vtpm.create(tmp_path / "state", ek_ca=ek_ca)
    assert vtpm.manufactured
    issued = certificates(vtpm)
    keys = [certificate.public_key() for certificate in issued]
    assert len(keys) == 2
    assert any(isinstance(key, rsa.RSAPublicKey) for key in keys)
    assert any(isinstance(key, ec.EllipticCurvePublicKey) for key in keys)
    foreign = create_ek_ca(tmp_path / "foreign-ca")  # same name, another key
    for certificate in issued:
        assert certificate.issuer == ek_ca.certificate.subject
        verify_ek_certificate(certificate, [ek_ca.certificate])
        with pytest.raises(AttestationError) as failure:
            verify_ek_certificate(certificate, [foreign.certificate])
        assert failure.value.finding.check == Check.EK_CERTIFICATE


def test_reimage_gives_a_new_certified_ek(tmp_path: Path, ek_ca: EkCa) -> None:
    vtpm = Vtpm.create(tmp_path / "state", ek_ca=ek_ca)
    before = {c.public_key().public_numbers() for c in certificates(vtpm)}
    vtpm.destroy()
    vtpm = Vtpm.create(tmp_path / "state", ek_ca=ek_ca)
    after = certificates(vtpm)
    assert not before & {c.public_key().public_numbers() for c in after}
    for certificate in after:
        verify_ek_certificate(certificate, [ek_ca.certificate])


def test_create_without_ca_issues_no_certificates(tmp_path: Path) -> None:
    assert Vtpm.create(tmp_path / "state", ek_ca=None).ek_certificates() == []


def test_start_stop_restart_keeps_state_and_reaps_swtpm(tmp_path: Path) -> None:
    vtpm = Vtpm.create(tmp_path / "state", ek_ca=None)
    state = (vtpm.state_dir / "tpm2-00.permall").read_bytes()
    assert Vtpm.create(vtpm.state_dir, ek_ca=None).manufactured  # reused, not manufactured again
    assert (vtpm.state_dir / "tpm2-00.permall").read_bytes() == state
    try:
        socket_path = vtpm.start()
        assert socket_path.exists() and vtpm.running
        with pytest.raises(VtpmError, match="already running"):
            vtpm.start()
    finally:
        vtpm.stop()
    assert not vtpm.running and not processes_under(tmp_path)
    try:
        vtpm.start()
        assert vtpm.running
    finally:
        vtpm.stop()
    assert not processes_under(tmp_path)
    vtpm.destroy()
    assert not vtpm.state_dir.exists()


def test_start_without_state_is_an_operator_error(tmp_path: Path) -> None:
    with pytest.raises(VtpmError, match=r"Vtpm\.create"):
        Vtpm(tmp_path / "empty").start()
