"""Hypervisor hosts through the API (`/providers/Microsoft.TrustedLaunch/hosts`, admin tokens only) and
`tl host`: ARM-shaped resources with capacity, the nodes placed and free capacity, the EK CA certificate's
thumbprint rather than its PEM, the limits table's errors, 409 on removing a host with nodes, 400 for an
unreachable host registered without its capacity, api-version checked, 403 for scoped tokens; cordon,
uncordon and drain (the nodes moved and their pools' Update operations)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_helpers import SUB, create_group
from fastapi.testclient import TestClient
from monitoring_rows import add_node
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from trustedlaunch.api.app import create_app
from trustedlaunch.api.server import BackgroundServer
from trustedlaunch.cli.main import app as tl_app
from trustedlaunch.control.features import register_feature, register_provider
from trustedlaunch.control.node_hosts import find_host
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.control.tokens import create_token
from trustedlaunch.node.libvirt_host import LibvirtHost
from trustedlaunch.store.models import Node, Operation
from trustedlaunch.tpm.ekca import create_ek_ca

HOSTS = "/providers/Microsoft.TrustedLaunch/hosts"
URI = "qemu+tls://host1.example/system"
UNREACHABLE = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"


def error_of(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return str(error["message"])


def place_nodes(client: TestClient, host_name: str, count: int, created: bool = False) -> None:
    """Node rows of a new cluster's pool placed on `host_name` (as the reconciler's placement writes them);
    `created`: its Create operation finished."""
    place_nodes_in(client.app.state.sessions, host_name, count, created)  # type: ignore[attr-defined]


def place_nodes_in(sessions: sessionmaker[Session], host_name: str, count: int, created: bool) -> None:
    """place_nodes on a store's sessions."""
    with sessions.begin() as session:
        register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
        register_provider(session, SUB, "Microsoft.ContainerService")
        spec = PoolSpec("nodepool1", count=count, vm_size="Standard_D4s_v3")
        cluster, operation, _ = put_cluster(
            session, ResourcePath(SUB, "myResourceGroup", "placed"), ClusterSpec("eastus", agent_pools=[spec])
        )
        if created:
            finish_operation(session, operation, "Succeeded")
        host = find_host(session, host_name)
        assert host is not None
        for ordinal in range(count):
            add_node(session, cluster.agent_pools[0], ordinal).host_id = host.id


def test_register_show_list_update_and_remove_hosts(client: TestClient, tmp_path: Path) -> None:
    created = client.put(
        f"{HOSTS}/host1", json={"properties": {"uri": URI, "capacity": {"memoryMiB": 4096, "vCPUs": 4}}}
    )
    assert created.status_code == 201, created.text
    host = created.json()
    assert host["id"] == f"{HOSTS}/host1" and host["type"] == "Microsoft.TrustedLaunch/hosts"
    properties = host["properties"]
    assert properties["uri"] == URI and properties["state"] == "Ready" and properties["stateCause"] is None
    assert properties["capacity"] == {"memoryMiB": 4096, "vCPUs": 4} == properties["free"]
    assert properties["allocated"] == {"memoryMiB": 0, "vCPUs": 0, "nodes": []}
    assert properties["ekCaCertificate"] is None and properties["lastSeen"] is None

    ek_ca = create_ek_ca(tmp_path / "ek-ca", common_name="host2 EK CA")
    pem = ek_ca.certificate_path.read_text()
    body = {
        "properties": {
            "uri": "qemu+ssh://root@host2.example/system",
            "capacity": {"memoryMiB": 8192, "vCPUs": 8},
            "ekCaCertificate": pem,
        }
    }
    assert client.put(f"{HOSTS}/host2", json=body).status_code == 201
    shown = client.get(f"{HOSTS}/host2").json()["properties"]["ekCaCertificate"]
    assert shown["subject"] == "CN=host2 EK CA" and len(shown["thumbprint"]) == 64
    assert "BEGIN CERTIFICATE" not in client.get(HOSTS).text

    place_nodes(client, "host1", 2)
    listed = {item["name"]: item["properties"] for item in client.get(HOSTS).json()["value"]}
    assert list(listed) == ["host1", "host2"]
    assert listed["host1"]["allocated"] == {
        "memoryMiB": 1024,
        "vCPUs": 2,
        "nodes": ["aks-nodepool1-0", "aks-nodepool1-1"],
    }
    assert listed["host1"]["free"] == {"memoryMiB": 3072, "vCPUs": 2}
    message = error_of(client.delete(f"{HOSTS}/host1"), 409, "HostInUse")
    assert "runs 2 node(s): aks-nodepool1-0, aks-nodepool1-1" in message

    updated = client.put(
        f"{HOSTS}/host1", json={"properties": {"uri": URI, "capacity": {"memoryMiB": 16384, "vCPUs": 16}}}
    )
    assert updated.status_code == 200 and updated.json()["properties"]["free"] == {
        "memoryMiB": 15360,
        "vCPUs": 14,
    }
    assert client.delete(f"{HOSTS}/host2").status_code == 200
    error_of(client.get(f"{HOSTS}/host2"), 404, "HostNotFound")
    error_of(client.delete(f"{HOSTS}/host2"), 404, "HostNotFound")


def test_refused_registrations(client: TestClient) -> None:
    bad = {"properties": {"uri": "http://host/system", "capacity": {"memoryMiB": 1, "vCPUs": 4}}}
    response = client.put(f"{HOSTS}/Host_1", json=bad)
    message = error_of(response, 400, "InvalidHostName")
    assert message.startswith("3 problems with the request")
    targets = [detail["target"] for detail in response.json()["error"]["details"]]
    assert targets == ["name", "properties.uri", "properties.capacity.memoryMiB"]
    pem = {"properties": {"uri": URI, "capacity": {"memoryMiB": 4096, "vCPUs": 4}, "ekCaCertificate": "junk"}}
    assert "holds 0 PEM certificates" in error_of(
        client.put(f"{HOSTS}/host1", json=pem), 400, "InvalidEkCaCertificate"
    )
    message = error_of(
        client.put(f"{HOSTS}/host1", json={"properties": {"uri": UNREACHABLE}}), 400, "HostUnreachable"
    )
    assert "/nonexistent/libvirt-sock" in message
    assert client.get(HOSTS).json() == {"value": []}
    response = client.get(HOSTS, params={"api-version": "2001-01-01"})
    error_of(response, 400, "NoRegisteredProviderFound")


def test_scoped_tokens_cannot_see_hosts(client: TestClient) -> None:
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        scoped = create_token(session, "tenant", f"/subscriptions/{SUB}")
    response = client.get(HOSTS, headers={"Authorization": f"Bearer {scoped}"})
    assert "does not have authorization to perform action" in error_of(response, 403, "AuthorizationFailed")
    assert client.put(f"{HOSTS}/host1", json={"properties": {"uri": URI, "capacity": CAPACITY}}).is_success
    for action in ("cordon", "uncordon", "drain"):
        response = client.post(f"{HOSTS}/host1/{action}", headers={"Authorization": f"Bearer {scoped}"})
        error_of(response, 403, "AuthorizationFailed")
    assert client.get(f"{HOSTS}/host1").json()["properties"]["cordoned"] is False


CAPACITY = {"memoryMiB": 4096, "vCPUs": 4}


def test_cordon_uncordon_and_drain_a_host(client: TestClient) -> None:
    for name in ("host1", "host2"):
        uri = f"qemu+tls://{name}.example/system"
        created = client.put(f"{HOSTS}/{name}", json={"properties": {"uri": uri, "capacity": CAPACITY}})
        assert created.status_code == 201 and created.json()["properties"]["cordoned"] is False
    cordoned = client.post(f"{HOSTS}/host2/cordon")
    assert cordoned.status_code == 200 and cordoned.json()["properties"]["cordoned"] is True
    listed = {item["name"]: item["properties"]["cordoned"] for item in client.get(HOSTS).json()["value"]}
    assert listed == {"host1": False, "host2": True}
    uncordoned = client.post(f"{HOSTS}/host2/uncordon")
    assert uncordoned.status_code == 200 and uncordoned.json()["properties"]["cordoned"] is False

    place_nodes(client, "host1", 2, created=True)
    response = client.post(f"{HOSTS}/host1/drain")
    assert response.status_code == 200, response.text
    drained = response.json()
    assert drained["host"]["name"] == "host1" and drained["host"]["properties"]["cordoned"] is True
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        [update] = session.scalars(select(Operation).where(Operation.kind == "Update")).all()
        reasons = {node.name: node.reimage_reason for node in session.scalars(select(Node))}
    assert reasons == {"aks-nodepool1-0": "host host1 drained", "aks-nodepool1-1": "host host1 drained"}
    assert drained["nodes"] == [
        {
            "name": "aks-nodepool1-0",
            "state": "Ready",
            "operationId": update.id,
            "started": True,
            "skipped": None,
        },
        {
            "name": "aks-nodepool1-1",
            "state": "Ready",
            "operationId": update.id,
            "started": False,
            "skipped": None,
        },
    ]
    message = error_of(client.delete(f"{HOSTS}/host1"), 409, "HostInUse")
    assert "tl host drain -n host1" in message
    for action in ("cordon", "uncordon", "drain"):
        error_of(client.post(f"{HOSTS}/nohost/{action}"), 404, "HostNotFound")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str, sessionmaker[Session]]]:
    token_file = tmp_path / "server-config" / "admin-token"
    app = create_app(f"sqlite:///{tmp_path / 'control.db'}", token_file)
    with BackgroundServer(app) as running:
        yield running.url, token_file.read_text().strip(), app.state.sessions


def test_tl_host_commands(server: tuple[str, str, sessionmaker[Session]], tmp_path: Path) -> None:
    url, token, sessions = server
    runner = CliRunner()

    def tl(*args: str) -> tuple[int, str, str]:
        env = {"TL_ENDPOINT": url, "TL_TOKEN": token, "HOME": str(tmp_path)}
        result = runner.invoke(tl_app, ["host", *args], env=env)
        return result.exit_code, result.stdout, result.stderr

    code, out, err = tl("add", "-n", "host1", "--uri", URI, "--memory-mib", "4096", "--vcpus", "4")
    assert code == 0, err
    assert json.loads(out)["properties"]["capacity"] == {"memoryMiB": 4096, "vCPUs": 4}
    code, out, err = tl("list", "-o", "table")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "Name",
        "State",
        "Nodes",
        "FreeMemoryMiB",
        "FreeVCPUs",
        "Uri",
        "MemoryMiB",
        "VCPUs",
    ]
    assert lines[1].split() == ["host1", "Ready", "0", "4096", "4", URI, "4096", "4"]
    code, out, err = tl("update", "-n", "host1", "--vcpus", "8", "--query", "properties.free", "-o", "tsv")
    assert code == 0, err
    assert out.split() == ["4096", "8"]
    ek_ca = create_ek_ca(tmp_path / "ek-ca")
    code, _, err = tl("update", "-n", "host1", "--ek-ca-certificate", str(ek_ca.certificate_path))
    assert code == 0, err
    code, _, err = tl("update", "-n", "host1", "--vcpus", "2")
    assert code == 2 and "give --ek-ca-certificate again" in err
    code, _, err = tl("add", "-n", "Bad_Name", "--uri", URI)
    assert code == 2 and "'Bad_Name' is not valid" in err
    code, _, err = tl("add", "-n", "host2", "--uri", UNREACHABLE)
    assert code == 1 and "(HostUnreachable)" in err and "give --memory-mib and --vcpus" in err
    code, out, err = tl("show", "-n", "host1", "--query", "properties.state", "-o", "tsv")
    assert (code, out.strip()) == (0, "Ready"), err
    code, out, err = tl("cordon", "-n", "host1", "--query", "properties.cordoned", "-o", "tsv")
    assert (code, out.strip()) == (0, "True"), err
    code, out, err = tl("list", "-o", "table")
    assert code == 0 and out.splitlines()[1].split()[:2] == ["host1", "Ready,Cordoned"], err
    code, out, err = tl("uncordon", "-n", "host1", "-o", "table")
    assert code == 0 and out.splitlines()[1].split()[:2] == ["host1", "Ready"], err
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as admin:
        create_group(admin)
    place_nodes_in(sessions, "host1", 1, created=True)
    code, _, err = tl("drain", "-n", "host1")
    assert code == 1 and "(InsufficientHostCapacity)" in err and "room for 0 of the 1 node(s)" in err
    code, _, err = tl(
        "add",
        "-n",
        "host2",
        "--uri",
        "qemu+tls://host2.example/system",
        "--memory-mib",
        "512",
        "--vcpus",
        "1",
    )
    assert code == 0, err
    code, out, err = tl("drain", "-n", "host1", "-o", "table")
    assert code == 0, err
    with sessions() as session:
        [update] = session.scalars(select(Operation).where(Operation.kind == "Update")).all()
    assert err.splitlines()[:2] == [
        "Host 'host1' cordoned; moving 1 node(s) to other hosts.",
        f"  aks-nodepool1-0: operation {update.id}",
    ]
    assert out.splitlines()[0].split() == ["Name", "State", "OperationId", "Moving"]
    assert out.splitlines()[1].split() == ["aks-nodepool1-0", "Ready", update.id, "yes"]
    code, _, err = tl("remove", "-n", "host1")
    assert code == 1 and "(HostInUse)" in err and "tl host drain -n host1" in err
    code, _, err = tl("drain", "-n", "nohost")
    assert code == 3 and "(HostNotFound)" in err
    with sessions.begin() as session:  # its node made again elsewhere: the host can go
        session.execute(select(Node)).scalars().one().host_id = None
    code, _, err = tl("remove", "-n", "host1")
    assert code == 0 and "Host 'host1' removed." in err
    code, _, err = tl("show", "-n", "host1")
    assert code == 3 and "(HostNotFound)" in err


def test_registration_reads_the_capacity_of_a_real_libvirt_host(client: TestClient) -> None:
    """A private libvirtd (node/libvirt_host.py) answers getInfo with this machine's memory: node VMs may take
    75 % of it (guest memory is not overcommitted)."""
    host = LibvirtHost(Path(tempfile.mkdtemp(prefix="tl-lvh-")))
    try:
        host.start()
        created = client.put(
            f"{HOSTS}/local", json={"properties": {"uri": host.uri, "capacity": {"vCPUs": 1}}}
        )
        assert created.status_code == 201, created.text
    finally:
        host.remove()
    meminfo = Path("/proc/meminfo").read_text().split()
    memory_mib = int(meminfo[meminfo.index("MemTotal:") + 1]) // 1024
    capacity = created.json()["properties"]["capacity"]
    assert capacity == {"memoryMiB": int(0.75 * memory_mib), "vCPUs": 1}  # 75 % of its memory; vCPUs as given
