"""The PKI of one hosted Kubernetes cluster, made with `cryptography` (the kubeadm layout, ECDSA P-256).

Three CAs, each cluster's own: the cluster CA (client certificates of kubectl, the controllers and the
kubelets; kube-apiserver's serving certificate), the front-proxy CA (the aggregation layer) and the etcd
CA (etcd's serving certificate and kube-apiserver's etcd client certificate). Beside them: the
service-account signing key pair and one client certificate per component. A certificate of another
cluster's CA is refused by this cluster's kube-apiserver.

`create_cluster_pki` writes everything into a scratch folder renamed into place, so a crash leaves the
directory complete or absent; keys are 0600 and the directory 0700.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trustedlaunch.errors import TrustedLaunchError

DEFAULT_SERVICE_CIDR = "10.0.0.0/16"  # AKS's default serviceCidr
CLUSTER_DOMAIN = "cluster.local"
CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=365)
CLOCK_SKEW = datetime.timedelta(minutes=5)

# Subjects (CN, O) of the client certificates the apiserver maps to users and groups.
ADMIN_SUBJECT = ("clusterAdmin", "system:masters")
# The clusterUser credential: a group that cluster_planes binds to the built-in `edit` ClusterRole.
CLUSTER_USER_SUBJECT = ("clusterUser", "trustedlaunch:cluster-users")
APISERVER_KUBELET_CLIENT_SUBJECT = ("kube-apiserver-kubelet-client", "system:masters")
CONTROLLER_MANAGER_SUBJECT = ("system:kube-controller-manager", None)
SCHEDULER_SUBJECT = ("system:kube-scheduler", None)
FRONT_PROXY_CLIENT_NAME = "front-proxy-client"


class ClusterPkiError(TrustedLaunchError):
    """A cluster's PKI directory is incomplete or unreadable."""


def first_service_ip(service_cidr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The ClusterIP of the `kubernetes` service: the first address of the service range."""
    return ipaddress.ip_network(service_cidr)[1]


def apiserver_dns_names(fqdn: str) -> list[str]:
    """The DNS names of kube-apiserver's serving certificate: the cluster FQDN and the in-cluster names."""
    return [
        fqdn,
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
    ]


@dataclass(frozen=True)
class ClusterPki:
    """The paths of one cluster's PKI files (PEM)."""

    directory: Path

    def path(self, name: str) -> Path:
        """The file `name` (e.g. `ca.crt`, `admin.key`) of the PKI."""
        return self.directory / name

    @property
    def ca_cert(self) -> Path:
        """The cluster CA certificate."""
        return self.path("ca.crt")

    @property
    def ca_key(self) -> Path:
        """The cluster CA key (signs kubelet certificates later)."""
        return self.path("ca.key")

    @property
    def service_account_key(self) -> Path:
        """The service-account signing key."""
        return self.path("sa.key")

    @property
    def service_account_public_key(self) -> Path:
        """The service-account verification key."""
        return self.path("sa.pub")

    def pair(self, stem: str) -> tuple[Path, Path]:
        """The certificate and key of `stem` (`admin`, `apiserver`, `etcd/server`, ...)."""
        return self.path(f"{stem}.crt"), self.path(f"{stem}.key")


# Every certificate/key stem a complete PKI holds; sa.key/sa.pub are the service-account pair.
CERTIFICATE_STEMS = (
    "ca",
    "front-proxy-ca",
    "etcd/ca",
    "apiserver",
    "apiserver-kubelet-client",
    "apiserver-etcd-client",
    "front-proxy-client",
    "etcd/server",
    "admin",
    "cluster-user",
    "controller-manager",
    "scheduler",
)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


@dataclass(frozen=True)
class _Authority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _make_ca(common_name: str, now: datetime.datetime) -> _Authority:
    key = _new_key()
    name = _name(common_name)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Authority(certificate, key)


def _issue(
    authority: _Authority,
    subject: x509.Name,
    now: datetime.datetime,
    *,
    server: bool = False,
    client: bool = False,
    dns_names: list[str] | None = None,
    ip_addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] | None = None,
    validity: datetime.timedelta = LEAF_VALIDITY,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()), critical=False
        )
    )
    if dns_names or ip_addresses:
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names or []]
        names += [x509.IPAddress(address) for address in ip_addresses or []]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(authority.key, hashes.SHA256()), key


# The shortest life of a kubelet certificate: control.node_join.node_credential_validity derives the one
# issued (longer when the renewal interval asks for it); short-lived, renewed only while the node attests.
NODE_CLIENT_VALIDITY = datetime.timedelta(hours=1)


def _cluster_authority(pki: ClusterPki) -> _Authority:
    """The cluster CA (certificate and key) of `pki`."""
    try:
        ca_certificate = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    except (OSError, ValueError) as error:
        raise ClusterPkiError(f"cluster CA in {pki.directory} is unreadable: {error}") from error
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ClusterPkiError(f"cluster CA key in {pki.directory} is not an ECDSA key")
    return _Authority(ca_certificate, ca_key)


def issue_node_client_certificate(
    pki: ClusterPki, node_name: str, validity: datetime.timedelta = NODE_CLIENT_VALIDITY
) -> tuple[bytes, bytes]:
    """A kubelet client certificate for Node `node_name` (CN=system:node:<name>, O=system:nodes: the Node
    authorizer and NodeRestriction let it act only as that node), signed by the cluster CA; (certificate
    PEM, key PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    subject = _name(f"system:node:{node_name}", "system:nodes")
    certificate, key = _issue(_cluster_authority(pki), subject, now, client=True, validity=validity)
    return certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def issue_node_serving_certificate(
    pki: ClusterPki,
    node_name: str,
    address: str,
    validity: datetime.timedelta = NODE_CLIENT_VALIDITY,
) -> tuple[bytes, bytes]:
    """A kubelet serving certificate for Node `node_name` (CN=system:node:<name>, O=system:nodes, server
    auth, SANs: DNS `node_name` and IP `address`, where kube-apiserver dials the kubelet), signed by the
    cluster CA that kube-apiserver verifies kubelets with; (certificate PEM, key PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    subject = _name(f"system:node:{node_name}", "system:nodes")
    certificate, key = _issue(
        _cluster_authority(pki),
        subject,
        now,
        server=True,
        dns_names=[node_name],
        ip_addresses=[ipaddress.ip_address(address)],
        validity=validity,
    )
    return certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_pair(
    directory: Path, stem: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    _write_private(directory / f"{stem}.key", _key_pem(key))
    (directory / f"{stem}.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def create_cluster_pki(
    directory: Path,
    fqdn: str,
    service_cidr: str = DEFAULT_SERVICE_CIDR,
    ip_addresses: tuple[str, ...] = (),
) -> ClusterPki:
    """Make a new cluster's PKI in `directory` (which must not exist yet); `ip_addresses` are further
    addresses of kube-apiserver's serving certificate besides 127.0.0.1 and the first service IP."""
    if directory.exists():
        raise ClusterPkiError(f"cluster PKI directory {directory} already exists")
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        _write_all(scratch, fqdn, service_cidr, ip_addresses)
        scratch.rename(directory)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ClusterPki(directory)


def _write_all(directory: Path, fqdn: str, service_cidr: str, ip_addresses: tuple[str, ...]) -> None:
    now = datetime.datetime.now(datetime.UTC)
    loopback = ipaddress.ip_address("127.0.0.1")
    cluster_ca = _make_ca("kubernetes", now)
    front_proxy_ca = _make_ca("front-proxy-ca", now)
    etcd_ca = _make_ca("etcd-ca", now)
    for stem, authority in (("ca", cluster_ca), ("front-proxy-ca", front_proxy_ca), ("etcd/ca", etcd_ca)):
        _write_pair(directory, stem, authority.certificate, authority.key)

    apiserver_ips = [loopback, first_service_ip(service_cidr), *map(ipaddress.ip_address, ip_addresses)]
    issued = {
        "apiserver": _issue(
            cluster_ca,
            _name("kube-apiserver"),
            now,
            server=True,
            dns_names=apiserver_dns_names(fqdn),
            ip_addresses=apiserver_ips,
        ),
        "admin": _issue(cluster_ca, _name(*ADMIN_SUBJECT), now, client=True),
        "cluster-user": _issue(cluster_ca, _name(*CLUSTER_USER_SUBJECT), now, client=True),
        "apiserver-kubelet-client": _issue(
            cluster_ca, _name(*APISERVER_KUBELET_CLIENT_SUBJECT), now, client=True
        ),
        "controller-manager": _issue(cluster_ca, _name(*CONTROLLER_MANAGER_SUBJECT), now, client=True),
        "scheduler": _issue(cluster_ca, _name(*SCHEDULER_SUBJECT), now, client=True),
        "front-proxy-client": _issue(front_proxy_ca, _name(FRONT_PROXY_CLIENT_NAME), now, client=True),
        "etcd/server": _issue(
            etcd_ca,
            _name("etcd-server"),
            now,
            server=True,
            client=True,
            dns_names=["localhost"],
            ip_addresses=[loopback],
        ),
        "apiserver-etcd-client": _issue(etcd_ca, _name("kube-apiserver-etcd-client"), now, client=True),
    }
    for stem, (certificate, key) in issued.items():
        _write_pair(directory, stem, certificate, key)

    service_account_key = _new_key()
    _write_private(directory / "sa.key", _key_pem(service_account_key))
    (directory / "sa.pub").write_bytes(
        service_account_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    directory.chmod(0o700)


def apiserver_ip_addresses(pki: ClusterPki) -> list[str]:
    """The IP addresses kube-apiserver's serving certificate names."""
    try:
        certificate = x509.load_pem_x509_certificate(pki.path("apiserver.crt").read_bytes())
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound) as error:
        raise ClusterPkiError(
            f"kube-apiserver's certificate in {pki.directory} is unreadable: {error}"
        ) from error
    return [str(address) for address in names.get_values_for_type(x509.IPAddress)]


def add_apiserver_address(pki: ClusterPki, address: str) -> bool:
    """Make kube-apiserver's serving certificate name `address` too (a control plane that now also serves
    the node network there): a new certificate and key of the cluster CA with the old one's names plus
    `address`, written over the old pair; False if it names it already."""
    named = apiserver_ip_addresses(pki)
    if address in named:
        return False
    old = x509.load_pem_x509_certificate(pki.path("apiserver.crt").read_bytes())
    names = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ip_addresses = [ipaddress.ip_address(ip) for ip in [*named, address]]
    certificate, key = _issue(
        _cluster_authority(pki),
        old.subject,
        datetime.datetime.now(datetime.UTC),
        server=True,
        dns_names=names.get_values_for_type(x509.DNSName),
        ip_addresses=ip_addresses,
    )
    scratch = Path(tempfile.mkdtemp(prefix=".apiserver-", dir=pki.directory))
    try:
        _write_pair(scratch, "apiserver", certificate, key)
        (scratch / "apiserver.key").rename(pki.path("apiserver.key"))
        (scratch / "apiserver.crt").rename(pki.path("apiserver.crt"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return True


def open_cluster_pki(directory: Path) -> ClusterPki:
    """The complete PKI in `directory`; raises ClusterPkiError naming the first missing file."""
    pki = ClusterPki(directory)
    for stem in CERTIFICATE_STEMS:
        for path in pki.pair(stem):
            if not path.is_file():
                raise ClusterPkiError(f"cluster PKI file {path} is missing")
    for path in (pki.service_account_key, pki.service_account_public_key):
        if not path.is_file():
            raise ClusterPkiError(f"cluster PKI file {path} is missing")
    return pki
