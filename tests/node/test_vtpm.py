"""Per-VM vTPM lifecycle with the real swtpm_setup and swtpm."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from node_helpers import processes_under

from trustedlaunch.tpm.vtpm import Vtpm, VtpmError


def test_create_manufactures_rsa_and_ecc_eks_with_certificates(tmp_path: Path) -> None:
    vtpm = Vtpm.create(tmp_path / "state")
    assert vtpm.manufactured
    keys = [x509.load_der_x509_certificate(path.read_bytes()).public_key() for path in vtpm.ek_certificates()]
    assert len(keys) == 2
    assert any(isinstance(key, rsa.RSAPublicKey) for key in keys)
    assert any(isinstance(key, ec.EllipticCurvePublicKey) for key in keys)


def test_start_stop_restart_keeps_state_and_reaps_swtpm(tmp_path: Path) -> None:
    vtpm = Vtpm.create(tmp_path / "state")
    state = (vtpm.state_dir / "tpm2-00.permall").read_bytes()
    assert Vtpm.create(vtpm.state_dir).manufactured  # reused, not manufactured again
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
