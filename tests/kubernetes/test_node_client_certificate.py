"""A kubelet client certificate from the cluster CA (control/cluster_pki.py issue_node_client_certificate)
lets a node act only as itself on the real kube-apiserver: it registers its own Node, and the Node authorizer
and NodeRestriction refuse it another node's Node and the cluster's secrets; a CSR cannot get it another
certificate (no CSR approving or signing in the controller-manager)."""

from __future__ import annotations

import base64
import datetime
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kube_apiserver import admin_client
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.certificates_v1 import CertificateSigningRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import RoleRef, Subject
from lightkube.resources.certificates_v1 import CertificateSigningRequest, CertificateSigningRequestApproval
from lightkube.resources.core_v1 import Node, Secret
from lightkube.resources.rbac_authorization_v1 import ClusterRoleBinding
from lightkube.types import PatchType

from trustedlaunch.control.cluster_pki import (
    NODE_CLIENT_VALIDITY,
    issue_node_client_certificate,
    issue_node_serving_certificate,
)
from trustedlaunch.control.hosted_control_plane import HostedControlPlane, client_kubeconfig
from trustedlaunch.control.node_join import KUBELET_CREDENTIAL_RELOAD, node_credential_validity

CSR_WAIT_SECONDS = 10.0


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


def test_no_kubelet_csr_is_approved_or_signed_outside_the_attested_path(
    kube_apiserver: HostedControlPlane, tmp_path: Path
) -> None:
    """A node asks for a new client certificate of its own name through a CSR, as kubelet's rotation
    would, with the RBAC binding kubeadm adds for that (selfnodeclient): kube-controller-manager (its
    CSR approving and signing controllers off) never approves it; approved by an admin, it is not signed
    either. Only the control plane's attestation-gated path issues kubelet certificates."""
    name = "tl-cred-csr"
    admin = admin_client(kube_apiserver)
    binding = ClusterRoleBinding(
        metadata=ObjectMeta(name="tl-test-selfnodeclient"),
        roleRef=RoleRef(
            apiGroup="rbac.authorization.k8s.io",
            kind="ClusterRole",
            name="system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
        ),
        subjects=[Subject(kind="Group", name="system:nodes", apiGroup="rbac.authorization.k8s.io")],
    )
    admin.create(binding)
    node = node_client(kube_apiserver, name, tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{name}"),
                ]
            )
        )
        .sign(key, hashes.SHA256())
    )
    csr = CertificateSigningRequest(
        metadata=ObjectMeta(name=f"{name}-renewal"),
        spec=CertificateSigningRequestSpec(
            request=base64.b64encode(request.public_bytes(serialization.Encoding.PEM)).decode(),
            signerName="kubernetes.io/kube-apiserver-client-kubelet",
            usages=["digital signature", "client auth"],
        ),
    )
    try:
        created = node.create(csr)
        assert created.spec.username == f"system:node:{name}"
        time.sleep(CSR_WAIT_SECONDS)  # the approving controller, when on, approves within a second
        status = admin.get(CertificateSigningRequest, f"{name}-renewal").status
        assert status is None or not status.conditions, status
        assert status is None or not status.certificate
        admin.patch(
            CertificateSigningRequestApproval,
            f"{name}-renewal",
            {
                "status": {
                    "conditions": [
                        {"type": "Approved", "status": "True", "reason": "Test", "message": "by an admin"}
                    ]
                }
            },
            patch_type=PatchType.MERGE,
        )
        time.sleep(CSR_WAIT_SECONDS)  # the signing controller, when on, signs within a second
        status = admin.get(CertificateSigningRequest, f"{name}-renewal").status
        assert status is not None and [c.type for c in status.conditions or []] == ["Approved"]
        assert not status.certificate
    finally:
        admin.delete(CertificateSigningRequest, f"{name}-renewal")
        admin.delete(ClusterRoleBinding, "tl-test-selfnodeclient")


def test_the_serving_certificate_names_the_node_and_the_address_the_apiserver_dials(
    kube_apiserver: HostedControlPlane,
) -> None:
    cert, _ = issue_node_serving_certificate(kube_apiserver.pki, "tl-cred-3", "127.0.0.1")
    certificate = x509.load_pem_x509_certificate(cert)
    assert certificate.subject.rfc4514_string() == "CN=system:node:tl-cred-3,O=system:nodes"
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["tl-cred-3"]
    assert [str(address) for address in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    ca = x509.load_pem_x509_certificate(kube_apiserver.pki.ca_cert.read_bytes())
    certificate.verify_directly_issued_by(ca)


@pytest.mark.parametrize(
    ("interval", "validity"),
    [
        (0.0, NODE_CLIENT_VALIDITY),  # no renewal on an interval: the floor
        (300.0, NODE_CLIENT_VALIDITY),  # the default interval: 3 x 5 min + 5 min fit in 1 h
        (3600.0, datetime.timedelta(hours=3, minutes=5)),  # two missed renewals and the reload lag
    ],
)
def test_the_validity_outlasts_two_missed_renewals_and_the_kubelet_reload(
    interval: float, validity: datetime.timedelta
) -> None:
    assert node_credential_validity(interval) == validity
    assert (
        node_credential_validity(interval) > datetime.timedelta(seconds=interval) + KUBELET_CREDENTIAL_RELOAD
    )
