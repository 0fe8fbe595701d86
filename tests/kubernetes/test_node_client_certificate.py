"""A kubelet client certificate from the cluster CA (control/cluster_pki.py issue_node_client_certificate)
lets a node act only as itself on the real kube-apiserver: it registers its own Node, and the Node authorizer
and NodeRestriction refuse it another node's Node and the cluster's secrets."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kube_apiserver import admin_client
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node, Secret

from trustedlaunch.control.cluster_pki import NODE_CLIENT_VALIDITY, issue_node_client_certificate
from trustedlaunch.control.hosted_control_plane import HostedControlPlane, client_kubeconfig


def node_client(plane: HostedControlPlane, name: str, directory: Path) -> Client:
    cert, key = issue_node_client_certificate(plane.pki, name)
    (directory / "node.crt").write_bytes(cert)
    (directory / "node.key").write_bytes(key)
    kubeconfig = directory / "node.kubeconfig"
    kubeconfig.write_text(
        client_kubeconfig(
            plane.server, plane.pki.ca_cert, directory / "node.crt", directory / "node.key", name
        )
    )
    return Client(KubeConfig.from_file(kubeconfig), field_manager="kubelet", trust_env=False)


def test_the_certificate_names_the_node_in_system_nodes(kube_apiserver: HostedControlPlane) -> None:
    cert, _ = issue_node_client_certificate(kube_apiserver.pki, "tl-cred-0")
    certificate = x509.load_pem_x509_certificate(cert)
    subject = certificate.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:tl-cred-0"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    lifetime = certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert NODE_CLIENT_VALIDITY - datetime.timedelta(minutes=1) < lifetime <= NODE_CLIENT_VALIDITY


def test_a_node_registers_itself_only(kube_apiserver: HostedControlPlane, tmp_path: Path) -> None:
    client = node_client(kube_apiserver, "tl-cred-1", tmp_path)
    try:
        client.create(Node(metadata=ObjectMeta(name="tl-cred-1")))
        with pytest.raises(ApiError) as refused:
            client.create(Node(metadata=ObjectMeta(name="tl-cred-2")))
        assert refused.value.status.code == 403
        with pytest.raises(ApiError) as refused:
            list(client.list(Secret, namespace="kube-system"))
        assert refused.value.status.code == 403
    finally:
        admin_client(kube_apiserver).delete(Node, "tl-cred-1")
