"""`tl demo` (what `make demo` runs): the trusted launch scenario on real VMs through real `tl` processes,
and `tl demo trust-core`, the offline trust-core demo; each completes and shows what it promises."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trustedlaunch.cli.demo import OVMF_SECURE_BOOT_LOG
from trustedlaunch.cli.main import app
from trustedlaunch.control.kubernetes_release import cache_root
from trustedlaunch.eventlog.parser import parse_event_log_file
from trustedlaunch.eventlog.types import EV_EFI_BOOT_SERVICES_APPLICATION
from trustedlaunch.node.image import GRUB, SHIM, default_kernel
from trustedlaunch.uefi.authenticode import load_pe_image

MAX_DATA_DIR_LENGTH = 50
SCENARIO_TIMEOUT = 3600  # seven tl commands and three VM boots under TCG on a loaded machine


def _log_measured(image_file: Path, log: Path) -> bool:
    """Whether `log` measured this build of `image_file`: the digest its signer signed (read from the
    signature, not computed) is one of the log's boot application digests."""
    measured = {
        event.digests["sha256"]
        for event in parse_event_log_file(log).events
        if event.event_type == EV_EFI_BOOT_SERVICES_APPLICATION
    }
    return any(signature.signed_digest in measured for signature in load_pe_image(image_file).signatures)


def test_trust_core_demo_runs_end_to_end_with_real_components(testdata: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "trust-core"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    output = result.output
    assert "boots: every stage is signed by a trusted authority" in output
    assert "does not boot: kernel (vmlinuz): the image carries no Authenticode signature" in output
    log = testdata / OVMF_SECURE_BOOT_LOG
    for name, image_file in (("shim", SHIM), ("grub", GRUB), ("kernel", default_kernel())):
        matched = f"= {name} of the node image" in output
        assert matched == _log_measured(image_file, log), f"{name}: demo says matched={matched}"
    assert ("not in the node image (the log was recorded with another build)" in output) == (
        not _log_measured(default_kernel(), log)
    )
    assert "PASS fresh quote, policy from the log's boot chain" in output
    assert "NonceMismatch (quote)" in output
    assert "BootApplicationNotAllowed (kernel, PCR4" in output
    assert "verified go-tpm-tools/attestations/gce-cos-85-nonce9009.pb" in output
    assert "demo complete" in output


def machine_row(output: str, name: str) -> list[str]:
    """The last `tl aks machine list -o table` row of node `name`: name, state, Secure Boot, vTPM,
    attestation, labels."""
    rows = [
        line.split()
        for line in output.splitlines()
        if line.startswith(name + " ") and "kubernetes.azure.com/agentpool=" in line  # not kubectl's rows
    ]
    assert rows, f"no machine row for {name} in:\n{output}"
    return rows[-1]


def node_columns(output: str, name: str) -> list[list[str]]:
    """Every `kubectl get nodes -L trusted-launch,secure-boot` row of node `name`, split (an empty label
    column is missing)."""
    return [line.split() for line in output.splitlines() if line.startswith(name + " ")]


def assert_docs_pods(output: str) -> None:
    """The AKS docs' pods as the demo's real kubectl output shows them."""
    system, vtpm_only = "aks-nodepool1-00000001-vmss000000", "aks-vtpmpool-00000002-vmss000000"
    assert "-L kubernetes.azure.com/trusted-launch,kubernetes.azure.com/secure-boot" in output
    header = next(
        line.split() for line in output.splitlines() if line.startswith("NAME ") and "SECURE-BOOT" in line
    )
    assert header[-2:] == ["TRUSTED-LAUNCH", "SECURE-BOOT"]
    # before the reimage: the system pool's node has both labels, the vTPM-only pool's trusted-launch only
    assert node_columns(output, system)[0][1] == "Ready" and node_columns(output, system)[0][-2:] == [
        "true",
        "true",
    ]
    first_vtpm_only = node_columns(output, vtpm_only)[0]
    assert first_vtpm_only[1] == "Ready" and first_vtpm_only[-1] == "true" and len(first_vtpm_only) == 6
    # the Secure Boot pod runs on the only Secure Boot node, the trusted launch pod on a vTPM node
    assert f"hello from secure-boot-pod on node {system}\n" in output
    assert (
        f"verified pod secure-boot-pod runs on node {system} (kubernetes.azure.com/secure-boot=true)"
        in output
    )
    assert "hello from trusted-launch-pod on node aks-" in output
    assert "verified pod trusted-launch-pod runs on node aks-" in output
    # Secure Boot in the vTPM-only pool: no attested node has it, the scheduler says why
    assert (
        "secure-boot-vtpmpool-pod stays Pending; the scheduler says: 0/2 nodes are available: "
        "2 node(s) didn't match Pod's node affinity/selector" in output
    )
    assert "FailedScheduling" in output
    # after the pool's reimage with Secure Boot it runs there, and kubectl logs reaches it
    assert "hello from secure-boot-vtpmpool-pod on node aks-vtpmpool-" in output
    assert "verified pod secure-boot-vtpmpool-pod runs on node aks-vtpmpool-" in output
    assert node_columns(output, vtpm_only)[-1][-2:] == ["true", "true"]


@pytest.mark.slow
def test_demo_scenario_runs_on_real_vms_and_cleans_up(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    home = tmp_path / "user-home"
    home.mkdir()
    data_dir = tmp_path / "demo"
    if len(str(data_dir)) > MAX_DATA_DIR_LENGTH:  # VM sockets live under it (unix socket paths are short)
        data_dir = Path(tempfile.mkdtemp(prefix="tl-demo-test-"))
        request.addfinalizer(lambda: shutil.rmtree(data_dir, ignore_errors=True))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TL_", "XDG_"))}
    # a user of its own, with the Kubernetes release `make setup` built (hosted control planes: the default)
    env |= {"HOME": str(home), "COLUMNS": "200", "XDG_CACHE_HOME": str(cache_root().parent.parent)}
    tl = Path(sys.executable).parent / "tl"
    result = subprocess.run(
        [str(tl), "demo", "--data-dir", str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=SCENARIO_TIMEOUT,
        check=False,
    )
    output = result.stdout
    print(output)  # the demo as a user sees it (pytest -s), its timings table last
    assert result.returncode == 0, output + result.stderr
    for step in (
        "1. Register the TrustedLaunchPreview feature and refresh the provider",
        "2. Create a resource group and a cluster with one Secure Boot + vTPM node",
        "3. Reach the cluster's own Kubernetes API server with kubectl",
        "4. Add a vTPM-only node pool",
        "5. Schedule the AKS docs' pods by the trusted launch labels",
        "6. Enable Secure Boot on the vTPM-only pool",
        "7. List the nodes with their labels and attestation results",
        "8. The Pending pod runs on the reimaged Secure Boot node",
        "9. Delete the cluster",
    ):
        assert step in output
    # the cluster's own control plane answered kubectl with the admin kubeconfig of get-credentials
    assert "Server Version: v1.36.3" in output and "clusterAdmin" in output and "kube-system" in output
    assert "feature state: Registered" in output
    assert "$ tl group create -n tl-demo-rg -l eastus -o table" in output  # before the cluster, as az
    assert "$ tl group delete -n tl-demo-rg --yes" in output
    assert (
        "$ tl aks create -g tl-demo-rg -n tldemo --node-count 1 --enable-secure-boot --enable-vtpm" in output
    )
    assert (
        "$ tl aks nodepool update -g tl-demo-rg --cluster-name tldemo --name vtpmpool --enable-secure-boot"
        in output
    )

    system = machine_row(output, "aks-nodepool1-00000001-vmss000000")
    updated = machine_row(output, "aks-vtpmpool-00000002-vmss000000")
    for row, pool in ((system, "nodepool1"), (updated, "vtpmpool")):
        name, state, power, health, secure_boot, vtpm, attestation, labels = row
        assert (state, power, health) == ("Ready", "Running", "Healthy"), row
        assert (secure_boot, vtpm, attestation) == ("True", "True", "Attested"), row
        assert set(labels.split(",")) == {
            f"kubernetes.azure.com/agentpool={pool}",
            "kubernetes.azure.com/attestation-status=Attested",
            "kubernetes.azure.com/secure-boot=true",  # on the vTPM-only pool since its reimage
            "kubernetes.azure.com/trusted-launch=true",
        }, row
        assert f"verified {name}: Ready, Secure Boot + vTPM, Attested" in output
    assert_docs_pods(output)
    assert "demo complete" in output

    left = subprocess.run(
        ["pgrep", "-a", "-f", r"(^|/)(qemu-system|swtpm|etcd|kube-apiserver|kube-controller|kube-scheduler)"],
        capture_output=True,
        text=True,
    )
    assert [line for line in left.stdout.splitlines() if str(data_dir) in line] == []
    vm_dir = data_dir / "data" / "trustedlaunch" / "nodes" / "vm"
    assert not vm_dir.exists() or list(vm_dir.iterdir()) == []  # every VM's files removed with the cluster
    assert list(home.iterdir()) == []  # the user's home is untouched (no ~/.ssh key, no store, no token)
