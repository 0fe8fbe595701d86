"""Hypervisor hosts: `GET /providers/Microsoft.TrustedLaunch/hosts`, `PUT/GET/DELETE .../hosts/{name}` and
`POST .../hosts/{name}/cordon`, `/uncordon`, `/drain` (control/node_hosts.py). Installation-wide, so admin
tokens only (a path outside every subscription: BearerAuth refuses scoped tokens with 403). Reads show the EK
CA certificate's thumbprint, subject and expiry, never the PEM."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from trustedlaunch.api.models import ErrorResponse
from trustedlaunch.api.responses import ArmList
from trustedlaunch.api.routes import api_version, transaction
from trustedlaunch.control import host_drain, node_hosts
from trustedlaunch.control.host_drain import DrainedNode
from trustedlaunch.control.node_hosts import HostSpec, HostUsage
from trustedlaunch.control.records import NodeHost, Session

HOSTS_PATH = "/providers/Microsoft.TrustedLaunch/hosts"
HOST_TYPE = "Microsoft.TrustedLaunch/hosts"

router = APIRouter(
    prefix=HOSTS_PATH,
    tags=["hosts"],
    dependencies=[Depends(api_version)],
    responses={
        status: {"model": ErrorResponse, "description": description}
        for status, description in (
            (400, "Invalid name, URI, capacity or EK CA certificate; an unreachable host without capacity"),
            (401, "Missing or invalid bearer token"),
            (403, "Not an admin token"),
            (404, "Host not registered"),
            (
                409,
                "Nodes are placed on the host (drain it first); its URI is another host's; too many hosts; "
                "no room elsewhere for the nodes of a drained host",
            ),
        )
    },
)


class CapacityBody(BaseModel):
    """What node VMs may take of the host; an omitted value is read from the host (libvirt getInfo)."""

    model_config = ConfigDict(extra="forbid")

    memoryMiB: int | None = Field(None, description="MiB of memory for node VMs")
    vCPUs: int | None = Field(None, description="vCPUs for node VMs")


class HostPropertiesBody(BaseModel):
    """A host's libvirt URI, capacity and optional EK CA certificate."""

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(
        description="libvirt URI: qemu://, qemu+ssh://, qemu+tls://, qemu+tcp:// or qemu+unix://"
    )
    capacity: CapacityBody | None = None
    ekCaCertificate: str | None = Field(
        None, description="PEM CA certificate of the EKs the host's own libvirt gives its vTPMs"
    )


class HostBody(BaseModel):
    """A host to register or update."""

    model_config = ConfigDict(extra="forbid")

    properties: HostPropertiesBody


class Capacity(BaseModel):
    """Memory (MiB) and vCPUs."""

    memoryMiB: int
    vCPUs: int


class Allocated(Capacity):
    """What the nodes placed on the host take, and their names."""

    nodes: list[str]


class EkCaCertificate(BaseModel):
    """The host's EK CA certificate as reads show it (never the PEM)."""

    thumbprint: str = Field(description="SHA-256 of the DER certificate, hex")
    subject: str
    notAfter: str


class HostProperties(BaseModel):
    """A host's URI, capacity, what its nodes take, what is free, and its health."""

    uri: str
    capacity: Capacity
    allocated: Allocated
    free: Capacity
    state: str = Field(description="Ready or Lost")
    cordoned: bool = Field(description="Takes no new node VMs (tl host cordon/drain); its nodes stay")
    stateCause: str | None
    failedChecks: int
    lastSeen: str | None
    ekCaCertificate: EkCaCertificate | None
    createdAt: str


class HostResource(BaseModel):
    """A hypervisor host."""

    id: str
    name: str
    type: str
    properties: HostProperties


class DrainedNodeResult(BaseModel):
    """A node of a drained host: the Update operation of its pool that reimages it onto another host
    (started by this drain, or already in progress), or why it stays."""

    name: str
    state: str
    operationId: str | None = Field(description="The pool's (or cluster's) operation that moves it")
    started: bool = Field(description="Whether this drain started that operation")
    skipped: str | None = Field(description="Why the node is not moved now")


class HostDrain(BaseModel):
    """A drained host (cordoned) and what happens to each of its nodes."""

    host: HostResource
    nodes: list[DrainedNodeResult]


def drained_json(node: DrainedNode) -> dict[str, Any]:
    """One node of a drain's answer."""
    return {
        "name": node.name,
        "state": node.state,
        "operationId": node.operation_id,
        "started": node.started,
        "skipped": node.skipped,
    }


def host_json(host: NodeHost, held: HostUsage) -> dict[str, Any]:
    """A host as an ARM-shaped resource."""
    summary = node_hosts.ek_ca_summary(host.ek_ca_certificate)
    return {
        "id": f"{HOSTS_PATH}/{host.name}",
        "name": host.name,
        "type": HOST_TYPE,
        "properties": {
            "uri": host.uri,
            "capacity": {"memoryMiB": host.memory_mib, "vCPUs": host.vcpus},
            "allocated": {
                "memoryMiB": held.allocated.memory_mib,
                "vCPUs": held.allocated.vcpus,
                "nodes": list(held.nodes),
            },
            "free": {"memoryMiB": held.free.memory_mib, "vCPUs": held.free.vcpus},
            "state": host.state,
            "cordoned": host.cordoned,
            "stateCause": host.state_cause,
            "failedChecks": host.failed_checks,
            "lastSeen": host.last_seen_at.isoformat() if host.last_seen_at else None,
            "ekCaCertificate": None
            if summary is None
            else {
                "thumbprint": summary.thumbprint,
                "subject": summary.subject,
                "notAfter": summary.not_after.isoformat(),
            },
            "createdAt": host.created_at.isoformat(),
        },
    }


def _one(session: Session, host: NodeHost) -> dict[str, Any]:
    return host_json(host, node_hosts.host_usage(session, host))


@router.get("", response_model=ArmList[HostResource])
async def list_hosts(request: Request) -> dict[str, object]:
    """Every registered host with its nodes, free capacity and health."""
    with transaction(request) as session:
        hosts = node_hosts.list_hosts(session)
        names = node_hosts.node_names_by_host(session)
        return {"value": [host_json(host, node_hosts.usage(host, names.get(host.id, []))) for host in hosts]}


@router.put("/{name}", response_model=HostResource, responses={201: {"model": HostResource}})
def put_host(request: Request, response: Response, name: str, body: HostBody) -> dict[str, Any]:
    """Register a host (201) or update it (200). Omitted capacity is read from the host (libvirt getInfo,
    within a timeout): 400 HostUnreachable when it does not answer."""
    capacity = body.properties.capacity or CapacityBody(memoryMiB=None, vCPUs=None)
    spec = HostSpec(
        name, body.properties.uri, capacity.memoryMiB, capacity.vCPUs, body.properties.ekCaCertificate
    )
    node_hosts.check_spec(spec)
    spec = node_hosts.resolve_capacity(spec)  # outside the transaction: it may wait for the host
    with transaction(request) as session:
        host, created = node_hosts.put_host(session, spec)
        content = _one(session, host)
    response.status_code = 201 if created else 200
    return content


@router.get("/{name}", response_model=HostResource)
async def get_host(request: Request, name: str) -> dict[str, Any]:
    """One host with its nodes, free capacity and health."""
    with transaction(request) as session:
        return _one(session, node_hosts.get_host(session, name))


@router.post("/{name}/cordon", response_model=HostResource)
async def cordon_host(request: Request, name: str) -> dict[str, Any]:
    """Cordon a host: placement puts no new node VM on it; the nodes on it stay (404 if not registered)."""
    with transaction(request) as session:
        return _one(session, node_hosts.cordon_host(session, name, True))


@router.post("/{name}/uncordon", response_model=HostResource)
async def uncordon_host(request: Request, name: str) -> dict[str, Any]:
    """Let placement put new node VMs on a host again (404 if not registered)."""
    with transaction(request) as session:
        return _one(session, node_hosts.cordon_host(session, name, False))


@router.post("/{name}/drain", response_model=HostDrain)
async def drain_host(request: Request, name: str) -> dict[str, Any]:
    """Cordon a host and reimage each of its Ready or Unhealthy nodes onto other hosts through its pool's
    Update operation (Kubernetes drain first, surge per maxSurge); the nodes and their operations. Remove the
    host once they are gone (404 if not registered)."""
    with transaction(request) as session:
        host, drained = host_drain.drain_host(session, name)
        return {"host": _one(session, host), "nodes": [drained_json(node) for node in drained]}


@router.delete("/{name}", response_class=Response)
async def remove_host(request: Request, name: str) -> Response:
    """Unregister a host (404 if it is not registered); 409 HostInUse naming its nodes while any is placed on
    it (drain it first: POST .../drain)."""
    with transaction(request) as session:
        node_hosts.remove_host(session, name)
    return Response(status_code=200)
