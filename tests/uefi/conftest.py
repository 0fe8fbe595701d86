"""Fixtures for the UEFI tests; the builders themselves live in esp_helpers.py for reuse."""

from __future__ import annotations

from pathlib import Path

import pytest
from esp_helpers import (
    GRUB,
    OVMF_VARS_KEYLESS,
    SHIM,
    TestSigner,
    build_esp,
    debian_kernel,
    make_test_ca,
    sign_with,
    write_varstore,
)


@pytest.fixture()
def debian_esp(tmp_path: Path) -> Path:
    """An ESP with the real Debian shim, grub and kernel, grub.cfg loading /vmlinuz."""
    return build_esp(tmp_path / "esp")


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestSigner:
    """A test CA and a code-signing certificate it issued."""
    return make_test_ca(tmp_path_factory.mktemp("test-ca"))


@pytest.fixture(scope="session")
def test_ca_varstore(tmp_path_factory: pytest.TempPathFactory, test_ca: TestSigner) -> Path:
    """A keyless OVMF varstore with the test CA enrolled as PK, KEK and db (Secure Boot on)."""
    directory = tmp_path_factory.mktemp("vars")
    return write_varstore(
        OVMF_VARS_KEYLESS,
        directory / "OVMF_VARS_test_ca.fd",
        platform_cert=test_ca.ca_pem,
        db_certs=(test_ca.ca_pem,),
    )


@pytest.fixture(scope="session")
def test_signed_images(tmp_path_factory: pytest.TempPathFactory, test_ca: TestSigner) -> dict[str, Path]:
    """shim, grub and the kernel re-signed (only) by the test CA's signer."""
    directory = tmp_path_factory.mktemp("signed")
    return {
        "shim": sign_with(test_ca, SHIM, directory / "shimx64.efi"),
        "grub": sign_with(test_ca, GRUB, directory / "grubx64.efi"),
        "kernel": sign_with(test_ca, debian_kernel(), directory / "vmlinuz"),
    }
