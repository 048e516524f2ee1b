"""API credentials: admins mint, list and revoke tokens (developer, job, admin). The last active admin
credential cannot be revoked (a 409 problem): nobody could administer the controller after it."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy import ColumnElement, and_, func, or_, select

from controller.api.deps import Admin, Offset, SessionsDep
from controller.db.models import ApiToken, Model, utcnow
from controller.errors import Conflict, NotFound, Unprocessable
from controller.schemas.tokens import TokenCreated, TokenOut, TokenPage, TokenRequest
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


@router.get("", response_model=TokenPage)
def list_tokens(
    sessions: SessionsDep,
    _admin: Admin,
    role: Annotated[Role | None, Query(description="only credentials of this role")] = None,
    active: Annotated[bool | None, Query(description="only active (true) or revoked/expired (false)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> TokenPage:
    """Credentials, oldest first (never the secret): a page of ``items`` with ``total``."""
    query = select(ApiToken)
    if role is not None:
        query = query.where(ApiToken.role == role.value)
    if active is not None:
        live = _active_clause()
        query = query.where(live if active else ~live)
    with sessions() as s:
        total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = s.scalars(query.order_by(ApiToken.created_at, ApiToken.id).limit(limit).offset(offset)).all()
        items = [
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
                active=_is_active(r),
            )
            for r in rows
        ]
        return TokenPage(items=items, total=total, limit=limit, offset=offset)


def _active_clause() -> ColumnElement[bool]:
    now = utcnow()
    return and_(ApiToken.revoked_at.is_(None), or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now))


def _is_active(row: ApiToken) -> bool:
    if row.revoked_at is not None:
        return False
    expires = row.expires_at
    if expires is None:
        return True
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=dt.UTC)
    return expires > utcnow()


@router.delete("/{token_id}", status_code=204, response_class=Response)
def revoke_token(token_id: str, sessions: SessionsDep, _admin: Admin) -> Response:
    """Revoke a credential immediately."""
    with sessions.begin() as s:
        row = s.get(ApiToken, token_id)
        if row is None:
            raise NotFound(f"token {token_id} not found")
        if row.revoked_at is None and row.role == Role.ADMIN.value and _is_active(row):
            # lock the admin rows so two concurrent revocations cannot both pass the count
            admins = s.scalars(
                select(ApiToken).where(ApiToken.role == Role.ADMIN.value, _active_clause()).with_for_update()
            ).all()
            if [a.id for a in admins] == [row.id]:
                raise Conflict(
                    f"token {token_id} is the last active admin credential: mint another admin token "
                    "(POST /v1/tokens with role=admin) before revoking this one",
                    field="token_id",
                )
        if row.revoked_at is None:
            row.revoked_at = utcnow()
    return Response(status_code=204)
