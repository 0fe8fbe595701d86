#!/usr/bin/env bash
# Install the Debian packages trustedlaunch needs (firmware, vTPM, TPM tools, signed boot chain).
set -euo pipefail
PACKAGES=(qemu-system-x86 ovmf swtpm swtpm-tools tpm2-tools shim-signed grub-efi-amd64-signed
          linux-image-amd64 busybox-static sbsigntool libtss2-dev pkg-config efitools
          python3-venv python3-dev)
# Node VM tests: cpio reads back the node initramfs, pgrep checks for leftover qemu/swtpm processes.
PACKAGES+=(cpio procps)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "${missing[@]}"
