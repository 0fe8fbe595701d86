"""`tl demo`: the trusted launch scenario of `make demo` end to end on this machine, with real VMs.

`tl demo` (the scenario) runs the az-compatible commands of `tl` one after the other, each a real `tl`
process with its embedded API server and node reconciler, on a store and state of its own (a temporary
directory, or --data-dir): register the TrustedLaunchPreview feature and wait until it is Registered,
refresh the provider, create a cluster with one Secure Boot + vTPM node (and its own Kubernetes control
plane; its node joins it as a Kubernetes node once attested), reach its API server with kubectl and the
kubeconfig of `tl aks get-credentials`, add a vTPM-only pool, schedule the AKS documentation's pods by the
trusted launch labels (`kubectl get nodes -L ...`; a Secure Boot pod runs on the Secure Boot node, a trusted
launch pod on a vTPM node, and a pod asking for Secure Boot in the vTPM-only pool stays Pending with the
scheduler's reason), enable Secure Boot on that pool (a rolling reimage: new VM, new vTPM, attested again),
list the nodes of both pools with their labels and attestation results, show that the Pending pod now runs
on the reimaged node, then delete the cluster and check that no VM or control-plane process is left.

`tl demo trust-core` runs the fast offline demo of the trust core:
1. Build a node image from Debian's signed shim, GRUB and kernel and decide, offline, whether it boots
   under OVMF's Microsoft Secure Boot keys; then show that an unsigned kernel is refused by name.
2. Replay a real OVMF Secure Boot log of Debian's shim, GRUB and kernel and show which of the images
   the firmware measured are the ones verified in step 1 (the log froze one build of each package: a
   newer build installed here shows up as "another build").
3. Make real attestation evidence with swtpm (PCRs extended with that boot, a fresh AK, a nonce-bound
   quote), verify it against the policy of that boot chain, then reject a replayed nonce and a kernel
   the policy does not allow, each with an integrity alert naming the component.
4. Verify a real GCE Shielded VM attestation (AK certificate chain, quotes, replay).
Steps 2-4 read the public test data in ../shared/testdata beside the repository when it is there.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from trustedlaunch.attest.derivation import policy_from_summary
from trustedlaunch.attest.evidence import Evidence, collect_evidence, extend_event_log
from trustedlaunch.attest.gce import load_certificates, verify_gce_attestation
from trustedlaunch.attest.policy import BootStep, Policy
from trustedlaunch.attest.verifier import AttestationResult, verify
from trustedlaunch.cli.aks import MACHINE_COLUMNS
from trustedlaunch.cli.output import UNLIMITED_WIDTH
from trustedlaunch.control.hosted_control_plane import control_plane_processes, stop_control_plane_processes
from trustedlaunch.control.kubernetes_release import KubernetesReleaseError, cache_root, verified_release
from trustedlaunch.control.labels import LABEL_AGENT_POOL, LABEL_SECURE_BOOT, LABEL_TRUSTED_LAUNCH
from trustedlaunch.control.node_processes import kill_node_processes, node_processes
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.replay import replay
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.node.container_images import BUSYBOX_REPOSITORY, busybox_version
from trustedlaunch.node.image import BUSYBOX, build_node_image
from trustedlaunch.node.qemu import firmware_varstore
from trustedlaunch.tpm.swtpm import Swtpm
from trustedlaunch.uefi.secureboot import BootDecision, decide_boot

MICROSOFT_VARSTORE = firmware_varstore(secure_boot=True)
TESTDATA = Path(os.environ.get("TL_TESTDATA", Path(__file__).resolve().parents[3] / "shared" / "testdata"))
OVMF_SECURE_BOOT_LOG = "qemu-ovmf/shim_evlog.bin"  # a real OVMF boot of Debian's shim -> GRUB -> kernel
GCE_ATTESTATION = "go-tpm-tools/attestations/gce-cos-85-nonce9009.pb"
GCE_NONCE = bytes.fromhex("9009")

RESOURCE_GROUP = "tl-demo-rg"
CLUSTER = "tldemo"
SYSTEM_POOL = "nodepool1"
VTPM_POOL = "vtpmpool"
FEATURE = ("--namespace", "Microsoft.ContainerService", "--name", "TrustedLaunchPreview")
FEATURE_DELAY_SECONDS = "10"  # how long the demo's feature registration stays Registering
# The AKS documentation's pods: (name, nodeSelector). The last one asks for Secure Boot in the vTPM-only
# pool, which no attested node has until that pool's reimage with Secure Boot.
SECURE_BOOT_POD = "secure-boot-pod"
TRUSTED_LAUNCH_POD = "trusted-launch-pod"
PENDING_POD = "secure-boot-vtpmpool-pod"
DOCS_PODS = (
    (SECURE_BOOT_POD, {LABEL_SECURE_BOOT: "true"}),
    (TRUSTED_LAUNCH_POD, {LABEL_TRUSTED_LAUNCH: "true"}),
    (PENDING_POD, {LABEL_SECURE_BOOT: "true", LABEL_AGENT_POOL: VTPM_POOL}),
)
POD_SECONDS = 300  # pod create -> Running (about 10 s under TCG on a quiet machine)
# The user's own API, store and credentials are not the demo's.
FOREIGN_SETTINGS = ("TL_ENDPOINT", "TL_TOKEN", "TL_DATABASE_URL", "TL_SUBSCRIPTION")

console = Console()


class DemoPart(StrEnum):
    """What `tl demo` runs."""

    scenario = "scenario"
    trust_core = "trust-core"


@dataclasses.dataclass(frozen=True)
class Machine:
    """A row of `tl aks machine list -o table`."""

    name: str
    state: str
    power: str
    health: str
    secure_boot: str
    vtpm: str
    attestation: str
    labels_text: str
    node_labels_text: str  # the pool's (the demo's pools have none)
    taints_text: str

    @classmethod
    def from_row(cls, row: str) -> Machine:
        """Parse a table row (empty trailing cells, e.g. no labels yet, are empty strings)."""
        cells = row.split(None, len(MACHINE_COLUMNS) - 1)
        return cls(*cells, *[""] * (len(MACHINE_COLUMNS) - len(cells)))

    @property
    def labels(self) -> dict[str, str]:
        """The node's Kubernetes labels."""
        return dict(label.partition("=")[::2] for label in self.labels_text.split(",") if label)


class DemoFailedError(Exception):
    """A step of the scenario did not do what it shows."""


def demo(
    part: Annotated[
        DemoPart,
        typer.Argument(help="scenario: the trusted launch cluster on real VMs; trust-core: offline."),
    ] = DemoPart.scenario,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Store, node images and VM files of the scenario (default: a temporary directory removed "
            "at the end).",
        ),
    ] = None,
    timeout: Annotated[
        int, typer.Option("--timeout", min=60, help="Seconds each long-running operation may take.")
    ] = 900,
) -> None:
    """Run the demo: the trusted launch scenario on real VMs (default) or the offline trust core."""
    if part is DemoPart.trust_core:
        trust_core()
        return
    if data_dir is not None:
        _scenario(data_dir.resolve(), timeout)
        return
    with tempfile.TemporaryDirectory(prefix="tl-demo-") as scratch:
        _scenario(Path(scratch), timeout)


def trust_core() -> None:
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


# -- the scenario ---------------------------------------------------------------------------------------


class _Scenario:
    """Runs `tl` commands in an environment isolated in `data_dir` and times the steps."""

    def __init__(self, data_dir: Path, timeout: int) -> None:
        self.data_dir = data_dir
        self.timeout = str(timeout)
        self.tl = _tl_command()
        self.timings: list[tuple[str, float]] = []
        self.steps = 0
        home = data_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = {key: value for key, value in os.environ.items() if key not in FOREIGN_SETTINGS}
        env |= {
            "HOME": str(home),  # --generate-ssh-keys writes the demo's key here, not in the user's ~/.ssh
            "XDG_DATA_HOME": str(data_dir / "data"),  # store, node images, VM run dirs
            "XDG_CONFIG_HOME": str(data_dir / "config"),  # admin token
            "XDG_CACHE_HOME": str(cache_root().parent.parent),  # the Kubernetes release `make setup` built
            "XDG_STATE_HOME": str(data_dir / "state"),
        }
        env.setdefault("TL_FEATURE_REGISTRATION_DELAY_SECONDS", FEATURE_DELAY_SECONDS)
        self.env = env
        self.kubeconfig = data_dir / "kubeconfig"  # the cluster admin's, from `tl aks get-credentials`

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """A numbered heading, then the step's wall time."""
        self.steps += 1
        console.rule(f"[bold]{self.steps}. {title}")
        started = time.monotonic()
        yield
        elapsed = time.monotonic() - started
        self.timings.append((title, elapsed))
        console.print(f"[green]done[/] in {elapsed:.1f} s")

    def run(self, *args: str, capture: bool = False) -> str:
        """Run `tl args` (shown first); its output goes to the terminal unless captured (then returned, its
        tables with every column: the demo reads them)."""
        console.print(f"[bold cyan]$ tl {' '.join(args)}[/]", soft_wrap=True)  # one line, to copy
        sys.stdout.flush()
        result = subprocess.run(
            [*self.tl, *args],
            env={**self.env, "COLUMNS": str(UNLIMITED_WIDTH)} if capture else self.env,
            stdout=subprocess.PIPE if capture else None,
            text=True,
            check=False,
        )
        sys.stdout.flush()
        if result.returncode != 0:
            raise DemoFailedError(f"`tl {' '.join(args)}` exited with {result.returncode}")
        return result.stdout or ""

    def kubectl(self, *arguments: str, capture: bool = False, show: bool = True) -> str:
        """Run the cached kubectl with the cluster's admin kubeconfig (the command shown first unless not
        `show`); its output goes to the terminal unless captured (then returned)."""
        if show:
            console.print(f"[bold cyan]$ kubectl {' '.join(arguments)}[/]", soft_wrap=True)
        sys.stdout.flush()
        try:
            kubectl = verified_release().binary("kubectl")
        except KubernetesReleaseError as exc:
            raise DemoFailedError(str(exc)) from None
        done = subprocess.run(
            [str(kubectl), "--kubeconfig", str(self.kubeconfig), *arguments],
            env=self.env,
            stdout=subprocess.PIPE if capture else None,
            text=True,
            check=False,
        )
        sys.stdout.flush()
        if done.returncode != 0:
            raise DemoFailedError(f"kubectl {' '.join(arguments)} failed (exit {done.returncode})")
        return done.stdout or ""

    def machines(self, pool: str) -> list[Machine]:
        """Show `tl aks machine list -o table` of `pool` and return its rows."""
        listed = self.run(*_machine_list(pool), "-o", "table", capture=True)
        console.print(listed, end="", markup=False, highlight=False, soft_wrap=True)
        header, *rows = listed.splitlines()
        if header.split() != [column.header for column in MACHINE_COLUMNS]:
            raise DemoFailedError(f"unexpected `tl aks machine list` columns: {header}")
        return [Machine.from_row(row) for row in rows if row.strip()]

    def print_timings(self) -> None:
        """A table of the steps and their wall times."""
        table = Table("step", "seconds", title="scenario timings")
        for title, elapsed in self.timings:
            table.add_row(title, f"{elapsed:.1f}")
        table.add_row("[bold]total", f"[bold]{sum(elapsed for _, elapsed in self.timings):.1f}")
        console.print(table)


def _tl_command() -> list[str]:
    """The `tl` executable of this installation (the one beside this Python)."""
    found = shutil.which("tl", path=str(Path(sys.executable).parent)) or shutil.which("tl")
    if found is None:
        raise typer.Exit(_error("the `tl` command is not installed beside this Python; run `make setup`"))
    return [found]


def _error(message: str) -> int:
    typer.echo(f"ERROR: {message}", err=True)
    return 1


def _machine_list(pool: str) -> tuple[str, ...]:
    return (
        "aks",
        "machine",
        "list",
        "-g",
        RESOURCE_GROUP,
        "--cluster-name",
        CLUSTER,
        "--nodepool-name",
        pool,
    )


def _scenario(data_dir: Path, timeout: int) -> None:
    console.rule("[bold]Trusted launch on real VMs (QEMU + OVMF + swtpm), through the `tl` command")
    console.print(f"isolated data directory: {data_dir} (store, admin token, node images, VMs, SSH key)")
    scenario = _Scenario(data_dir, timeout)
    started = time.monotonic()
    failure: str | None = None
    try:
        _register_preview(scenario)
        _create_cluster(scenario)
        _use_kubectl(scenario)
        _add_vtpm_pool(scenario)
        _schedule_docs_pods(scenario)
        _enable_secure_boot(scenario)
        _list_nodes(scenario)
        _pending_pod_runs(scenario)
    except DemoFailedError as exc:
        failure = str(exc)
    finally:
        leftovers = _delete_cluster(scenario)
    scenario.print_timings()
    if failure or leftovers:
        raise typer.Exit(_error(failure or f"VM or control-plane processes were left running: {leftovers}"))
    console.rule(f"[bold green]demo complete in {time.monotonic() - started:.0f} s")


def _register_preview(scenario: _Scenario) -> None:
    with scenario.step("Register the TrustedLaunchPreview feature and refresh the provider"):
        scenario.run("feature", "register", *FEATURE, "-o", "table")
        state = ""
        deadline = time.monotonic() + float(scenario.env["TL_FEATURE_REGISTRATION_DELAY_SECONDS"]) + 120
        while time.monotonic() < deadline:
            state = json.loads(scenario.run("feature", "show", *FEATURE, capture=True))["properties"]["state"]
            console.print(f"feature state: {state}")
            if state == "Registered":
                break
            time.sleep(2)
        if state != "Registered":
            raise DemoFailedError(f"the feature is still {state}")
        scenario.run("provider", "register", "--namespace", "Microsoft.ContainerService", "-o", "table")


def _create_cluster(scenario: _Scenario) -> None:
    with scenario.step("Create a resource group and a cluster with one Secure Boot + vTPM node"):
        scenario.run("group", "create", "-n", RESOURCE_GROUP, "-l", "eastus", "-o", "table")
        scenario.run(
            "aks", "create", "-g", RESOURCE_GROUP, "-n", CLUSTER, "--node-count", "1",
            "--enable-secure-boot", "--enable-vtpm", "--generate-ssh-keys", "--timeout", scenario.timeout,
            "-o", "table",
        )  # fmt: skip


def _use_kubectl(scenario: _Scenario) -> None:
    """The cluster's own API server (its hosted control plane), with kubectl and get-credentials'
    kubeconfig."""
    with scenario.step("Reach the cluster's own Kubernetes API server with kubectl"):
        scenario.run(
            "aks", "get-credentials", "-g", RESOURCE_GROUP, "-n", CLUSTER, "--admin",
            "-f", str(scenario.kubeconfig),
        )  # fmt: skip
        for arguments in (("version",), ("auth", "whoami"), ("get", "namespaces")):
            scenario.kubectl(*arguments)


def _add_vtpm_pool(scenario: _Scenario) -> None:
    with scenario.step("Add a vTPM-only node pool"):
        scenario.run(
            "aks", "nodepool", "add", "-g", RESOURCE_GROUP, "--cluster-name", CLUSTER, "--name", VTPM_POOL,
            "--node-count", "1", "--enable-vtpm", "--timeout", scenario.timeout, "-o", "table",
        )  # fmt: skip


def docs_pods_manifest() -> str:
    """The AKS documentation's pods (DOCS_PODS) as YAML: the pre-loaded busybox image, each printing its
    name and its node, then waiting (it exits at once on SIGTERM)."""
    image = f"{BUSYBOX_REPOSITORY}:{busybox_version(BUSYBOX)}"
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "nodeSelector": selector,
                "containers": [
                    {
                        "name": "hello",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": [
                            "sh",
                            "-c",
                            f'echo "hello from {name} on node $NODE_NAME"; '
                            "trap 'exit 0' TERM; sleep 3600 & wait",
                        ],
                        "env": [
                            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
                        ],
                    }
                ],
                "automountServiceAccountToken": False,  # they do not call the API server
                "terminationGracePeriodSeconds": 5,
            },
        }
        for name, selector in DOCS_PODS
    ]
    return yaml.safe_dump_all(pods, sort_keys=False, width=200)


def _schedule_docs_pods(scenario: _Scenario) -> None:
    """The AKS docs' pods: each trusted launch nodeSelector finds its node; Secure Boot in the vTPM-only pool
    has none and stays Pending with the scheduler's reason."""
    with scenario.step("Schedule the AKS docs' pods by the trusted launch labels"):
        scenario.kubectl("get", "nodes", "-L", f"{LABEL_TRUSTED_LAUNCH},{LABEL_SECURE_BOOT}")
        manifest = scenario.data_dir / "docs-pods.yaml"
        manifest.write_text(docs_pods_manifest())
        console.print(f"{manifest}:", soft_wrap=True)
        console.print(manifest.read_text(), end="", markup=False, highlight=False, soft_wrap=True)
        scenario.kubectl("apply", "-f", str(manifest))
        scenario.kubectl(
            "wait", "--for=condition=Ready", f"pod/{SECURE_BOOT_POD}", f"pod/{TRUSTED_LAUNCH_POD}",
            f"--timeout={POD_SECONDS}s",
        )  # fmt: skip
        scenario.kubectl(
            "wait", "--for=condition=PodScheduled=False", f"pod/{PENDING_POD}", f"--timeout={POD_SECONDS}s"
        )
        scenario.kubectl("get", "pods", "-o", "wide")
        for name, selector in DOCS_PODS[:2]:
            scenario.kubectl("logs", name)
            _check_pod_node(scenario, name, selector)
        scheduled = 'jsonpath={.status.conditions[?(@.type=="PodScheduled")].message}'
        reason = scenario.kubectl("get", "pod", PENDING_POD, "-o", scheduled, capture=True, show=False)
        console.print(f"{PENDING_POD} stays Pending; the scheduler says: {reason}", soft_wrap=True)
        scenario.kubectl(
            "get", "events", "--field-selector", f"reason=FailedScheduling,involvedObject.name={PENDING_POD}"
        )  # fmt: skip
        if "didn't match Pod's node affinity/selector" not in reason:
            raise DemoFailedError(f"{PENDING_POD} is unschedulable for another reason: {reason}")
        console.print(
            "The pods that ran are deleted; the Pending one waits for the vTPM-only pool's Secure Boot."
        )
        scenario.kubectl("delete", "pod", SECURE_BOOT_POD, TRUSTED_LAUNCH_POD, "--wait=false")


def _check_pod_node(scenario: _Scenario, pod: str, selector: dict[str, str]) -> None:
    """Fail the demo unless `pod` runs on a node carrying its `selector` labels; print that node."""
    node = scenario.kubectl("get", "pod", pod, "-o", "jsonpath={.spec.nodeName}", capture=True, show=False)
    if not node:
        raise DemoFailedError(f"pod {pod} runs on no node")
    labels = json.loads(
        scenario.kubectl("get", "node", node, "-o", "jsonpath={.metadata.labels}", capture=True, show=False)
        or "{}"
    )
    missing = {key: value for key, value in selector.items() if labels.get(key) != value}
    if missing:
        raise DemoFailedError(f"pod {pod} runs on node {node}, which lacks {missing}")
    wanted = ", ".join(f"{key}={value}" for key, value in selector.items())
    console.print(f"[green]verified[/] pod {pod} runs on node {node} ({wanted})", soft_wrap=True)


def _enable_secure_boot(scenario: _Scenario) -> None:
    with scenario.step("Enable Secure Boot on the vTPM-only pool (rolling reimage)"):
        scenario.run(
            "aks", "nodepool", "update", "-g", RESOURCE_GROUP, "--cluster-name", CLUSTER, "--name", VTPM_POOL,
            "--enable-secure-boot", "--timeout", scenario.timeout, "-o", "table",
        )  # fmt: skip


def _list_nodes(scenario: _Scenario) -> None:
    with scenario.step("List the nodes with their labels and attestation results"):
        for pool in (SYSTEM_POOL, VTPM_POOL):
            for machine in scenario.machines(pool):
                _check_machine(machine)


def _pending_pod_runs(scenario: _Scenario) -> None:
    """After the reimage the vTPM-only pool's node has Secure Boot: the Pending pod runs there."""
    with scenario.step("The Pending pod runs on the reimaged Secure Boot node"):
        scenario.kubectl("get", "nodes", "-L", f"{LABEL_TRUSTED_LAUNCH},{LABEL_SECURE_BOOT}")
        scenario.kubectl("wait", "--for=condition=Ready", f"pod/{PENDING_POD}", f"--timeout={POD_SECONDS}s")
        # (not `get pods`: a pod deleted in step 5 may still be terminating, bound to the old node's name)
        scenario.kubectl("get", "pod", PENDING_POD, "-o", "wide")
        scenario.kubectl("logs", PENDING_POD)
        _check_pod_node(scenario, PENDING_POD, dict(DOCS_PODS)[PENDING_POD])


def _check_machine(machine: Machine) -> None:
    """Fail the demo unless the node is Ready, attested, and labelled as its settings say."""
    problems = []
    if machine.state != "Ready":
        problems.append(f"state {machine.state}")
    if (machine.power, machine.health) != ("Running", "Healthy"):
        problems.append(f"{machine.power}, {machine.health}")
    if machine.attestation != "Attested":
        problems.append(f"attestation {machine.attestation}")
    for label, setting in ((LABEL_TRUSTED_LAUNCH, machine.vtpm), (LABEL_SECURE_BOOT, machine.secure_boot)):
        if setting == "True" and machine.labels.get(label) != "true":
            problems.append(f"no {label}=true label")
    if problems:
        raise DemoFailedError(f"node {machine.name}: {', '.join(problems)}")
    enabled = " + ".join(
        name for name, on in (("Secure Boot", machine.secure_boot), ("vTPM", machine.vtpm)) if on == "True"
    )
    console.print(
        f"[green]verified[/] {machine.name}: Ready, {enabled or 'no trusted launch'}, Attested, labels match",
        soft_wrap=True,
    )


def _delete_cluster(scenario: _Scenario) -> list[int]:
    """Delete the cluster (its VMs and vTPMs); kill and return what is still running under the data dir."""
    with scenario.step("Delete the cluster (VMs and vTPMs stopped, files removed) and its resource group"):
        try:
            scenario.run(
                "aks", "delete", "-g", RESOURCE_GROUP, "-n", CLUSTER, "--yes", "--timeout", scenario.timeout
            )
            scenario.run("group", "delete", "-n", RESOURCE_GROUP, "--yes")
        except DemoFailedError as exc:
            console.print(f"[red]{exc}[/]")
        leftovers = sorted([*node_processes(scenario.data_dir), *control_plane_processes(scenario.data_dir)])
        if leftovers:
            kill_node_processes(scenario.data_dir)
            stop_control_plane_processes(scenario.data_dir)
        else:
            console.print(f"no VM or control-plane process left under {scenario.data_dir}")
    return leftovers


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
        verdict = (
            f"[green]= {name} of the node image[/]"
            if name
            else "[yellow]not in the node image (the log was recorded with another build)[/]"
        )
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
    _print_result("fresh quote, policy from the log's boot chain", first)
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
    """The log's policy, Secure Boot required, each boot step named after the node image's binary with
    the same digest."""
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
