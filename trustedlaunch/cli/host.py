"""`tl host`: register, show, list, update, cordon, uncordon, drain and remove the hypervisor hosts (libvirt)
node VMs run on (admin tokens only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from trustedlaunch.cli.arm import (
    ApiTarget,
    OutputFormat,
    OutputOption,
    api_command,
    name_rule,
    output,
    segment,
)
from trustedlaunch.cli.errors import bad_input
from trustedlaunch.control.limits import (
    GUEST_MEMORY_SHARE,
    GUEST_VCPUS_PER_HOST_CPU,
    HOST_NAME,
    MAX_EK_CA_PEM_BYTES,
)
from trustedlaunch.control.node_hosts import CHECK_INTERVAL, CHECK_TIMEOUT, FAILED_CHECKS

host_app = typer.Typer(
    name="host",
    help=(
        "Manage the hypervisor hosts (libvirt) node VMs run on; needs an admin token. The control plane "
        f"checks every host every {CHECK_INTERVAL:g} s (libvirt open and getInfo, {CHECK_TIMEOUT:g} s "
        f"timeout): after {FAILED_CHECKS} failed checks in a row a host is Lost and its nodes are made again "
        "on other hosts; it is Ready again once it answers. Before removing a host with nodes, drain it: "
        "its nodes are reimaged onto other hosts."
    ),
    no_args_is_help=True,
)

HOSTS_PATH = "/providers/Microsoft.TrustedLaunch/hosts"
# an operator looks for room first (a narrow terminal keeps the leftmost columns), then where and how big
COLUMNS = ("Name", "State", "Nodes", "FreeMemoryMiB", "FreeVCPUs", "Uri", "MemoryMiB", "VCPUs")
NameOption = Annotated[
    str,
    typer.Option(
        "--name",
        "-n",
        help="Host name (a lowercase DNS label).",
        callback=name_rule(HOST_NAME, "a host name is 1-63 lowercase letters, digits and '-' (a DNS label)"),
    ),
]
UriOption = Annotated[
    str,
    typer.Option(
        "--uri", help="libvirt URI: qemu+tls://, qemu+ssh://, qemu+tcp://, qemu+unix:// or qemu://."
    ),
]
MemoryOption = Annotated[
    int | None,
    typer.Option(
        "--memory-mib",
        help=f"MiB of memory node VMs may take (default: {GUEST_MEMORY_SHARE:.0%} of the host's, read "
        "with libvirt).",
    ),
]
VcpusOption = Annotated[
    int | None,
    typer.Option(
        "--vcpus",
        help=f"vCPUs node VMs may take (default: {GUEST_VCPUS_PER_HOST_CPU} per CPU of the host, read "
        "with libvirt).",
    ),
]
EkCaOption = Annotated[
    Path | None,
    typer.Option(
        "--ek-ca-certificate",
        help="PEM file: the CA certificate of the EKs the host's own libvirt gives the vTPMs it makes.",
    ),
]


DRAIN_COLUMNS = ("Name", "State", "OperationId", "Moving")


def _host_call(api: ApiTarget, method: str, name: str, action: str, output_format: OutputFormat) -> None:
    """`method` on host `name` (`action`: "" or a POST action's path), its answer printed as a host."""
    with api.connect() as client:
        host = client.json(method, f"{HOSTS_PATH}/{segment(name)}{action}")
    output(host, output_format, COLUMNS, _row)


def _row(host: dict[str, Any]) -> list[object]:
    properties = host["properties"]
    capacity, allocated, free = properties["capacity"], properties["allocated"], properties["free"]
    return [
        host["name"],
        properties["state"] + (",Cordoned" if properties.get("cordoned") else ""),
        len(allocated["nodes"]),
        free["memoryMiB"],
        free["vCPUs"],
        properties["uri"],
        capacity["memoryMiB"],
        capacity["vCPUs"],
    ]


def _read_certificate(path: Path | None) -> str | None:
    """The PEM text of `path` (bounded; bad input naming the file when it is too large or not text)."""
    if path is None:
        return None
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_EK_CA_PEM_BYTES + 1)
    except OSError as exc:
        raise bad_input(f"--ek-ca-certificate {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_EK_CA_PEM_BYTES:
        raise bad_input(
            f"--ek-ca-certificate {path}: larger than {MAX_EK_CA_PEM_BYTES} bytes (one PEM certificate)"
        )
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise bad_input(f"--ek-ca-certificate {path}: not a PEM (ASCII) file") from None


def _body(uri: str, memory_mib: int | None, vcpus: int | None, ek_ca: str | None) -> dict[str, Any]:
    capacity = {
        key: value for key, value in (("memoryMiB", memory_mib), ("vCPUs", vcpus)) if value is not None
    }
    properties: dict[str, Any] = {"uri": uri, "capacity": capacity or None, "ekCaCertificate": ek_ca}
    return {"properties": properties}


@api_command(host_app, subscription=False)
def add(
    api: ApiTarget,
    name: NameOption,
    uri: UriOption,
    memory_mib: MemoryOption = None,
    vcpus: VcpusOption = None,
    ek_ca_certificate: EkCaOption = None,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Register a host; capacity not given is read from the host (it must answer)."""
    body = _body(uri, memory_mib, vcpus, _read_certificate(ek_ca_certificate))
    with api.connect() as client:
        host = client.json("PUT", f"{HOSTS_PATH}/{segment(name)}", json=body)
    output(host, output_format, COLUMNS, _row)


@api_command(host_app, subscription=False)
def show(api: ApiTarget, name: NameOption, output_format: OutputOption = OutputFormat.json) -> None:
    """Show a host: capacity, the nodes placed on it, free capacity, state and last check."""
    _host_call(api, "GET", name, "", output_format)


@api_command(host_app, name="list", subscription=False)
def list_hosts(api: ApiTarget, output_format: OutputOption = OutputFormat.json) -> None:
    """List the hosts with their nodes, free capacity and state."""
    with api.connect() as client:
        hosts = client.json("GET", HOSTS_PATH)
    output(hosts["value"], output_format, COLUMNS, _row)


@api_command(host_app, subscription=False)
def update(
    api: ApiTarget,
    name: NameOption,
    uri: Annotated[
        str | None, typer.Option("--uri", help="A new libvirt URI (no nodes on the host).")
    ] = None,
    memory_mib: Annotated[int | None, typer.Option("--memory-mib", help="New MiB for node VMs.")] = None,
    vcpus: Annotated[int | None, typer.Option("--vcpus", help="New vCPUs for node VMs.")] = None,
    ek_ca_certificate: EkCaOption = None,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Change a host's capacity (not below what its nodes take), URI or EK CA certificate."""
    path = f"{HOSTS_PATH}/{segment(name)}"
    with api.connect() as client:
        current = client.json("GET", path)["properties"]
        body = _body(
            uri or current["uri"],
            memory_mib if memory_mib is not None else current["capacity"]["memoryMiB"],
            vcpus if vcpus is not None else current["capacity"]["vCPUs"],
            None,
        )
        if ek_ca_certificate is not None:
            body["properties"]["ekCaCertificate"] = _read_certificate(ek_ca_certificate)
        elif current["ekCaCertificate"] is not None:
            raise bad_input(
                f"host '{name}' has an EK CA certificate, which reads never show: give --ek-ca-certificate "
                "again with the update"
            )
        host = client.json("PUT", path, json=body)
    output(host, output_format, COLUMNS, _row)


@api_command(host_app, subscription=False)
def cordon(api: ApiTarget, name: NameOption, output_format: OutputOption = OutputFormat.json) -> None:
    """Cordon a host: no new node VM is placed on it; the nodes on it stay (drain moves them)."""
    _host_call(api, "POST", name, "/cordon", output_format)


@api_command(host_app, subscription=False)
def uncordon(api: ApiTarget, name: NameOption, output_format: OutputOption = OutputFormat.json) -> None:
    """Let new node VMs be placed on a host again."""
    _host_call(api, "POST", name, "/uncordon", output_format)


def _drained_rows(drain: dict[str, Any]) -> list[list[object]]:
    return [
        [node["name"], node["state"], node["operationId"] or "", node["skipped"] or "yes"]
        for node in drain["nodes"]
    ]


@api_command(host_app, subscription=False)
def drain(api: ApiTarget, name: NameOption, output_format: OutputOption = OutputFormat.json) -> None:
    """Cordon a host and reimage its Ready nodes onto other hosts through their pools' Update operations
    (drained in Kubernetes first); remove the host once `tl host show` lists no node on it."""
    with api.connect() as client:
        drained = client.json("POST", f"{HOSTS_PATH}/{segment(name)}/drain")
    moving = [node for node in drained["nodes"] if node["skipped"] is None]
    staying = [node for node in drained["nodes"] if node["skipped"] is not None]
    typer.echo(f"Host '{name}' cordoned; moving {len(moving)} node(s) to other hosts.", err=True)
    for node in moving:
        typer.echo(f"  {node['name']}: operation {node['operationId']}", err=True)
    for node in staying:
        typer.echo(f"  {node['name']} stays: {node['skipped']}", err=True)
    output(drained, output_format, DRAIN_COLUMNS, None, table_rows=_drained_rows)


@api_command(host_app, subscription=False)
def remove(api: ApiTarget, name: NameOption) -> None:
    """Unregister a host; refused while nodes are placed on it (`tl host drain` moves them first)."""
    with api.connect() as client:
        client.request("DELETE", f"{HOSTS_PATH}/{segment(name)}")
    typer.echo(f"Host '{name}' removed.", err=True)
