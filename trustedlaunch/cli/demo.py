"""`tl demo`: the trust core end to end on this machine, with real firmware keys, binaries, logs and a TPM.

1. Build a node image from Debian's signed shim, GRUB and kernel and decide, offline, whether it boots
   under OVMF's Microsoft Secure Boot keys; then show that an unsigned kernel is refused by name.
2. Replay a real OVMF Secure Boot log of the same Debian binaries and show that the firmware measured
   exactly the images verified in step 1.
3. Make real attestation evidence with swtpm (PCRs extended with that boot, a fresh AK, a nonce-bound
   quote), verify it against a policy pinned to the image, then reject a replayed nonce and a kernel
   the policy does not allow, each with an integrity alert naming the component.
4. Verify a real GCE Shielded VM attestation (AK certificate chain, quotes, replay).
Steps 2-4 read the public test data in ../shared/testdata beside the repository when it is there.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from trustedlaunch.attest.evidence import Evidence, collect_evidence, extend_event_log
from trustedlaunch.attest.gce import load_certificates, verify_gce_attestation
from trustedlaunch.attest.policy import BootStep, Policy, policy_from_summary
from trustedlaunch.attest.verifier import AttestationResult, verify
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.replay import replay
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.node.image import build_node_image
from trustedlaunch.tpm.swtpm import Swtpm
from trustedlaunch.uefi.secureboot import BootDecision, decide_boot

MICROSOFT_VARSTORE = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
TESTDATA = Path(os.environ.get("TL_TESTDATA", Path(__file__).resolve().parents[3] / "shared" / "testdata"))
OVMF_SECURE_BOOT_LOG = "qemu-ovmf/shim_evlog.bin"  # a real OVMF boot of Debian's shim -> GRUB -> kernel
GCE_ATTESTATION = "go-tpm-tools/attestations/gce-cos-85-nonce9009.pb"
GCE_NONCE = bytes.fromhex("9009")

console = Console()


def demo() -> None:
    """Run the trust-core demo (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="tl-demo-") as scratch:
        workdir = Path(scratch)
        decision = _image_verification(workdir)
        if not TESTDATA.is_dir():
            console.print(f"[yellow]{TESTDATA} not found: skipping the event-log and attestation steps.[/]")
            return
        raw_log = (TESTDATA / OVMF_SECURE_BOOT_LOG).read_bytes()
        _event_log(raw_log, decision)
        _attestation(raw_log, decision, workdir)
        _gce_attestation()
    console.rule("[bold green]demo complete")


def _image_verification(workdir: Path) -> BootDecision:
    console.rule("[bold]1. Secure Boot decision for a Debian node image (offline)")
    image = build_node_image(workdir / "image")
    console.print(f"node image {image.version} at {image.esp_dir}; varstore {MICROSOFT_VARSTORE.name}")
    decision = decide_boot(MICROSOFT_VARSTORE, image.esp_dir)
    _print_decision(decision)
    tampered = workdir / "tampered-esp"
    shutil.copytree(image.esp_dir, tampered)
    subprocess.run(["sbattach", "--remove", str(tampered / "vmlinuz")], check=True, capture_output=True)
    console.print("\nThe same image with the kernel's signature removed:")
    _print_decision(decide_boot(MICROSOFT_VARSTORE, tampered))
    if not decision.boots:
        raise typer.Exit(1)
    return decision


def _print_decision(decision: BootDecision) -> None:
    table = Table("component", "path", "Authenticode sha256", "verified by", "verdict")
    for component in decision.components:
        table.add_row(
            component.name,
            component.path,
            component.sha256.hex()[:16] + "…" if component.sha256 else "-",
            component.verified_by or "-",
            "[green]ok[/]" if component.accepted else f"[red]{component.reason}[/]",
        )
    console.print(table)
    console.print(("[green]" if decision.boots else "[red]") + decision.summary + "[/]")


def _event_log(raw_log: bytes, decision: BootDecision) -> None:
    console.rule("[bold]2. Replay of a real OVMF Secure Boot event log")
    log = parse_event_log(raw_log)
    pcrs = replay(log, ["sha256"])["sha256"]
    summary = summarize(log)
    console.print(
        f"{len(log.events)} events, banks {', '.join(log.banks)}; Secure Boot {summary.secure_boot}"
    )
    for pcr in (0, 4, 7):
        console.print(f"  sha256 PCR{pcr} = {pcrs[pcr].hex()}")
    image_digests = {c.sha256: c.name for c in decision.components if c.sha256}
    for app in summary.boot_apps:
        name = image_digests.get(app.digest())
        verdict = f"[green]= {name} of the node image[/]" if name else "[yellow]not in the node image[/]"
        console.print(
            f"  loaded {app.device_path or '(image in memory)'}: {app.digest().hex()[:16]}… {verdict}"
        )


def _attestation(raw_log: bytes, decision: BootDecision, workdir: Path) -> None:
    console.rule("[bold]3. Remote attestation with a real TPM (swtpm)")
    log = parse_event_log(raw_log)
    pcrs = sorted(replay(log, ["sha256"])["sha256"])
    policy = _image_policy(policy_from_summary(summarize(log)), decision)
    nonce = os.urandom(16)
    with Swtpm() as tpm:
        extend_event_log(tpm, log, banks=("sha256",))
        evidence = collect_evidence(tpm, raw_log, nonce=nonce, pcrs=pcrs, workdir=workdir)
    first = verify(evidence, nonce=nonce, policy=policy)
    _print_result("fresh quote, policy pinned to the node image", first)
    _print_result(
        "the same evidence replayed against a new nonce",
        verify(evidence, nonce=os.urandom(16), policy=policy, last_clock=first.clock),
    )
    other_kernel = dataclasses.replace(
        policy,
        boot_applications=tuple(
            BootStep(step.component, frozenset({"00" * 32})) if step.component == "kernel" else step
            for step in policy.boot_applications or ()
        ),
    )
    _print_result(
        "a pool policy that allows another kernel only", verify(evidence, nonce=nonce, policy=other_kernel)
    )
    _print_evidence_size(evidence)


def _image_policy(policy: Policy, decision: BootDecision) -> Policy:
    """The log's policy with every boot step named after, and limited to, the node image's binary."""
    digests = {c.sha256.hex(): c.name for c in decision.components if c.sha256}
    steps = []
    for step in policy.boot_applications or ():
        (digest,) = step.digests
        steps.append(BootStep(digests.get(digest, step.component), step.digests))
    return dataclasses.replace(policy, secure_boot=True, boot_applications=tuple(steps))


def _print_result(title: str, result: AttestationResult) -> None:
    if result.ok:
        console.print(f"[green]PASS[/] {title}")
        return
    console.print(f"[red]INTEGRITY ALERT[/] {title}:")
    for finding in result.findings:
        console.print(f"    {finding}")


def _print_evidence_size(evidence: Evidence) -> None:
    console.print(
        f"evidence: AK {len(evidence.ak_public)} B, quote {len(evidence.quote)} B, "
        f"signature {len(evidence.signature)} B, event log {len(evidence.event_log)} B"
    )


def _gce_attestation() -> None:
    console.rule("[bold]4. A real GCE Shielded VM attestation (go-tpm-tools test data)")
    ca_dir = TESTDATA / "go-tpm-tools" / "ca-certs"
    roots = load_certificates([ca_dir / "tpm_ek_root_1.cer"])
    intermediates = load_certificates([ca_dir / "tpm_ek_intermediate_2.crt"])
    attestation = (TESTDATA / GCE_ATTESTATION).read_bytes()
    result = verify_gce_attestation(attestation, GCE_NONCE, roots, intermediates)
    summary = summarize(result.event_log)
    console.print(f"[green]verified[/] {GCE_ATTESTATION} (nonce {GCE_NONCE.hex()})")
    console.print(f"  AK certificate issued by: {result.ak_certificate.issuer.rfc4514_string()}")
    console.print(
        f"  quoted banks: {', '.join(sorted(result.replayed_pcrs))}; Secure Boot {summary.secure_boot}"
    )
    for app in summary.boot_apps:
        console.print(f"  boot app {app.device_path or '(image in memory)'}: {app.digest().hex()[:16]}…")
