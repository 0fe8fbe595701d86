"""Where kubectl reaches a cluster's API server: the `cluster` entry of the kubeconfigs that
`listClusterUserCredential` / `listClusterAdminCredential` (`tl aks get-credentials`) hand out."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ApiServer:
    """Where kubectl reaches a cluster: the server URL and how to trust its certificate."""

    server: str
    certificate_authority_data: str | None = None  # base64 PEM, as kubeconfig files carry it

    def cluster_entry(self) -> dict[str, object]:
        """The `cluster` mapping of a kubeconfig `clusters` entry."""
        entry: dict[str, object] = {"server": self.server}
        if self.certificate_authority_data:
            entry["certificate-authority-data"] = self.certificate_authority_data
        return entry
