"""An older node image version (built from linux-image-6.1.0-50-amd64 6.1.176-1) stored as building it would,
and a pool put on it as an earlier release would have left it; a newer kernel's version stored under the name
an earlier release gave it (Debian's build day, before this release's): for the upgrade tests without VMs."""

from __future__ import annotations

from dataclasses import replace

from debian_boot_packages import NEWER_KERNEL, OTHER_KERNEL
from sqlalchemy.orm import Session

from trustedlaunch.control.node_image_versions import ImageBuild, image_versions, register_build
from trustedlaunch.store.models import AgentPool

OLDER = "202607.02.0"  # the release of a version built from linux-image-6.1.0-50-amd64 6.1.176-1
NEWER_NAMED_EARLIER = "202611.20.0"  # linux-image-6.12.118+deb12-amd64, named for its Debian build day


def put_pool_on_older_version(session: Session, pool_name: str) -> tuple[str, str]:
    """Store the older version and put pool `pool_name` on its name of the pool's flavour (trusted launch
    capable or not); (that name, the latest name of the flavour)."""
    latest = image_versions(session)[0][1]
    older = ImageBuild(
        release=OLDER,
        kernel_package=OTHER_KERNEL[0],
        kernel_version=OTHER_KERNEL[1],
        kernel_release="6.1.0-50-amd64",
        shim_version=latest.shim_version,
        grub_version=latest.grub_version,
        kubernetes=latest.kubernetes,
        node_runtime=latest.node_runtime,
    )
    capable, other = register_build(session, older)
    session.flush()
    pool = session.query(AgentPool).filter_by(name=pool_name).one()
    trusted_launch = "TLcontainerd" in pool.node_image_version
    pool.node_image_version = capable if trusted_launch else other
    return pool.node_image_version, latest.version(trusted_launch=trusted_launch)


def store_newer_kernel_version(session: Session) -> ImageBuild:
    """Store the version of NEWER_KERNEL (with the latest's shim and GRUB) under NEWER_NAMED_EARLIER, as a
    release that named versions by Debian's build day left it; its build record."""
    latest = image_versions(session)[0][1]
    newer = replace(
        latest,
        release=NEWER_NAMED_EARLIER,
        kernel_package=NEWER_KERNEL[0],
        kernel_version=NEWER_KERNEL[1],
        kernel_release="6.12.118+deb12-amd64",
    )
    register_build(session, newer)
    session.flush()
    return newer
