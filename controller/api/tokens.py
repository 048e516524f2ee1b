"""API credentials: admins mint, list and revoke tokens (developer, job, admin)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import select

from controller.api.deps import Admin, SessionsDep
from controller.db.models import ApiToken, Model, utcnow
from controller.errors import NotFound, Unprocessable
from controller.schemas.tokens import TokenCreated, TokenOut, TokenRequest
from controller.security import tokens
from controller.security.principal import Role

router = APIRouter(prefix="/v1/tokens", tags=["auth"])


@router.post("", status_code=201, response_model=TokenCreated)
def create_token(body: TokenRequest, sessions: SessionsDep, _admin: Admin) -> TokenCreated:
    """Mint a credential. Job tokens are scoped to one model."""
    if body.role is Role.JOB and not body.model_id:
        raise Unprocessable("a job token needs model_id", field="model_id")
    if body.role is Role.DEVICE:
        raise Unprocessable("device credentials come from enrollment, not from this route", field="role")
    with sessions.begin() as s:
        if body.model_id and s.get(Model, body.model_id) is None:
            raise Unprocessable(f"model {body.model_id} does not exist", field="model_id")
        plaintext, row = tokens.mint(
            s,
            name=body.name,
            role=body.role,
            subject=body.subject,
            ttl_seconds=body.ttl_seconds,
            model_id=body.model_id,
        )
        return TokenCreated(id=row.id, token=plaintext, role=body.role, expires_at=row.expires_at)


@router.get("", response_model=list[TokenOut])
def list_tokens(sessions: SessionsDep, _admin: Admin) -> list[TokenOut]:
    """Every credential (never the secret)."""
    with sessions() as s:
        rows = s.scalars(select(ApiToken).order_by(ApiToken.created_at)).all()
        return [
            TokenOut(
                id=r.id,
                name=r.name,
                role=Role(r.role),
                subject=r.subject,
                model_id=r.model_id,
                created_at=r.created_at,
                expires_at=r.expires_at,
                revoked_at=r.revoked_at,
                last_used_at=r.last_used_at,
            )
            for r in rows
        ]


@router.delete("/{token_id}", status_code=204, response_class=Response)
def revoke_token(token_id: str, sessions: SessionsDep, _admin: Admin) -> Response:
    """Revoke a credential immediately."""
    with sessions.begin() as s:
        row = s.get(ApiToken, token_id)
        if row is None:
            raise NotFound(f"token {token_id} not found")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
    return Response(status_code=204)
