"""Node boot benchmark: one Secure Boot + vTPM node, boot-to-agent-ready and boot-to-first-quote wall time.

Run: python bench/node_boot_bench.py. Prints results (target: ready <= 20 s under TCG), asserts nothing.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from pathlib import Path

from trustedlaunch.node.image import build_node_image
from trustedlaunch.node.qemu import NodeVM, kvm_usable
from trustedlaunch.tpm.ekca import create_ek_ca
from trustedlaunch.tpm.vtpm import Vtpm


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tl-bench-") as folder:
        base = Path(folder)
        started = time.monotonic()
        image = build_node_image(base / "image")
        print(f"image build:          {time.monotonic() - started:6.2f} s  (version {image.version})")
        started = time.monotonic()
        vtpm = Vtpm.create(base / "vtpm", ek_ca=create_ek_ca(base / "ek-ca"))
        print(f"vTPM manufacture:     {time.monotonic() - started:6.2f} s")
        started = time.monotonic()
        accel = "kvm" if kvm_usable() else "tcg"
        print(f"accelerator probe:    {time.monotonic() - started:6.2f} s  ({accel})")
        with NodeVM(image, base / "vm", secure_boot=True, vtpm=vtpm, accel=accel) as vm:
            ready = vm.wait_ready()
            quote_started = time.monotonic()
            vm.request_quote(secrets.token_bytes(16))
            quote = time.monotonic() - quote_started
        print(f"boot to agent ready:  {ready:6.2f} s  (target <= 20 s under TCG)")
        print(f"boot to first quote:  {ready + quote:6.2f} s  (EK + AK creation and quote: {quote:.2f} s)")


if __name__ == "__main__":
    main()
