"""ARM JSON of integrity monitoring: attestations of a machine, alerts (Defender for Cloud shaped), the
alert webhook and an on-demand attestation request."""

from __future__ import annotations

import base64
import copy
from typing import cast

from trustedlaunch.control.monitoring import AttestationRequest, IssuedToken
from trustedlaunch.control.records import AgentPool, AlertRecord, AlertWebhook, AttestationRecord
from trustedlaunch.control.resource_id import MACHINES, ResourceId
from trustedlaunch.control.resources import PROVIDER
from trustedlaunch.control.timeutil import iso

JsonObject = dict[str, object]
SECURITY = "Microsoft.Security"


def _base64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def attestation_path(pool: AgentPool, record: AttestationRecord) -> str:
    """The ARM id of one attestation of a machine."""
    return ResourceId.of(pool).child(MACHINES, record.node_name).child("attestations", str(record.id)).path()


def attestation_json(pool: AgentPool, record: AttestationRecord, *, evidence: bool = False) -> JsonObject:
    """An attestation as the history lists it; with `evidence`, also the PCRs, the raw evidence (base64,
    nonce hex) and the token."""
    properties: JsonObject = {
        "machineName": record.node_name,
        "time": iso(record.time),
        "trigger": record.trigger,
        "passed": record.ok,
        "status": record.status,
        "secureBoot": record.secure_boot,
        "durationMs": round(record.duration_ms, 1),
        "findings": record.findings,
        "tokenIssued": record.token is not None,
    }
    if evidence:
        properties["pcrs"] = record.pcrs
        properties["evidence"] = {
            "nonce": record.nonce,
            "akPublic": _base64(record.ak_public),
            "quote": _base64(record.quote),
            "signature": _base64(record.signature),
            "eventLog": _base64(record.event_log),
        }
        properties["token"] = record.token
    return {
        "id": attestation_path(pool, record),
        "name": str(record.id),
        "type": f"{PROVIDER}/managedClusters/agentPools/machines/attestations",
        "properties": properties,
    }


def attestation_request_json(request: AttestationRequest) -> JsonObject:
    """The 202 body of `POST .../agentPools/{pool}/attest`."""
    return {
        "id": ResourceId.of(request.pool).path(),
        "requestedAt": iso(request.requested_at),
        "machines": [node.name for node in request.nodes],
        "skipped": [{"name": node.name, "provisioningState": node.state} for node in request.skipped],
    }


def token_json(pool: AgentPool, issued: IssuedToken) -> JsonObject:
    """The body of `POST .../machines/{node}/getAttestationToken`."""
    expires = issued.claims.get("exp")
    return {
        "token": issued.token,
        "attestationId": attestation_path(pool, issued.attestation),
        "attestedAt": iso(issued.attestation.time),
        "expiresOn": expires,
    }


def alert_path(subscription_id: str, alert_id: str) -> str:
    """The path of one alert."""
    return f"/subscriptions/{subscription_id}/providers/{SECURITY}/alerts/{alert_id}"


def alert_json(record: AlertRecord, *, delivery_detail: bool = False) -> JsonObject:
    """The stored alert document with its current status and the state of its webhook delivery. Why a
    delivery failed (the receiver's status, a connection error, a refused address) is shown with
    `delivery_detail` (admins) only: for others it would make the webhook a probe of what the control
    plane can reach."""
    document = copy.deepcopy(record.document)
    document["id"] = alert_path(record.subscription_id, record.id)
    document["name"] = record.id
    properties = cast(dict[str, object], document.setdefault("properties", {}))
    properties["status"] = record.status
    if record.resolved_at is not None:
        properties["resolvedTimeUtc"] = iso(record.resolved_at)
    extended = cast(dict[str, object], properties.setdefault("extendedProperties", {}))
    extended |= {
        "resourceGroup": record.resource_group,
        "webhookDelivery": record.delivery_state,
        "webhookDeliveryAttempts": str(record.delivery_attempts),
    }
    if record.delivery_error:
        extended["webhookDeliveryError"] = (
            record.delivery_error
            if delivery_detail
            else f"delivery failed after {record.delivery_attempts} attempt(s)"
        )
    return document


def webhook_json(webhook: AlertWebhook) -> JsonObject:
    """The subscription's alert webhook."""
    return {
        "id": f"/subscriptions/{webhook.subscription_id}/providers/{SECURITY}/alertWebhook",
        "name": "alertWebhook",
        "type": f"{SECURITY}/alertWebhook",
        "properties": {"url": webhook.url, "createdAt": iso(webhook.created_at)},
    }
