"""The cluster PKI: the files, their modes, the chains, the SANs and the subjects kube-apiserver maps."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from trustedlaunch.control.cluster_pki import (
    CERTIFICATE_STEMS,
    ClusterPki,
    ClusterPkiError,
    add_apiserver_address,
    apiserver_ip_addresses,
    create_cluster_pki,
    open_cluster_pki,
)

FQDN = "aks1-rg1-abc123.hcp.eastus.trustedlaunch.internal"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ClusterPki:
    return create_cluster_pki(tmp_path_factory.mktemp("pki") / "cluster", FQDN, ip_addresses=("192.0.2.10",))


def certificate(pki: ClusterPki, stem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pki.pair(stem)[0].read_bytes())


def extended_usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value)


def test_every_file_is_written_with_private_keys_readable_by_the_owner_only(pki: ClusterPki) -> None:
    assert open_cluster_pki(pki.directory) == pki
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700
    keys = [pki.pair(stem)[1] for stem in CERTIFICATE_STEMS] + [pki.service_account_key]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert not [path for path in pki.directory.parent.iterdir() if path.name.startswith(".")]


def test_apiserver_serving_certificate_names_the_fqdn_loopback_and_in_cluster_names(pki: ClusterPki) -> None:
    cert = certificate(pki, "apiserver")
    cert.verify_directly_issued_by(certificate(pki, "ca"))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [
        FQDN,
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.0.0.1"),  # first IP of AKS's default service CIDR 10.0.0.0/16
        ipaddress.ip_address("192.0.2.10"),
    ]
    assert extended_usages(cert) == {ExtendedKeyUsageOID.SERVER_AUTH}


@pytest.mark.parametrize(
    ("stem", "common_name", "organization"),
    [
        ("admin", "clusterAdmin", "system:masters"),
        ("cluster-user", "clusterUser", "trustedlaunch:cluster-users"),
        ("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"),
        ("controller-manager", "system:kube-controller-manager", None),
        ("scheduler", "system:kube-scheduler", None),
    ],
)
def test_client_certificates_carry_the_user_and_group_of_their_component(
    pki: ClusterPki, stem: str, common_name: str, organization: str | None
) -> None:
    cert = certificate(pki, stem)
    cert.verify_directly_issued_by(certificate(pki, "ca"))
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [common_name]
    organizations = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert organizations == ([organization] if organization else [])
    assert extended_usages(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_etcd_and_front_proxy_certificates_chain_to_their_own_cas(pki: ClusterPki) -> None:
    etcd_ca = certificate(pki, "etcd/ca")
    certificate(pki, "etcd/server").verify_directly_issued_by(etcd_ca)
    certificate(pki, "apiserver-etcd-client").verify_directly_issued_by(etcd_ca)
    certificate(pki, "front-proxy-client").verify_directly_issued_by(certificate(pki, "front-proxy-ca"))
    with pytest.raises(ValueError, match="subject does not match"):
        certificate(pki, "apiserver-etcd-client").verify_directly_issued_by(certificate(pki, "ca"))


def test_certificates_match_their_keys_and_the_service_account_pair_matches(pki: ClusterPki) -> None:
    for stem in CERTIFICATE_STEMS:
        key_path = pki.pair(stem)[1]
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert certificate(pki, stem).public_key() == key.public_key(), stem
    signing = serialization.load_pem_private_key(pki.service_account_key.read_bytes(), password=None)
    assert isinstance(signing, ec.EllipticCurvePrivateKey)
    assert (
        serialization.load_pem_public_key(pki.service_account_public_key.read_bytes()) == signing.public_key()
    )


def test_each_cluster_has_its_own_cas(pki: ClusterPki, tmp_path: Path) -> None:
    """Same CA name, another key: the signature check, not the name, tells the clusters apart."""
    other = create_cluster_pki(tmp_path / "other", "other.hcp.eastus.trustedlaunch.internal")
    with pytest.raises(InvalidSignature):
        certificate(other, "admin").verify_directly_issued_by(certificate(pki, "ca"))


def test_an_existing_directory_is_never_overwritten(pki: ClusterPki) -> None:
    before = pki.ca_key.read_bytes()
    with pytest.raises(ClusterPkiError, match="already exists"):
        create_cluster_pki(pki.directory, FQDN)
    assert pki.ca_key.read_bytes() == before


def test_an_incomplete_directory_names_the_missing_file(tmp_path: Path) -> None:
    pki = create_cluster_pki(tmp_path / "cluster", FQDN)
    pki.pair("scheduler")[1].unlink()
    with pytest.raises(ClusterPkiError, match=r"scheduler\.key is missing"):
        open_cluster_pki(pki.directory)


def test_the_apiserver_certificate_gains_a_node_network_address_once(tmp_path: Path) -> None:
    made = create_cluster_pki(tmp_path / "cluster", FQDN)
    before = certificate(made, "apiserver")
    assert apiserver_ip_addresses(made) == ["127.0.0.1", "10.0.0.1"]
    assert add_apiserver_address(made, "10.254.0.1")
    after = certificate(made, "apiserver")
    after.verify_directly_issued_by(certificate(made, "ca"))
    assert apiserver_ip_addresses(made) == ["127.0.0.1", "10.0.0.1", "10.254.0.1"]
    names = after.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == (
        before.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
    )
    assert after.subject == before.subject and extended_usages(after) == {ExtendedKeyUsageOID.SERVER_AUTH}
    key = serialization.load_pem_private_key(made.pair("apiserver")[1].read_bytes(), password=None)
    assert key.public_key() == after.public_key()
    assert stat.S_IMODE(made.pair("apiserver")[1].stat().st_mode) == 0o600
    assert not add_apiserver_address(made, "10.254.0.1")  # named already: left as it is
    assert certificate(made, "apiserver") == after
    assert not [path for path in made.directory.iterdir() if path.name.startswith(".")]
