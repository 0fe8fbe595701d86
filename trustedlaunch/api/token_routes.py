"""Token management: `POST/GET/DELETE /providers/Microsoft.TrustedLaunch/tokens[/{name}]`. Admin tokens only
(a path outside every subscription: BearerAuth refuses scoped tokens with 403). The plaintext of a new token
is in the POST response only."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from trustedlaunch.api.models import ErrorResponse
from trustedlaunch.api.responses import ArmList, TokenResource
from trustedlaunch.api.routes import api_version, transaction
from trustedlaunch.control import tokens
from trustedlaunch.control.records import ApiToken

TOKENS_PATH = "/providers/Microsoft.TrustedLaunch/tokens"
TOKEN_TYPE = "Microsoft.TrustedLaunch/tokens"

router = APIRouter(
    prefix=TOKENS_PATH,
    tags=["tokens"],
    dependencies=[Depends(api_version)],
    responses={
        status: {"model": ErrorResponse, "description": description}
        for status, description in (
            (400, "Invalid token name or scope"),
            (401, "Missing or invalid bearer token"),
            (403, "Not an admin token"),
            (404, "Token not found"),
            (409, "A token with this name exists"),
        )
    },
)


class TokenBody(BaseModel):
    """A new token: its name and scope (omitted or null = admin)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="1-64 letters, digits, '-', '_' or '.'")
    scope: str | None = Field(
        None, description="/subscriptions/{id} or /subscriptions/{id}/resourceGroups/{name}; null = admin"
    )


def token_json(token: ApiToken) -> dict[str, Any]:
    """A token as an ARM-shaped resource (never its digest)."""
    return {
        "id": f"{TOKENS_PATH}/{token.name}",
        "name": token.name,
        "type": TOKEN_TYPE,
        "properties": {"scope": token.scope, "createdAt": token.created_at.isoformat()},
    }


@router.post("", status_code=201, response_model=TokenResource)
async def create_token(request: Request, response: Response, body: TokenBody) -> dict[str, Any]:
    """Create a token; the response holds its plaintext (`properties.token`), shown this once."""
    with transaction(request) as session:
        plaintext = tokens.create_token(session, body.name, body.scope)
        content = token_json(tokens.get_token(session, body.name))
    content["properties"]["token"] = plaintext
    response.headers["Cache-Control"] = "no-store"
    return content


@router.get("", response_model=ArmList[TokenResource], response_model_exclude_unset=True)
async def list_tokens(request: Request) -> dict[str, object]:
    """Every token's name, scope and creation time."""
    with transaction(request) as session:
        return {"value": [token_json(token) for token in tokens.list_tokens(session)]}


@router.get("/{name}", response_model=TokenResource, response_model_exclude_unset=True)
async def get_token(request: Request, name: str) -> dict[str, object]:
    """One token's name, scope and creation time."""
    with transaction(request) as session:
        return token_json(tokens.get_token(session, name))


@router.delete("/{name}", response_class=Response)
async def revoke_token(request: Request, name: str) -> Response:
    """Revoke a token (404 if there is none): it stops working at once on this server, and within the token
    cache time (TOKEN_CACHE_SECONDS) on other servers of the same store."""
    with transaction(request) as session:
        tokens.revoke_token(session, name)
    request.app.state.principals.forget(name)
    return Response(status_code=200)
