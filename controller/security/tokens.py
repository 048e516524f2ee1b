"""API tokens: random secrets shown once, stored only as SHA-256."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from controller.db.models import ApiToken, utcnow
from controller.errors import Unauthorized
from controller.security.principal import Principal, Role

TOKEN_PREFIX = "fedge_"  # noqa: S105 - a prefix, not a secret
BOOTSTRAP_ADMIN = "bootstrap-admin"


def hash_token(token: str) -> str:
    """SHA-256 hex of a token (what the database keeps)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def mint(
    session: Session,
    *,
    name: str,
    role: Role,
    subject: str | None = None,
    ttl_seconds: int | None = None,
    model_id: str | None = None,
    token: str | None = None,
) -> tuple[str, ApiToken]:
    """Create a token; returns (plaintext, row). The plaintext is never stored."""
    plaintext = token or new_token()
    row = ApiToken(
        name=name,
        role=role.value,
        token_hash=hash_token(plaintext),
        subject=subject or name,
        model_id=model_id,
        expires_at=utcnow() + dt.timedelta(seconds=ttl_seconds) if ttl_seconds else None,
    )
    session.add(row)
    session.flush()
    return plaintext, row


def ensure_admin(session: Session, preset: str | None) -> str | None:
    """On first start, create the admin token (``preset`` if given). Returns the plaintext when one was
    generated here (to print once), else None."""
    exists = session.scalar(
        select(ApiToken.id).where(ApiToken.role == Role.ADMIN.value, ApiToken.revoked_at.is_(None)).limit(1)
    )
    if exists:
        return None
    plaintext, _ = mint(session, name=BOOTSTRAP_ADMIN, role=Role.ADMIN, subject="admin", token=preset)
    return None if preset else plaintext


def rotate_admin(session: Session) -> str:
    """Revoke every bootstrap admin token and create a new one; returns its plaintext."""
    session.execute(
        update(ApiToken)
        .where(ApiToken.name == BOOTSTRAP_ADMIN, ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    plaintext, _ = mint(session, name=BOOTSTRAP_ADMIN, role=Role.ADMIN, subject="admin")
    return plaintext


def authenticate(session: Session, token: str) -> Principal:
    """Resolve an API token to a principal or raise Unauthorized with a precise reason."""
    digest = hash_token(token)
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        raise Unauthorized("invalid token")
    if row.revoked_at is not None:
        raise Unauthorized("token has been revoked")
    if row.expires_at is not None and row.expires_at <= utcnow():
        raise Unauthorized("token has expired")
    now = utcnow()
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        row.last_used_at = now
    return Principal(subject=row.subject, role=Role(row.role), token_id=row.id, model_id=row.model_id)
