"""Integrity alerts: the alert of a failed attestation, naming every failed component, in a JSON form
modelled on Microsoft Defender for Cloud security alerts ("VM attestation failure", or "VM unreachable for
attestation" when the node gave no evidence at all), and their delivery to a webhook with bounded retries
and exponential backoff, to checked destinations only (attest.destinations). The lifecycle of a stored
alert (one open alert per node and type, acknowledge, resolve) is control.alert_lifecycle's.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from trustedlaunch.attest.destinations import (
    DestinationRefused,
    DestinationUnresolved,
    IpAddress,
    IpNetwork,
    allowed_networks_from_environment,
    pinned_request,
    resolve,
)
from trustedlaunch.attest.verifier import AttestationResult
from trustedlaunch.findings import Check, Finding
from trustedlaunch.store.vocabulary import AlertSeverity, AlertStatus, AlertType

ALERT_DISPLAY_NAMES = {
    AlertType.ATTESTATION_FAILURE: "VM attestation failure",
    AlertType.NODE_UNREACHABLE: "VM unreachable for attestation",
    AlertType.NODE_UNHEALTHY: "Node VM unhealthy",
    AlertType.BOOT_INTEGRITY: "VM boot integrity failure",
    AlertType.HOST_LOST: "Hypervisor host lost",
}
PRODUCT_NAME = "trustedlaunch"


# Medium: a boot that may be legitimate but is outside the policy (cmdline, dbx update pending, a weak PCR
# bank or selection, unreadable evidence, a node failing its liveness checks); High: the boot chain or the
# evidence itself is not trustworthy.
MEDIUM_CHECKS = frozenset(
    {
        Check.KERNEL_CMDLINE,
        Check.FORBIDDEN_DB,
        Check.PCR_BANK,
        Check.PCR_SELECTION,
        Check.EVIDENCE_FORMAT,
        Check.NODE_HEALTH,
    }
)
_SEVERITY_ORDER = (AlertSeverity.HIGH, AlertSeverity.MEDIUM, AlertSeverity.LOW)


def finding_severity(finding: Finding) -> AlertSeverity:
    """High for Secure Boot, boot applications, PCR mismatches, signatures, keys and replay; Medium for
    the kernel command line, dbx, PCR bank/selection and malformed evidence."""
    return AlertSeverity.MEDIUM if finding.check in MEDIUM_CHECKS else AlertSeverity.HIGH


def describe_finding(finding: Finding) -> str:
    """One operator line, e.g. "PCR4: grubx64.efi ... is not in the pool's image policy"."""
    return f"PCR{finding.pcr}: {finding.message}" if finding.pcr is not None else finding.message


@dataclass(frozen=True)
class Alert:
    """An integrity alert for one failed attestation of a node."""

    id: str
    severity: AlertSeverity
    node: str
    pool: str
    cluster: str
    time: datetime
    findings: tuple[Finding, ...]
    resource_id: str | None = None  # the ARM id of the agent pool, when known
    alert_type: AlertType = AlertType.ATTESTATION_FAILURE
    remediation: tuple[str, ...] = ()  # what was done about it and what the operator should do

    @property
    def failed_components(self) -> list[str]:
        """Each failed component once, in finding order."""
        return list(dict.fromkeys(finding.component for finding in self.findings))

    @property
    def description(self) -> str:
        """What failed on the node, one finding per line."""
        lines = "\n".join(f"- {describe_finding(finding)}" for finding in self.findings)
        verdict = {
            AlertType.NODE_UNREACHABLE: "gave no attestation evidence",
            AlertType.NODE_UNHEALTHY: "is unhealthy",
            AlertType.BOOT_INTEGRITY: "did not boot",
        }.get(self.alert_type, "failed attestation")
        if self.alert_type == AlertType.HOST_LOST:
            return f"Hypervisor {self.node} was lost:\n{lines}"
        return f"Node {self.node} of pool {self.pool} (cluster {self.cluster}) {verdict}:\n{lines}"

    def to_dict(self) -> dict[str, Any]:
        """The Defender-for-Cloud-shaped JSON form (Microsoft.Security/locations/alerts properties)."""
        timestamp = self.time.astimezone(UTC).isoformat().replace("+00:00", "Z")
        identifiers = (
            [{"type": "AzureResource", "azureResourceId": self.resource_id}] if self.resource_id else []
        )
        return {
            "id": self.id,
            "name": self.id,
            "type": "Microsoft.Security/Locations/alerts",
            "properties": {
                "systemAlertId": self.id,
                "alertType": self.alert_type.value,
                "alertDisplayName": ALERT_DISPLAY_NAMES[self.alert_type],
                "severity": self.severity.value,
                "status": AlertStatus.ACTIVE,
                "intent": "Persistence",
                "description": self.description,
                "compromisedEntity": self.node,
                "timeGeneratedUtc": timestamp,
                "startTimeUtc": timestamp,
                "endTimeUtc": timestamp,
                "productName": PRODUCT_NAME,
                "vendorName": PRODUCT_NAME,
                "isIncident": False,
                "remediationSteps": list(self.remediation),
                "resourceIdentifiers": identifiers,
                "extendedProperties": {
                    "cluster": self.cluster,
                    "nodePool": self.pool,
                    "node": self.node,
                    "failedComponents": ", ".join(self.failed_components),
                },
                "supportingEvidence": {
                    "type": "attestationFindings",
                    "findings": [
                        finding.to_dict() | {"severity": finding_severity(finding).value}
                        for finding in self.findings
                    ],
                },
            },
        }


def alerts_from_result(
    result: AttestationResult,
    *,
    node: str,
    pool: str,
    cluster: str,
    resource_id: str | None = None,
    now: datetime | None = None,
    alert_type: AlertType = AlertType.ATTESTATION_FAILURE,
    remediation: Sequence[str] = (),
) -> list[Alert]:
    """The alerts for one attestation: none when it passed, else one of `alert_type` listing every finding,
    with the severity of its most severe finding and the `remediation` steps."""
    if result.ok:
        return []
    findings = result.findings
    severities = {finding_severity(finding) for finding in findings} or {AlertSeverity.HIGH}
    severity = next(level for level in _SEVERITY_ORDER if level in severities)
    return [
        Alert(
            id=str(uuid.uuid4()),
            severity=severity,
            node=node,
            pool=pool,
            cluster=cluster,
            time=now or datetime.now(UTC),
            findings=findings,
            resource_id=resource_id,
            alert_type=alert_type,
            remediation=tuple(remediation),
        )
    ]


@dataclass(frozen=True)
class DeliveryAttempt:
    """One POST of an alert: its HTTP status or why it failed without one, and the wait before it."""

    alert_id: str
    attempt: int  # 1-based
    waited: float  # seconds slept before this attempt
    status: int | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        """True for a 2xx answer."""
        return self.status is not None and 200 <= self.status < 300

    def describe(self, url: str) -> str:
        """What went wrong, for the operator: the error, or the status the webhook answered."""
        if self.error is not None:
            return self.error
        if self.status is not None and 300 <= self.status < 400:
            return f"{url} answered HTTP {self.status}, a redirect (redirects are never followed)"
        return f"{url} answered HTTP {self.status}"


@dataclass
class WebhookDelivery:
    """POSTs alert JSON to `url`. Retries connection errors and 5xx answers up to `max_attempts` in all,
    waiting `base_delay * 2**n` seconds (at most `max_delay`) before retry n+1; a 3xx (never followed) or
    4xx is final. Before every attempt the host is resolved and each address checked (attest.destinations:
    public addresses, or `allowed_networks`); the POST then connects to a checked address, and a refused
    destination ends the delivery without any packet sent to it. Every attempt is appended to `log`."""

    url: str
    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    timeout: float = 10.0
    headers: dict[str, str] = field(default_factory=dict)
    sleep: Callable[[float], None] = time.sleep
    log: list[DeliveryAttempt] = field(default_factory=list)
    allowed_networks: Sequence[IpNetwork] = field(default_factory=allowed_networks_from_environment)

    def deliver(self, alert: Alert) -> bool:
        """POST one alert; True once a 2xx answer came, False when every attempt failed or a 3xx/4xx came."""
        return self.deliver_document(alert.id, alert.to_dict())

    def deliver_document(self, alert_id: str, document: dict[str, Any]) -> bool:
        """POST an alert's stored JSON form (`Alert.to_dict()`, as kept in the store), as `deliver`."""
        try:
            url = httpx.URL(self.url)
        except httpx.InvalidURL as exc:
            self.log.append(DeliveryAttempt(alert_id, 1, 0.0, error=f"the webhook URL is invalid: {exc}"))
            return False
        # no proxy from the environment: the connection must go to the address checked here
        with httpx.Client(timeout=self.timeout, headers=self.headers, trust_env=False) as client:
            waited = 0.0
            for attempt in range(1, self.max_attempts + 1):
                if attempt > 1:
                    waited = min(self.base_delay * 2 ** (attempt - 2), self.max_delay)
                    self.sleep(waited)
                try:
                    status = self._post(client, url, document)
                except DestinationRefused as exc:
                    self.log.append(DeliveryAttempt(alert_id, attempt, waited, error=str(exc)))
                    return False
                except (httpx.TransportError, DestinationUnresolved) as exc:
                    self.log.append(DeliveryAttempt(alert_id, attempt, waited, error=repr(exc)))
                    continue
                record = DeliveryAttempt(alert_id, attempt, waited, status=status)
                self.log.append(record)
                if record.delivered:
                    return True
                if status < 500:
                    return False
        return False

    def _post(self, client: httpx.Client, url: httpx.URL, document: dict[str, Any]) -> int:
        """POST to the first checked address of the host that accepts a connection; the answer's status
        (its body is not read)."""
        addresses = resolve(url, self.allowed_networks)
        for address in addresses[:-1]:
            try:
                return self._send(client, url, address, document)
            except httpx.ConnectError:
                continue
        return self._send(client, url, addresses[-1], document)

    @staticmethod
    def _send(client: httpx.Client, url: httpx.URL, address: IpAddress, document: dict[str, Any]) -> int:
        response = client.send(pinned_request(client, url, address, document), stream=True)
        response.close()
        return response.status_code
