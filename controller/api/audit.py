"""The audit log: who did what. Every state-changing call (POST, PUT, PATCH, DELETE) by a user, an OIDC
user or an anonymous caller is recorded with its outcome (status), its principal (subject, role,
credential id) and a request id; devices and jobs, whose calls are the fleet's own traffic (status reports,
telemetry, round reports), are not. ``GET /v1/audit`` (admin) reads it, newest first.

``AuditTrail`` is pure ASGI middleware: it also gives every response an ``X-Request-ID`` (the client's, if
it sent a sane one). The row is written after the response, in a worker thread; a failure to write it is
logged, never turned into an error for the caller.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query
from sqlalchemy import func, select

from controller.api.deps import Admin, Offset, SessionsDep
from controller.db.models import AuditRecord
from controller.schemas.audit import AuditOut, AuditPage
from controller.security.principal import Principal, Role
from fedge_common import logs

if TYPE_CHECKING:
    from controller.state import ControllerState

log = logging.getLogger("fedge.audit")
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SKIPPED_ROLES = frozenset({Role.DEVICE, Role.JOB})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            try:
                return str(value.decode("latin-1"))
            except UnicodeDecodeError:
                return None
    return None


class AuditTrail:
    """ASGI middleware: request ids on every response, audit rows for state-changing user calls."""

    def __init__(self, app: ASGIApp, state: ControllerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = _header(scope, b"x-request-id")
        request_id = sent if sent and _REQUEST_ID.match(sent) else uuid.uuid4().hex
        status = 500
        token = logs.request_id.set(request_id)  # every line this request logs carries it

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope.get("method") in MUTATING:
                principal = (scope.get("state") or {}).get("principal")
                if not (isinstance(principal, Principal) and principal.role in SKIPPED_ROLES):
                    await self._record(scope, principal, status, request_id)
            logs.request_id.reset(token)

    async def _record(self, scope: Scope, principal: Any, status: int, request_id: str) -> None:
        client = scope.get("client")
        row = AuditRecord(
            at=dt.datetime.now(dt.UTC),
            actor=principal.subject if isinstance(principal, Principal) else "anonymous",
            role=principal.role.value if isinstance(principal, Principal) else None,
            via=principal.via if isinstance(principal, Principal) else None,
            token_id=principal.token_id if isinstance(principal, Principal) else None,
            method=str(scope.get("method")),
            path=str(scope.get("path", ""))[:1000],
            status=status,
            request_id=request_id,
            client=f"{client[0]}:{client[1]}"[:100] if client else None,
        )

        def write() -> None:
            with self.state.sessions.begin() as s:
                s.add(row)

        try:
            await anyio.to_thread.run_sync(write)
        except Exception:  # the call itself is done; an audit write must not fail it
            log.exception("could not write the audit record of %s %s", row.method, row.path)


router = APIRouter(prefix="/v1/audit", tags=["auth"])


@router.get("", response_model=AuditPage)
def list_audit(
    sessions: SessionsDep,
    _admin: Admin,
    actor: Annotated[str | None, Query(max_length=200, description="only this subject")] = None,
    method: Annotated[str | None, Query(pattern="^(POST|PUT|PATCH|DELETE)$")] = None,
    path_prefix: Annotated[str | None, Query(max_length=1000, description="only paths starting so")] = None,
    since: Annotated[dt.datetime | None, Query(description="only records at or after this time")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> AuditPage:
    """Who did what, newest first (admin)."""
    query = select(AuditRecord)
    if actor is not None:
        query = query.where(AuditRecord.actor == actor)
    if method is not None:
        query = query.where(AuditRecord.method == method)
    if path_prefix is not None:
        query = query.where(AuditRecord.path.startswith(path_prefix, autoescape=True))
    if since is not None:
        query = query.where(AuditRecord.at >= (since if since.tzinfo else since.replace(tzinfo=dt.UTC)))
    with sessions() as s:
        total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = s.scalars(query.order_by(AuditRecord.at.desc(), AuditRecord.id).limit(limit).offset(offset))
        items = [
            AuditOut(
                id=r.id,
                at=r.at,
                actor=r.actor,
                role=r.role,
                via=r.via,
                token_id=r.token_id,
                method=r.method,
                path=r.path,
                status=r.status,
                request_id=r.request_id,
                client=r.client,
            )
            for r in rows
        ]
    return AuditPage(items=items, total=total, limit=limit, offset=offset)
