"""`tl host`: register, show, list, update and remove the hypervisor hosts (libvirt) node VMs run on (admin
tokens only)."""

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
        "on other hosts; it is Ready again once it answers."
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


def _row(host: dict[str, Any]) -> list[object]:
    properties = host["properties"]
    capacity, allocated, free = properties["capacity"], properties["allocated"], properties["free"]
    return [
        host["name"],
        properties["state"],
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
    with api.connect() as client:
        host = client.json("GET", f"{HOSTS_PATH}/{segment(name)}")
    output(host, output_format, COLUMNS, _row)


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
def remove(api: ApiTarget, name: NameOption) -> None:
    """Unregister a host; refused while nodes are placed on it (a drain onto other hosts is not built yet)."""
    with api.connect() as client:
        client.request("DELETE", f"{HOSTS_PATH}/{segment(name)}")
    typer.echo(f"Host '{name}' removed.", err=True)
