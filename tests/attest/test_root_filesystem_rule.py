"""The root filesystem rule: a node image's dm-verity root hash, read from its GRUB configuration, carried by
the policy document, and checked against the root hash on the measured kernel command line (PCR 8). A real
node's measured log (tests/node/data, a node image without a root filesystem) and that log's summary edited
to carry another root hash; tests/node/test_rootfs_boot.py checks a real quote of a rootfs node."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from verified_boots import vouched

from trustedlaunch.attest.derivation import image_kernel_cmdline, image_root_hash
from trustedlaunch.attest.evaluation import evaluate
from trustedlaunch.attest.policy import ROOT_HASH_ARG, Policy, PolicyError, RootFilesystemRule
from trustedlaunch.eventlog.model import BootSummary
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.findings import Check, Finding
from trustedlaunch.node.image import VERITY_ROOTHASH_ARG
from trustedlaunch.uefi.grub_config import MAX_GRUB_CONFIG_BYTES

NODE_LOG = Path(__file__).parents[1] / "node" / "data" / "secureboot-vtpm-eventlog.bin"
EXPECTED = "a1" * 32
OTHER = "b2" * 32
RULE = RootFilesystemRule(EXPECTED, "TLDebian12gen2TLcontainerd-202612.06.0")


@pytest.fixture(scope="module")
def node_summary() -> BootSummary:
    return summarize(parse_event_log(NODE_LOG.read_bytes()))


def with_cmdline(summary: BootSummary, cmdline: str | None) -> BootSummary:
    event = None if cmdline is None else summary.kernel_cmdline_event
    return dataclasses.replace(summary, kernel_cmdline=cmdline, kernel_cmdline_event=event)


def test_the_policy_and_the_node_image_name_the_same_argument() -> None:
    assert ROOT_HASH_ARG == VERITY_ROOTHASH_ARG  # attest and node are independent layers: one value


def test_the_measured_root_hash_of_the_node_image_passes(node_summary: BootSummary) -> None:
    cmdline = f"{node_summary.kernel_cmdline} {ROOT_HASH_ARG}={EXPECTED} trustedlaunch.verity_blocks=9"
    assert evaluate(Policy(root_filesystem=RULE), vouched(with_cmdline(node_summary, cmdline))) == []


def test_another_root_hash_is_a_finding_naming_the_root_filesystem_and_the_image(
    node_summary: BootSummary,
) -> None:
    cmdline = f"{node_summary.kernel_cmdline} {ROOT_HASH_ARG}={OTHER}"
    [finding] = evaluate(Policy(root_filesystem=RULE), vouched(with_cmdline(node_summary, cmdline)))
    event = node_summary.kernel_cmdline_event
    assert event is not None
    assert finding == Finding(
        Check.ROOT_FILESYSTEM,
        "root filesystem",
        f"root filesystem hash differs from node image {RULE.node_image}: measured {OTHER}, "
        f"expected {EXPECTED}",
        pcr=8,
        event_index=event.index,
    )
    assert str(finding).startswith("RootFilesystemNotAllowed (root filesystem, PCR8, event #36): ")


def test_a_measured_log_without_a_root_hash_fails_the_rule(node_summary: BootSummary) -> None:
    [finding] = evaluate(Policy(root_filesystem=RULE), vouched(node_summary))
    assert (finding.check, finding.component, finding.pcr) == (Check.ROOT_FILESYSTEM, "root filesystem", 8)
    assert finding.message == (
        f"root filesystem hash differs from node image {RULE.node_image}: the measured command line has no "
        f"{ROOT_HASH_ARG}, expected {EXPECTED}"
    )
    twice = f"{ROOT_HASH_ARG}={EXPECTED} {ROOT_HASH_ARG}={EXPECTED}"  # the kernel would take one: ambiguous
    [finding] = evaluate(Policy(root_filesystem=RULE), vouched(with_cmdline(node_summary, twice)))
    assert f"measured {EXPECTED}, {EXPECTED}, expected" in finding.message
    [finding] = evaluate(
        Policy(root_filesystem=RootFilesystemRule(EXPECTED)), vouched(with_cmdline(node_summary, None))
    )
    assert finding.message == (
        f"root filesystem hash differs from the node image: no kernel command line was measured, "
        f"expected {EXPECTED}"
    )
    assert finding.pcr == 8 and finding.event_index is None


def test_the_rule_round_trips_in_the_policy_document_and_its_fields_are_checked() -> None:
    policy = Policy(secure_boot=True, root_filesystem=RULE)
    document = policy.to_dict()
    assert document["rootFilesystem"] == {"rootHash": EXPECTED, "nodeImage": RULE.node_image}
    assert Policy.from_json(policy.to_json()) == policy
    assert "rootFilesystem" not in Policy(secure_boot=True).to_dict()  # older documents read as they were
    alone = Policy.from_dict({"version": 1, "rootFilesystem": {"rootHash": EXPECTED.upper()}})
    assert alone.root_filesystem == RootFilesystemRule(EXPECTED) and alone.has_rules
    assert alone.describe()["rootFilesystem"] == f"dm-verity root hash {EXPECTED}"
    for bad, named in (
        ({"rootHash": "ab"}, "rootFilesystem.rootHash"),
        ({"rootHash": EXPECTED, "nodeImage": ""}, "rootFilesystem.nodeImage"),
        ({"rootHash": EXPECTED, "salt": EXPECTED}, "rootFilesystem"),
        ({}, "rootFilesystem"),
    ):
        with pytest.raises(PolicyError, match=rf"field '{named}'"):
            Policy.from_dict({"version": 1, "rootFilesystem": bad})


def grub_esp(tmp_path: Path, config: str | bytes) -> Path:
    path = tmp_path / "esp" / "EFI" / "debian" / "grub.cfg"
    path.parent.mkdir(parents=True)
    path.write_bytes(config.encode() if isinstance(config, str) else config)
    return tmp_path / "esp"


def test_the_root_hash_is_read_from_the_kernel_line_of_the_image_grub_configuration(tmp_path: Path) -> None:
    kernel_line = f"chainloader /vmlinuz initrd=\\initrd.gz console=ttyS0 {ROOT_HASH_ARG}={EXPECTED}\n"
    assert image_root_hash(grub_esp(tmp_path / "a", f"set timeout=0\n{kernel_line}boot\n")) == EXPECTED
    assert image_root_hash(grub_esp(tmp_path / "b", "chainloader /vmlinuz console=ttyS0\n")) is None
    assert image_root_hash(tmp_path / "no-esp") is None
    echoed = f'echo "{ROOT_HASH_ARG}={OTHER}"\nchainloader /vmlinuz\n'  # not the kernel's command line
    assert image_root_hash(grub_esp(tmp_path / "c", echoed)) is None


def test_the_measured_kernel_command_line_is_predicted_from_the_kernel_line(tmp_path: Path) -> None:
    """GRUB measures a command as its parser reads it: the backslash of `initrd=\\initrd.gz` and quotes go
    (tests/node/test_rootfs_boot.py compares the prediction with a real node's measured log)."""
    line = f"chainloader /vmlinuz initrd=\\initrd.gz  console=ttyS0 'a b' {ROOT_HASH_ARG}={EXPECTED}\n"
    predicted = image_kernel_cmdline(grub_esp(tmp_path / "a", f"set timeout=0\n{line}boot\n"))
    assert predicted == f"initrd=initrd.gz console=ttyS0 a b {ROOT_HASH_ARG}={EXPECTED}"
    unpredictable = {
        "variable": "chainloader /vmlinuz root=$root\n",
        "two kernels": "chainloader /vmlinuz a=1\nchainloader /vmlinuz a=2\n",
        "no arguments": "chainloader /vmlinuz\n",
        "two initrd lines": "linux /vmlinuz a=1\ninitrd /a.gz\ninitrd /b.gz\n",
    }
    for name, config in unpredictable.items():
        assert image_kernel_cmdline(grub_esp(tmp_path / name, config)) is None, name
    assert image_kernel_cmdline(tmp_path / "no-esp") is None
    linux = "linux /vmlinuz console=ttyS0 'a b'\ninitrd /initrd.gz\n"  # `linux` measures "PATH ARGS"
    assert image_kernel_cmdline(grub_esp(tmp_path / "linux", linux)) == "/vmlinuz console=ttyS0 a b"
    with pytest.raises(PolicyError, match="cannot be parsed"):
        image_kernel_cmdline(grub_esp(tmp_path / "quote", "chainloader /vmlinuz 'open\n"))


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (f"linux /vmlinuz {ROOT_HASH_ARG}={EXPECTED} {ROOT_HASH_ARG}={OTHER}\n", "must name one root hash"),
        (f"linux /vmlinuz {ROOT_HASH_ARG}=xyz\n", "must name one root hash"),
        (f"linux /vmlinuz {ROOT_HASH_ARG}={EXPECTED.upper()}\n", "must name one root hash"),
        ("#" * (MAX_GRUB_CONFIG_BYTES + 1), f"larger than {MAX_GRUB_CONFIG_BYTES} bytes"),
    ],
)
def test_a_hostile_grub_configuration_is_refused_naming_it(tmp_path: Path, config: str, problem: str) -> None:
    esp = grub_esp(tmp_path, config)
    with pytest.raises(PolicyError, match=problem) as error:
        image_root_hash(esp)
    assert str(esp / "EFI" / "debian" / "grub.cfg") in str(error.value)
