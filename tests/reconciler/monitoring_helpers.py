"""Helpers of the monitoring tests: a real alert webhook receiver on 127.0.0.1, a store with one trusted
launch cluster."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from reconciler_helpers import SUB
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.attest.destinations import parse_networks
from trustedlaunch.control.features import register_feature, register_provider
from trustedlaunch.control.resource_groups import find_group, put_group
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.store.models import AgentPool, Operation

LOOPBACK = parse_networks("127.0.0.1/32")  # the AlertReceiver's address, allowed as an operator allows it


class AlertReceiver:
    """A webhook on 127.0.0.1 that answers the statuses of `answers` in turn (then 202) and keeps the JSON
    bodies it was sent."""

    def __init__(self, answers: tuple[int, ...] = ()) -> None:
        self.answers = list(answers)
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(receiver.answers.pop(0) if receiver.answers else 202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def __enter__(self) -> AlertReceiver:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def create_trusted_cluster(
    sessions: sessionmaker[Session], cluster: str, pool_name: str = "nodepool1"
) -> tuple[AgentPool, Operation]:
    """A cluster with one 1-node Secure Boot + vTPM pool (the feature registered) in resource group rg (made
    if missing, as an API client makes it first); its pool and operation."""
    with sessions.begin() as session:
        if find_group(session, SUB, "rg") is None:
            put_group(session, SUB, "rg", "eastus", None)
        register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
        register_provider(session, SUB, "Microsoft.ContainerService")
        spec = PoolSpec(
            pool_name, count=1, vm_size="Standard_D4s_v3", enable_secure_boot=True, enable_vtpm=True
        )
        created, operation, _ = put_cluster(
            session, ResourcePath(SUB, "rg", cluster), ClusterSpec("eastus", agent_pools=[spec])
        )
        pool = created.agent_pools[0]
        session.flush()
        _ = pool.cluster  # loaded for use after the session
    return pool, operation


def node_name(pool: AgentPool, ordinal: int = 0) -> str:
    """The name the reconciler gives the pool's node `ordinal`."""
    return f"aks-{pool.name}-{pool.id:08d}-vmss{ordinal:06d}"
