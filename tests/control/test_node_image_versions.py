"""Node image versions built from Debian signed packages without installing them: names (the installed boot
chain's is IMAGE_RELEASE, another's is named for the day Debian built its newest package, in the order of
the packages), the catalogue and
its stored build records, policies predicted per version (another kernel changes PCR 4's kernel step and
PCR 9; another GRUB PCR 4's GRUB step), the package cache (apt's signed index's SHA-256, reused, fetched
again when altered) and the errors naming a package that cannot be had. Real apt downloads of Debian's
packages (kept in the user cache) and real image builds (a few seconds each)."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
from pathlib import Path

import pytest
from debian_boot_packages import OTHER_GRUB, OTHER_KERNEL
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.attest.derivation import policy_for_image
from trustedlaunch.attest.policy import Policy
from trustedlaunch.control import boot_packages
from trustedlaunch.control.binary_cache import file_sha256
from trustedlaunch.control.boot_packages import (
    GRUB_PACKAGE,
    BootPackageError,
    available_kernels,
    fetch_package,
    fetched_kernel,
    installed_version,
)
from trustedlaunch.control.kubernetes_release import KubernetesRelease
from trustedlaunch.control.node_image_versions import (
    ImageBuild,
    boot_chain,
    build_image_version,
    chain_of_build,
    image_versions,
    plan_build,
    stored_builds,
)
from trustedlaunch.control.node_images import (
    IMAGE_RELEASE,
    BootChain,
    build_release_image,
    installed_boot_chain,
    is_release_image,
)
from trustedlaunch.control.node_runtime_release import NodeRuntime
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.node.debian import debian_release
from trustedlaunch.node.image import NodeImage, has_current_agent
from trustedlaunch.node.qemu import FIRMWARE
from trustedlaunch.store.models import ImagePolicy

DEBIAN = debian_release()


def golden(policy: Policy, pcr: int) -> str:
    return next(g.value for g in policy.golden_pcrs if (g.bank, g.pcr) == ("sha256", pcr))


def steps(policy: Policy) -> dict[str, frozenset[str]]:
    assert policy.boot_applications is not None
    return {step.component: step.digests for step in policy.boot_applications}


@pytest.fixture(scope="module")
def other_kernel() -> BootChain:
    return boot_chain(*OTHER_KERNEL)


@pytest.fixture(scope="module")
def other_grub() -> BootChain:
    return boot_chain(grub_version=OTHER_GRUB)


@pytest.fixture
def built(
    sessions: sessionmaker[Session],
    other_kernel: BootChain,
    kubernetes_release: KubernetesRelease,
    node_runtime: NodeRuntime,
    tmp_path: Path,
) -> dict[str, tuple[ImageBuild, NodeImage]]:
    """The installed and other-kernel versions built and stored (policies predicted)."""
    chains = {"installed": installed_boot_chain(), "kernel": other_kernel}
    with sessions.begin() as session:
        return {name: build_image_version(session, tmp_path / name, chain) for name, chain in chains.items()}


def test_each_boot_chain_is_its_own_named_version(
    built: dict[str, tuple[ImageBuild, NodeImage]], sessions: sessionmaker[Session]
) -> None:
    installed, kernel = (built[name][0] for name in ("installed", "kernel"))
    assert installed.release == IMAGE_RELEASE
    assert (installed.kernel_package, installed.kernel_version) == ("linux-image-6.1.0-57-amd64", "6.1.192-3")
    # Debian built linux-image-6.1.0-50-amd64 6.1.176-1 on 2026-07-02; the GRUB chain's newest package is the
    # installed kernel (2026-11-26)
    assert kernel.release == "202607.02.0"
    assert (kernel.kernel_package, kernel.kernel_version, kernel.kernel_release) == (
        *OTHER_KERNEL,
        "6.1.0-50-amd64",
    )
    assert kernel.grub_version == installed.grub_version == installed_version(GRUB_PACKAGE)
    assert kernel.version() == f"TLDebian{DEBIAN}gen2TLcontainerd-202607.02.0"
    assert kernel.version(trusted_launch=False) == f"TLDebian{DEBIAN}gen2containerd-202607.02.0"
    with sessions() as session:
        # the catalogue: newest first, the installed chain's the latest; each with its build record
        assert image_versions(session) == [
            (installed.version(), installed),
            (kernel.version(), kernel),
        ]
        assert stored_builds(session)[kernel.version(trusted_launch=False)] == kernel
        # the same packages keep their name; names follow the packages' order: the older GRUB with the same
        # kernel sorts before 202607.02.0 (Debian's day of its newest package, taken), so the day before
        assert plan_build(session, boot_chain(*OTHER_KERNEL)) == kernel
        both = boot_chain(*OTHER_KERNEL, grub_version=OTHER_GRUB)
        assert plan_build(session, both).release == "202607.01.0"
        grub = plan_build(session, boot_chain(grub_version=OTHER_GRUB))
        assert grub.release == "202611.26.0" and grub.grub_version == OTHER_GRUB
        assert grub.kernel_version == installed.kernel_version


def test_each_version_gets_its_image_and_predicted_policies(
    built: dict[str, tuple[ImageBuild, NodeImage]], sessions: sessionmaker[Session]
) -> None:
    installed, kernel = built["installed"], built["kernel"]
    with sessions() as session:
        policies = {
            (row.node_image_version, row.secure_boot): Policy.from_json(row.policy)
            for row in session.query(ImagePolicy)
        }
    assert len(policies) == 2 * 2 * 2  # two versions, two names each, Secure Boot on and off
    on = {name: policies[build.version(), True] for name, (build, _) in built.items()}
    assert policies[kernel[0].version(trusted_launch=False), False].secure_boot is False
    # another kernel: its Authenticode digest (PCR 4's kernel step) and PCR 9 (kernel, initramfs with its own
    # modules) differ; shim and GRUB, PCR 7 (the same signers) do not
    assert steps(on["kernel"])["kernel"] != steps(on["installed"])["kernel"]
    assert golden(on["kernel"], 9) != golden(on["installed"], 9)
    assert golden(on["kernel"], 4) != golden(on["installed"], 4)
    assert golden(on["kernel"], 7) == golden(on["installed"], 7)
    assert steps(on["kernel"])["grub"] == steps(on["installed"])["grub"]
    # the images: the other kernel's initramfs holds that kernel's own (signed) modules, from the package
    initramfs = gzip.decompress((kernel[1].esp_dir / "initrd.gz").read_bytes())
    assert b"vermagic=6.1.0-50-amd64 SMP" in initramfs and b"vermagic=6.1.0-57-amd64" not in initramfs
    assert (kernel[1].esp_dir / "vmlinuz").read_bytes() == boot_chain(
        *OTHER_KERNEL
    ).kernel.vmlinuz.read_bytes()
    assert kernel[1].release["kernelPackage"] == OTHER_KERNEL[0]
    metadata = json.loads(kernel[1].metadata_path.read_text())
    assert metadata["kernel"] == "vmlinuz-6.1.0-50-amd64" and "debian-packages" in metadata["modulesRoot"]
    assert has_current_agent(kernel[1])  # the agent check reads the modules where the image took them
    # each image is current for its own boot chain only; the build record gives the chain back
    assert is_release_image(kernel[1], boot_chain=chain_of_build(kernel[0]))
    assert not is_release_image(kernel[1]) and is_release_image(installed[1])


def test_a_grub_the_shims_sbat_level_revokes_is_no_version(
    other_grub: BootChain,
    built: dict[str, tuple[ImageBuild, NodeImage]],
    sessions: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    """grub-efi-amd64-signed deb12u1 (GRUB generation 4) under the installed shim 15.8 (SBAT level
    2025021800 requires 5): predicted not to boot under Secure Boot, so it is refused before any node boots
    it; without Secure Boot its image is predicted, with another GRUB step (PCR 4) and the same PCR 9."""
    with sessions() as session, pytest.raises(BootPackageError) as refused:
        build_image_version(session, tmp_path / "grub", other_grub)
    message = str(refused.value)
    assert f"grub grub-efi-amd64-signed {OTHER_GRUB}" in message and "revoked by SBAT" in message
    with sessions() as session:
        assert [build.release for _, build in image_versions(session)] == [IMAGE_RELEASE, "202607.02.0"]
    image = build_release_image(tmp_path / "grub-image", boot_chain=other_grub)
    off, installed_off = (
        policy_for_image(i.esp_dir, FIRMWARE[False][1]) for i in (image, built["installed"][1])
    )
    assert steps(off)["grub"] != steps(installed_off)["grub"]
    assert steps(off)["kernel"] == steps(installed_off)["kernel"]
    assert golden(off, 4) != golden(installed_off, 4) and golden(off, 9) == golden(installed_off, 9)


def test_a_fetched_package_is_verified_cached_and_fetched_again_when_altered(tmp_path: Path) -> None:
    package = fetch_package(GRUB_PACKAGE, OTHER_GRUB, tmp_path)
    index = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", f"{GRUB_PACKAGE}={OTHER_GRUB}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert (
        f"SHA256: {package.sha256}" in index.splitlines()
    )  # apt's index, checked against the signed Release
    assert file_sha256(package.deb) == package.sha256
    record = json.loads((package.deb.parent / "package.json").read_text())
    assert (record["package"], record["version"], record["sha256"]) == (
        GRUB_PACKAGE,
        OTHER_GRUB,
        package.sha256,
    )
    assert (package.root / boot_packages.GRUB_FILE).is_file()
    assert package.deb.parent.name == f"{GRUB_PACKAGE}_{OTHER_GRUB}"  # keyed by package and version
    inode = package.deb.stat().st_ino
    assert fetch_package(GRUB_PACKAGE, OTHER_GRUB, tmp_path).deb.stat().st_ino == inode  # reused
    with package.deb.open("r+b") as deb:
        deb.seek(100)
        deb.write(b"\xff")
    again = fetch_package(GRUB_PACKAGE, OTHER_GRUB, tmp_path)
    assert file_sha256(again.deb) == package.sha256 and again.deb.stat().st_ino != inode


def test_a_package_that_cannot_be_had_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        BootPackageError, match=r"linux-image-6\.1\.0-50-amd64 6\.1\.999-1: apt's index has no"
    ):
        fetch_package("linux-image-6.1.0-50-amd64", "6.1.999-1", tmp_path)
    with pytest.raises(BootPackageError, match="is not a Debian package name and version"):
        fetch_package("-oDir=/tmp", "1", tmp_path)
    with pytest.raises(BootPackageError, match="is not a Debian amd64 kernel package"):
        fetched_kernel(GRUB_PACKAGE, OTHER_GRUB, tmp_path)
    with pytest.raises(BootPackageError, match="by its package name and its version together"):
        boot_chain(OTHER_KERNEL[0])
    monkeypatch.setattr(boot_packages, "MAX_PACKAGE_BYTES", 4096)
    with pytest.raises(
        BootPackageError, match=rf"{GRUB_PACKAGE} {re.escape(OTHER_GRUB)}: \d+ bytes, more than the 4096"
    ):
        fetch_package(GRUB_PACKAGE, OTHER_GRUB, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half made


@pytest.mark.parametrize(
    "document",
    ["[]", "{}", '{"release": "2026.1"}', "x" * 5000],
)
def test_a_stored_build_record_is_checked(document: str) -> None:
    with pytest.raises(BootPackageError, match="node image build record"):
        ImageBuild.from_json(document)


def test_the_reconciler_builds_a_version_from_its_build_record(
    built: dict[str, tuple[ImageBuild, NodeImage]], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """A pool on the other kernel's version gets that kernel's image (not the installed boot chain's under
    its name), built once into the state dir; the installed version gets the installed kernel."""
    reconciler = Reconciler(sessions, tmp_path / "state")
    kernel, installed = built["kernel"], built["installed"]
    image = reconciler._image(kernel[0].version())
    assert image.files["vmlinuz"] == kernel[1].files["vmlinuz"] != installed[1].files["vmlinuz"]
    assert image.release == kernel[1].release
    # byte for byte the build its policies were predicted from (the same content digest, root hash included)
    assert image.version == kernel[1].version
    assert (
        reconciler._image(kernel[0].version()).metadata_path.stat().st_ino
        == image.metadata_path.stat().st_ino
    )
    installed_image = reconciler._image(installed[0].version(trusted_launch=False))
    assert installed_image.files["vmlinuz"] == installed[1].files["vmlinuz"]


def test_the_signed_kernels_debian_serves_are_listed_newest_first() -> None:
    kernels = available_kernels()
    assert OTHER_KERNEL in kernels
    installed = installed_boot_chain().kernel
    assert (installed.package, installed.version) in kernels
    assert kernels.index((installed.package, installed.version)) < kernels.index(OTHER_KERNEL)
    assert not any("-cloud-" in package or "-rt-" in package for package, _ in kernels)
