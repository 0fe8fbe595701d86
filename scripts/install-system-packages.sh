#!/usr/bin/env bash
# Install the Debian packages trustedlaunch needs (firmware, vTPM, TPM tools, signed boot chain).
set -euo pipefail
PACKAGES=(qemu-system-x86 ovmf swtpm swtpm-tools tpm2-tools shim-signed grub-efi-amd64-signed
          linux-image-amd64 busybox-static sbsigntool libtss2-dev pkg-config efitools
          python3-venv python3-dev)
# Node VM tests: cpio reads back the node initramfs, pgrep checks for leftover qemu/swtpm processes.
PACKAGES+=(cpio procps)
# Dashboard browser tests (tests/web): headless Chromium driven by selenium through the Debian chromedriver.
PACKAGES+=(chromium chromium-driver)
# tpm2-pytss (dev extra, bench/attest_load_bench.py) builds its bindings from the sdist with libtss2-dev.
PACKAGES+=(gcc)
# The node's runc (scripts/build_kubernetes.py) is linked statically (cgo): glibc's and libseccomp's static
# libraries (seccomp profiles need libseccomp).
PACKAGES+=(libc6-dev libseccomp-dev)
# PostgreSQL store tests: a throwaway server from /usr/lib/postgresql/N/bin (run as the package's postgres user).
PACKAGES+=(postgresql)
# The node's read-only root filesystem (trustedlaunch/node/rootfs.py): mksquashfs builds it, veritysetup its
# dm-verity hash tree and root hash; the node's initramfs opens it with Debian's dmsetup (and its libraries).
PACKAGES+=(squashfs-tools cryptsetup-bin dmsetup)
# Node image versions from other Debian signed kernels (trustedlaunch/control/boot_packages.py): depmod
# writes the modules.dep of a kernel package fetched with apt-get download and extracted by dpkg-deb.
PACKAGES+=(kmod)
# Node VMs through libvirt (trustedlaunch/node/libvirt_driver.py, libvirt_host.py): libvirtd and its QEMU driver
# for the private libvirtd (libvirt-daemon, libvirt-daemon-driver-qemu; not libvirt-daemon-system, which
# starts the machine's own libvirtd and its default NAT network under systemd: only loopback and our own
# namespaces may carry traffic), virsh for operators (libvirt-clients), the headers and pkg-config file the
# libvirt-python binding builds against (libvirt-dev; pkg-config is listed above).
PACKAGES+=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev)
# A node image's ESP as a FAT disk image uploaded to remote libvirt hosts (trustedlaunch/node/esp_disk.py):
# mkfs.fat makes the file system, mtools' mmd/mcopy fill it without mounting it.
PACKAGES+=(dosfstools mtools)
# Test libvirt hosts in network namespaces linked by veth pairs (trustedlaunch/node/libvirt_host.py): ip.
PACKAGES+=(iproute2)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "${missing[@]}"
fi
# libvirtd's QEMU driver looks up Debian's QEMU user and group (libvirt-qemu) when it starts, even though the
# private libvirtd's qemu.conf runs QEMU as root; libvirt-daemon-system, not installed (see above), would
# create them: a system user with no login and no home.
getent group libvirt-qemu >/dev/null || $SUDO groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null || $SUDO useradd --system --gid libvirt-qemu --no-create-home \
  --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
