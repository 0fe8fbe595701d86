"""Two genuinely different Debian signed builds that Debian serves next to the installed ones (never one build
relabelled): an older signed kernel ABI and the other grub-efi-amd64-signed version, fetched by the tests of
node image versions (tests/control/test_node_image_versions.py, tests/node/test_node_image_version_boot.py)
into the user cache, as an operator's build would."""

from __future__ import annotations

OTHER_KERNEL = ("linux-image-6.1.0-50-amd64", "6.1.176-1")  # installed: linux-image-6.1.0-57-amd64 6.1.192-3
OTHER_GRUB = "1+2.06+13+deb12u1"  # installed: 1+2.06+13+deb12u2
# a newer kernel branch Debian serves for bookworm (security), built before this release's day: its version
# must sort newer than the installed kernel's whatever the names say
NEWER_KERNEL = ("linux-image-6.12.118+deb12-amd64", "6.12.118-1~deb12u1")
