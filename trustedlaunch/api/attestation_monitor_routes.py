"""`GET /providers/Microsoft.TrustedLaunch/attestationMonitor`: whether continuous attestation (the
reconciler's re-attestation of every Ready vTPM node every interval) runs for this API's store, so that a
client creating or updating a vTPM pool can say when it does not.

The API knows it from the reconciler it runs beside: `tl serve` (in its process, or beside its worker
processes through TL_RECONCILER_ATTESTATION_INTERVAL), or the embedded server of a `tl` command, whose
reconciler stops with the command. An API run on its own (its app factory under uvicorn, `tl reconciler run`
elsewhere) knows only what TL_RECONCILER_ATTESTATION_INTERVAL says; unset, it answers Unknown. Any valid
token may read it (it names no resource)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from enum import StrEnum

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from trustedlaunch.api.models import ErrorResponse
from trustedlaunch.api.routes import api_version
from trustedlaunch.errors import TrustedLaunchError

ATTESTATION_MONITOR_PATH = "/providers/Microsoft.TrustedLaunch/attestationMonitor"
INTERVAL_ENV = "TL_RECONCILER_ATTESTATION_INTERVAL"


class ContinuousAttestation(StrEnum):
    """Whether the reconciler of this API's store re-attests Ready vTPM nodes every interval."""

    RUNNING = "Running"
    NOT_RUNNING = "NotRunning"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class AttestationMonitorStatus:
    """What this API knows of continuous attestation: its state, the interval (seconds; None if unknown)
    and a sentence saying why."""

    state: ContinuousAttestation
    interval_seconds: float | None
    message: str

    @classmethod
    def of_reconciler(cls, interval: float, where: str = "beside this API") -> AttestationMonitorStatus:
        """The status of a reconciler running for as long as the API, re-attesting every `interval`
        seconds (0: only on demand)."""
        if interval > 0:
            message = f"The reconciler {where} re-attests every Ready vTPM node every {interval:g} s."
            return cls(ContinuousAttestation.RUNNING, interval, message)
        message = (
            f"The reconciler {where} runs with --attestation-interval 0: vTPM nodes are attested when "
            "they are provisioned and on demand (tl aks nodepool attest), never on an interval."
        )
        return cls(ContinuousAttestation.NOT_RUNNING, interval, message)

    @classmethod
    def from_environment(cls) -> AttestationMonitorStatus:
        """The status TL_RECONCILER_ATTESTATION_INTERVAL declares (Unknown when unset); a value that is not
        a number of seconds >= 0 fails the start."""
        raw = os.environ.get(INTERVAL_ENV, "").strip()
        if not raw:
            return UNKNOWN
        try:
            interval = float(raw)
        except ValueError:
            interval = -1.0
        if not math.isfinite(interval) or interval < 0:
            raise TrustedLaunchError(f"{INTERVAL_ENV}: '{raw[:100]}' is not a number of seconds >= 0")
        return cls.of_reconciler(interval, "of this API's store")


UNKNOWN = AttestationMonitorStatus(
    ContinuousAttestation.UNKNOWN,
    None,
    f"No reconciler runs in this API's process and {INTERVAL_ENV} is not set: whether vTPM nodes are "
    "re-attested on an interval is not known here.",
)
EMBEDDED = AttestationMonitorStatus(
    ContinuousAttestation.NOT_RUNNING,
    None,
    "This is the embedded server of a tl command: its reconciler stops when the command ends, so vTPM nodes "
    "are re-attested only while some tl command runs. Run `tl serve` and use it with --endpoint (or "
    "TL_ENDPOINT) for continuous attestation.",
)


class AttestationMonitorResult(BaseModel):
    """The answer: `continuousAttestation` (Running, NotRunning, Unknown), the interval, why."""

    continuousAttestation: ContinuousAttestation
    attestationIntervalSeconds: float | None
    message: str


router = APIRouter(
    tags=["attestation"],
    dependencies=[Depends(api_version)],
    responses={401: {"model": ErrorResponse, "description": "Missing or invalid bearer token"}},
)


@router.get(ATTESTATION_MONITOR_PATH, response_model=AttestationMonitorResult)
def attestation_monitor(request: Request) -> AttestationMonitorResult:
    """Whether continuous attestation runs for this API's store."""
    status: AttestationMonitorStatus = request.app.state.attestation_monitor
    return AttestationMonitorResult(
        continuousAttestation=status.state,
        attestationIntervalSeconds=status.interval_seconds,
        message=status.message,
    )
