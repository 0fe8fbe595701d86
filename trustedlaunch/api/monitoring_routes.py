"""ARM routes of integrity monitoring: on-demand attestation of a pool, a machine's attestation history and
token, Defender-for-Cloud-shaped alerts (`Microsoft.Security/alerts`) and the subscription's alert webhook.
Handlers are `async def` for the reason given in routes.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from trustedlaunch.api.monitoring_views import (
    SECURITY,
    alert_json,
    attestation_json,
    attestation_request_json,
    token_json,
    webhook_json,
)
from trustedlaunch.api.responses import (
    AlertResource,
    ArmList,
    AttestationRequestResult,
    AttestationResource,
    AttestationTokenResult,
    WebhookResource,
)
from trustedlaunch.api.routes import ERROR_RESPONSES, POOL, SUB, ClusterPath, api_version, transaction
from trustedlaunch.control import monitoring
from trustedlaunch.control.monitoring import DEFAULT_HISTORY, MAX_HISTORY, AlertFilter
from trustedlaunch.control.resources import get_pool

router = APIRouter(dependencies=[Depends(api_version)], responses=ERROR_RESPONSES)
MACHINE = f"{POOL}/machines/{{machine_name}}"
ALERTS = f"{SUB}/providers/{SECURITY}/alerts"
WEBHOOK = f"{SUB}/providers/{SECURITY}/alertWebhook"


class WebhookProperties(BaseModel):
    """`properties` of the alert webhook."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=4096, description="http(s) URL the alerts are POSTed to")


class WebhookBody(BaseModel):
    """Body of `PUT .../Microsoft.Security/alertWebhook`."""

    properties: WebhookProperties


@router.post(f"{POOL}/attest", tags=["attestation"], status_code=202, response_model=AttestationRequestResult)
async def attest_pool(request: Request, path: ClusterPath, pool_name: str) -> dict[str, object]:
    """Re-attest every Ready node of a vTPM pool now: 202 with the machines asked and the request time
    (each machine's `lastAttestedAt` reaches it once the reconciler attested it)."""
    with transaction(request) as session:
        return attestation_request_json(monitoring.request_attestation(session, path, pool_name))


@router.get(
    f"{MACHINE}/attestations",
    tags=["attestation"],
    response_model=ArmList[AttestationResource],
    response_model_exclude_unset=True,
)
async def list_attestations(
    request: Request,
    path: ClusterPath,
    pool_name: str,
    machine_name: str,
    top: Annotated[int, Query(alias="$top", description=f"at most {MAX_HISTORY}")] = DEFAULT_HISTORY,
) -> dict[str, object]:
    """A machine's attestation history, newest first (also after the machine was deleted)."""
    with transaction(request) as session:
        records = monitoring.list_attestations(session, path, pool_name, machine_name, top)
        pool = get_pool(session, path, pool_name)
        return {"value": [attestation_json(pool, record) for record in records]}


@router.get(
    f"{MACHINE}/attestations/{{attestation_id}}",
    tags=["attestation"],
    response_model=AttestationResource,
    response_model_exclude_unset=True,
)
async def get_attestation(
    request: Request,
    path: ClusterPath,
    pool_name: str,
    machine_name: str,
    attestation_id: int,
) -> dict[str, object]:
    """One attestation with its full evidence, PCRs, findings and token."""
    with transaction(request) as session:
        record = monitoring.get_attestation(session, path, pool_name, machine_name, attestation_id)
        return attestation_json(get_pool(session, path, pool_name), record, evidence=True)


@router.post(f"{MACHINE}/getAttestationToken", tags=["attestation"], response_model=AttestationTokenResult)
async def get_attestation_token(
    request: Request,
    path: ClusterPath,
    pool_name: str,
    machine_name: str,
) -> dict[str, object]:
    """The attestation token (JWT) of the machine's newest attestation if it passed and has not expired."""
    with transaction(request) as session:
        issued = monitoring.attestation_token(
            session, path, pool_name, machine_name, request.app.state.token_issuer
        )
        return token_json(get_pool(session, path, pool_name), issued)


@router.get(ALERTS, tags=["alerts"], response_model=ArmList[AlertResource], response_model_exclude_unset=True)
async def list_alerts(
    request: Request,
    subscription_id: str,
    resource_group: Annotated[str | None, Query(alias="resourceGroup")] = None,
    cluster_name: Annotated[str | None, Query(alias="clusterName")] = None,
    status: Annotated[str | None, Query(description="Active, InProgress or Resolved")] = None,
    severity: Annotated[str | None, Query(description="High, Medium or Low")] = None,
) -> dict[str, object]:
    """The subscription's integrity alerts, newest first, optionally filtered."""
    filters = AlertFilter(resource_group, cluster_name, status, severity)
    detail = request.state.principal.is_admin
    with transaction(request) as session:
        alerts = monitoring.list_alerts(session, subscription_id, filters)
        return {"value": [alert_json(record, delivery_detail=detail) for record in alerts]}


@router.get(
    f"{ALERTS}/{{alert_id}}", tags=["alerts"], response_model=AlertResource, response_model_exclude_unset=True
)
async def get_alert(request: Request, subscription_id: str, alert_id: str) -> dict[str, object]:
    """One alert."""
    with transaction(request) as session:
        record = monitoring.get_alert(session, subscription_id, alert_id)
        return alert_json(record, delivery_detail=request.state.principal.is_admin)


@router.post(f"{ALERTS}/{{alert_id}}/resolve", tags=["alerts"], status_code=204, response_class=Response)
async def resolve_alert(request: Request, subscription_id: str, alert_id: str) -> Response:
    """Set an alert's status to Resolved (204, as Defender for Cloud answers)."""
    with transaction(request) as session:
        monitoring.resolve_alert(session, subscription_id, alert_id)
    return Response(status_code=204)


@router.post(f"{ALERTS}/{{alert_id}}/acknowledge", tags=["alerts"], status_code=204, response_class=Response)
async def acknowledge_alert(request: Request, subscription_id: str, alert_id: str) -> Response:
    """Acknowledge an Active alert: its status becomes InProgress (204; 409 for a Resolved alert)."""
    with transaction(request) as session:
        monitoring.acknowledge_alert(session, subscription_id, alert_id)
    return Response(status_code=204)


@router.put(
    WEBHOOK,
    tags=["alerts"],
    status_code=201,
    response_model=WebhookResource,
    responses={200: {"model": WebhookResource, "description": "Replaced"}},
)
async def put_webhook(
    request: Request, response: Response, subscription_id: str, body: WebhookBody
) -> dict[str, object]:
    """Create (201) or replace (200) the URL the subscription's alerts are delivered to: 400 when its host
    is or resolves to a loopback, private, link-local or other non-public address the operator did not
    allow."""
    networks = request.app.state.webhook_networks
    await run_in_threadpool(monitoring.check_webhook_destination, body.properties.url, networks)
    with transaction(request) as session:
        webhook, created = monitoring.set_webhook(session, subscription_id, body.properties.url)
        session.flush()
        content = webhook_json(webhook)
    response.status_code = 201 if created else 200
    return content


@router.get(WEBHOOK, tags=["alerts"], response_model=WebhookResource)
async def get_webhook(request: Request, subscription_id: str) -> dict[str, object]:
    """The subscription's alert webhook."""
    with transaction(request) as session:
        return webhook_json(monitoring.get_webhook(session, subscription_id))


@router.delete(
    WEBHOOK,
    tags=["alerts"],
    status_code=200,
    response_class=Response,
    responses={204: {"description": "There was no webhook"}},
)
async def delete_webhook(request: Request, subscription_id: str) -> Response:
    """Remove the alert webhook (200; 204 if there was none)."""
    with transaction(request) as session:
        deleted = monitoring.delete_webhook(session, subscription_id)
    return Response(status_code=200 if deleted else 204)
