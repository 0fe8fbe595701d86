"""The order of node image versions and of the names new ones get: by their packages (kernel, then shim, then
GRUB, as dpkg compares versions), whatever day Debian built them; a new version's name (<YYYYMM>.<DD>.<patch>)
sorts where its packages do, stored names are kept. Build records only: no package is fetched here (the
tests of node_image_versions build real ones)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from debian_boot_packages import NEWER_KERNEL, OTHER_GRUB, OTHER_KERNEL

from trustedlaunch.control.boot_packages import available_kernels
from trustedlaunch.control.node_image_versions import ImageBuild, ordered_release_name
from trustedlaunch.control.node_images import IMAGE_RELEASE
from trustedlaunch.node.debian import package_version
from trustedlaunch.node.image import default_kernel, kernel_release

INSTALLED = ImageBuild(
    release=IMAGE_RELEASE,  # 202612.06.0
    kernel_package="linux-image-6.1.0-57-amd64",
    kernel_version="6.1.192-3",
    kernel_release="6.1.0-57-amd64",
    shim_version="1.51~1+deb12u1+16.1-2~deb12u1",
    grub_version="1+2.06+13+deb12u2",
    kubernetes="v1.36.3",
    node_runtime="containerd v2.3.7",
)
OLDER = replace(
    INSTALLED,
    release="202607.02.0",
    kernel_package=OTHER_KERNEL[0],
    kernel_version=OTHER_KERNEL[1],
    kernel_release="6.1.0-50-amd64",
)
NEWER = replace(
    INSTALLED,
    release="",
    kernel_package=NEWER_KERNEL[0],
    kernel_version=NEWER_KERNEL[1],
    kernel_release="6.12.118+deb12-amd64",
)


def test_dpkg_orders_the_kernels_not_their_digits() -> None:
    assert package_version("6.12.118-1~deb12u1") > package_version("6.1.192-3") > package_version("6.1.176-1")
    assert package_version("6.12.118+deb12-amd64") > package_version("6.1.0-57-amd64")  # kernel releases
    assert package_version("1+2.06+13+deb12u2") > package_version(OTHER_GRUB)
    assert package_version("6.12.118-1~deb12u1") < package_version("6.12.118-1")  # ~ sorts before
    kernels = available_kernels()  # apt's real index: the 6.12 branch Debian serves for bookworm first
    assert kernels.index(NEWER_KERNEL) < kernels.index(("linux-image-6.1.0-57-amd64", "6.1.192-3"))
    assert kernel_release(default_kernel().name) == "6.1.0-57-amd64"  # the newest installed in /boot


def test_versions_are_ordered_by_kernel_then_shim_then_grub() -> None:
    named_earlier = replace(NEWER, release="202611.20.0")  # as a release naming by Debian's day left it
    older_grub = replace(INSTALLED, release="202612.07.0", grub_version=OTHER_GRUB)
    ordered = sorted([INSTALLED, OLDER, named_earlier, older_grub], key=ImageBuild.order)
    assert ordered == [OLDER, older_grub, INSTALLED, named_earlier]
    same_packages = replace(INSTALLED, release="202612.06.1", kubernetes="v1.36.4")
    assert INSTALLED.order() < same_packages.order()  # the same packages: by name


def test_a_newer_kernel_debian_built_earlier_is_named_after_the_latest() -> None:
    # Debian built 6.12.118 before this release's day: the name moves to that day, the next patch
    assert ordered_release_name(NEWER, date(2026, 11, 20), [INSTALLED, OLDER]) == "202612.06.1"
    # built later than every older version: Debian's day
    assert ordered_release_name(NEWER, date(2026, 12, 20), [INSTALLED, OLDER]) == "202612.20.0"


def test_older_packages_are_named_before_newer_ones() -> None:
    # a kernel between 6.1.0-50 and 6.1.0-57 that Debian built after 202612.06: the day before
    between = replace(OLDER, release="", kernel_version="6.1.180-1")
    assert ordered_release_name(between, date(2026, 12, 10), [INSTALLED, OLDER]) == "202612.05.0"
    # built on a day between them: that day
    assert ordered_release_name(between, date(2026, 9, 1), [INSTALLED, OLDER]) == "202609.01.0"
    # the older GRUB with the 6.1.0-50 kernel, on that kernel's day (taken): the day before
    older_grub = replace(OLDER, release="", grub_version=OTHER_GRUB)
    assert ordered_release_name(older_grub, date(2026, 7, 2), [INSTALLED, OLDER]) == "202607.01.0"


def test_when_no_name_fits_the_next_free_one_after_the_older_is_taken() -> None:
    crowded = [OLDER, replace(OLDER, release="202607.02.1", kernel_version="6.1.190-1")]
    between = replace(OLDER, release="", kernel_version="6.1.180-1")
    assert ordered_release_name(between, date(2026, 7, 2), crowded) == "202607.02.2"
