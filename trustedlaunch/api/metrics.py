"""The Prometheus scrape endpoint: GET /metrics renders the attestation instruments
(trustedlaunch.attest.metrics, every API worker's and the reconciler's) in the text exposition format.
Like every route but the public ones it needs the bearer token (Prometheus: `authorization` in the scrape
config): failure counts by check describe the fleet's weaknesses."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from trustedlaunch.attest.metrics import scraped_registry

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    """Every attestation metric, in the Prometheus text format."""
    return Response(generate_latest(scraped_registry()), media_type=CONTENT_TYPE_LATEST)
