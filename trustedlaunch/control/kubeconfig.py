"""The Kubernetes API server behind the managed clusters, taken from the control plane's kubeconfig.

This control plane runs no kube-apiserver of its own: `tl serve --kubeconfig PATH` (or TL_KUBECONFIG for
the embedded server) names the API server where the reconciler labels and taints the nodes, and the
kubeconfigs handed out by `listClusterUserCredential` / `listClusterAdminCredential` (`tl aks
get-credentials`) point kubectl at that same server (URL and CA from the kubeconfig's current context).
The credential inside stays the cluster's own bearer token: the API server must accept it (e.g. a line
in kube-apiserver's --token-auth-file); the control plane's own credentials are never handed out.
Without a kubeconfig, the handed-out server is `https://{fqdn}:443`, as AKS does.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from lightkube import ConfigError, KubeConfig

from trustedlaunch.errors import TrustedLaunchError

KUBECONFIG_ENV = "TL_KUBECONFIG"


class KubeconfigError(TrustedLaunchError):
    """The control plane's kubeconfig cannot be read or names no usable cluster."""


@dataclass(frozen=True)
class ApiServer:
    """Where kubectl reaches a cluster: the server URL and how to trust its certificate."""

    server: str
    certificate_authority_data: str | None = None  # base64 PEM, as kubeconfig files carry it
    insecure_skip_tls_verify: bool = False

    def cluster_entry(self) -> dict[str, object]:
        """The `cluster` mapping of a kubeconfig `clusters` entry."""
        entry: dict[str, object] = {"server": self.server}
        if self.certificate_authority_data:
            entry["certificate-authority-data"] = self.certificate_authority_data
        if self.insecure_skip_tls_verify:
            entry["insecure-skip-tls-verify"] = True
        return entry


def api_server_from_kubeconfig(path: Path, context: str | None = None) -> ApiServer:
    """The API server of `context` (default: the current context) of the kubeconfig at `path`."""
    try:
        config = KubeConfig.from_file(path).get(context)
    except (ConfigError, OSError, ValueError) as exc:
        raise KubeconfigError(f"kubeconfig {path}: {exc}") from None
    if config is None:
        raise KubeconfigError(f"kubeconfig {path} has no current context (set current-context)")
    cluster = config.cluster
    authority = cluster.certificate_auth_data
    if authority is None and cluster.certificate_auth is not None:
        ca_file = Path(config.abs_file(cluster.certificate_auth))
        try:
            authority = base64.b64encode(ca_file.read_bytes()).decode()
        except OSError as exc:
            raise KubeconfigError(f"kubeconfig {path}: certificate-authority {ca_file}: {exc}") from None
    return ApiServer(cluster.server, authority, cluster.insecure)


def configured_api_server(kubeconfig: Path | None = None) -> ApiServer | None:
    """The API server of `kubeconfig`, else of the TL_KUBECONFIG file, else None (none configured)."""
    path = kubeconfig or (Path(os.environ[KUBECONFIG_ENV]) if os.environ.get(KUBECONFIG_ENV) else None)
    return None if path is None else api_server_from_kubeconfig(path)
