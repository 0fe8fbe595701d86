"""Golden values without a boot: the policy derived from a node image and a varstore (fast, no VM), and the
kernel command line of a real boot of an earlier node image (GRUB chainloaded the kernel's EFI stub).

data/secureboot-vtpm-eventlog.bin: the event log of a real Secure Boot + vTPM boot of the node image
(OVMF_VARS_4M.ms.fd, Debian shim 15.8 / GRUB / kernel), read by the agent from binary_bios_measurements.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from node_helpers import unsigned_copy
from verified_boots import vouched

from trustedlaunch.attest.derivation import policy_for_image
from trustedlaunch.attest.evaluation import evaluate
from trustedlaunch.attest.policy import CmdlineRules, Policy, PolicyError
from trustedlaunch.eventlog.parser import parse_event_log_file
from trustedlaunch.eventlog.predict import PredictionError, predict_pcrs
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.findings import Check
from trustedlaunch.node.image import DEFAULT_CMDLINE, NodeImage, build_node_image, default_kernel
from trustedlaunch.node.qemu import FIRMWARE
from trustedlaunch.uefi.secureboot import decide_boot
from trustedlaunch.uefi.varstore import read_varstore

BOOT_LOG = Path(__file__).parent / "data" / "secureboot-vtpm-eventlog.bin"
MEASURED_CMDLINE = f"initrd=initrd.gz {DEFAULT_CMDLINE}"  # GRUB unescapes `initrd=\initrd.gz`


@pytest.mark.parametrize("secure_boot", [True, False], ids=["secure-boot", "no-secure-boot"])
def test_policy_for_image_pins_the_image_and_varstore(secure_boot: bool, node_image: NodeImage) -> None:
    varstore = FIRMWARE[secure_boot][1]
    policy = policy_for_image(node_image.esp_dir, varstore, banks=("sha1", "sha256"))
    assert Policy.from_json(policy.to_json()) == policy
    assert policy.secure_boot is secure_boot
    shim, grub, kernel = (
        c.sha256.hex() for c in decide_boot(varstore, node_image.esp_dir).components if c.sha256
    )
    chain = [shim, grub, kernel, kernel] if secure_boot else [shim, grub, kernel]
    assert policy.boot_applications is not None
    assert [next(iter(step.digests)) for step in policy.boot_applications] == chain
    assert [step.component for step in policy.boot_applications][:3] == ["shim", "grub", "kernel"]
    assert {(golden.bank, golden.pcr) for golden in policy.golden_pcrs} == {
        (bank, pcr) for bank in ("sha1", "sha256") for pcr in (4, 7, 9)
    }
    assert all(golden.events for golden in policy.golden_pcrs)
    assert policy.describe()["pcrs"] != "any"


def test_secure_boot_policy_requires_the_varstore_keys(node_image: NodeImage) -> None:
    policy = policy_for_image(node_image.esp_dir, FIRMWARE[True][1])
    assert policy.pk is not None and policy.kek is not None and policy.db is not None
    # every db entry of the varstore (OVMF's: Microsoft Windows PCA 2011 + UEFI CA 2011, more in later builds)
    assert len(policy.db.required_entries) == len(read_varstore(FIRMWARE[True][1]).db) >= 2
    assert policy.dbx_required_entries


def test_unbootable_image_cannot_be_predicted(node_image: NodeImage, tmp_path: Path) -> None:
    kernel = unsigned_copy(default_kernel(), tmp_path / "vmlinuz-unsigned")
    image = build_node_image(tmp_path / "image", kernel=kernel)
    with pytest.raises(PredictionError, match=r"kernel \(vmlinuz\).*NotSigned"):
        predict_pcrs(image.esp_dir, FIRMWARE[True][1])
    # without Secure Boot nothing is verified: the unsigned kernel boots and is predicted
    assert predict_pcrs(image.esp_dir, FIRMWARE[False][1]).values["sha256"][4]


def test_pcr9_is_predicted_from_the_files_grub_reads(node_image: NodeImage, tmp_path: Path) -> None:
    """GRUB measures its configuration, the initramfs (its `loopback` read) and the kernel (contents'
    digests) into PCR 9, then the kernel's stub its command line (UTF-16, NUL-terminated); tests/node/
    test_node_attestation.py compares the value with a real quote."""
    esp = node_image.esp_dir
    predicted = predict_pcrs(esp, FIRMWARE[True][1])
    files = ("EFI/debian/grub.cfg", "initrd.gz", "vmlinuz")
    digests = [hashlib.sha256((esp / name).read_bytes()).digest() for name in files]
    options = f"initrd=initrd.gz {DEFAULT_CMDLINE}".encode("utf-16-le") + b"\0\0"
    digests.append(hashlib.sha256(options).digest())
    assert [event.digests["sha256"] for event in predicted.events_of(9)] == digests
    assert [event.component for event in predicted.events_of(9)] == ["grub", "initramfs", "kernel", "kernel"]
    value = bytes(32)
    for digest in digests:
        value = hashlib.sha256(value + digest).digest()
    assert predicted.values["sha256"][9] == value
    policy = policy_for_image(esp, FIRMWARE[True][1])
    assert {golden.pcr for golden in policy.golden_pcrs} == {4, 7, 9}
    assert policy.kernel_cmdline.exact == f"initrd=initrd.gz {DEFAULT_CMDLINE}"
    copy = tmp_path / "esp"
    shutil.copytree(esp, copy)
    (copy / "initrd.gz").unlink()  # GRUB could not boot it
    with pytest.raises(PredictionError, match=r"/initrd.gz is not on the ESP"):
        predict_pcrs(copy, FIRMWARE[True][1])


def test_golden_pcr_fields_are_validated() -> None:
    with pytest.raises(PolicyError, match=r"pcrs\.sha256\.4.*64 hex digits"):
        Policy.from_dict({"pcrs": {"sha256": {"4": "00" * 20}}})
    with pytest.raises(PolicyError, match=r"pcrs\.sha256.*PCR index 'x'"):
        Policy.from_dict({"pcrs": {"sha256": {"x": "00" * 32}}})
    with pytest.raises(PolicyError, match=r"pcrs.*unknown field\(s\) md5"):
        Policy.from_dict({"pcrs": {"md5": {"4": "00" * 16}}})


def test_chainloader_arguments_are_the_kernel_command_line() -> None:
    log = parse_event_log_file(BOOT_LOG)
    summary = summarize(log)
    assert summary.kernel_cmdline == MEASURED_CMDLINE
    event = summary.kernel_cmdline_event
    assert event is not None and event.pcr == 8
    assert f"chainloader /vmlinuz {MEASURED_CMDLINE}" in summary.grub_commands
    rules = CmdlineRules(exact=MEASURED_CMDLINE, required_tokens=("panic=-1",), forbidden_tokens=("init=",))
    assert evaluate(Policy(kernel_cmdline=rules), vouched(summary)) == []
    findings = evaluate(Policy(kernel_cmdline=CmdlineRules(forbidden_tokens=("console=",))), vouched(summary))
    assert [(f.check, f.pcr, f.event_index) for f in findings] == [(Check.KERNEL_CMDLINE, 8, event.index)]
