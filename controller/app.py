"""FastAPI assembly: routers, RFC 7807 error rendering, OpenAPI at /openapi.json (viewers at /docs and
/redoc, offline: :mod:`controller.api.openapi`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from controller import __version__
from controller.api import (
    commands,
    contracts,
    datasets,
    deployments,
    devices,
    drift,
    fl,
    fl_audit,
    health,
    jobs,
    models,
    monitoring,
    seed_compat,
    translation,
)
from controller.api import tokens as tokens_api
from controller.api.audit import AuditTrail
from controller.api.audit import router as audit_router
from controller.api.input_guard import InputGuard
from controller.api.openapi import install_openapi, mount_docs
from controller.errors import ProblemError
from controller.observability.metrics import install_metrics
from controller.state import ControllerState

log = logging.getLogger("fedge.controller")
PROBLEM = "application/problem+json"


def problem_response(status: int, title: str, detail: str, request: Request, **extra: Any) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    body.update(extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def create_app(state: ControllerState) -> FastAPI:
    """The ASGI app for a built ``ControllerState``."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(
        title="fedge controller",
        version=__version__,
        description="Registry, provenance, training, federation and fleet management for fedge. "
        "Every error is RFC 7807 problem+json. Authenticate with `Authorization: Bearer <token>`.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.fedge = state
    install_openapi(app)
    mount_docs(app)
    app.add_middleware(InputGuard)
    app.add_middleware(AuditTrail, state=state)  # outermost: sees every response, even the guard's
    install_metrics(app, state)  # GET /metrics; its HTTP middleware wraps even the audit trail

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(
            exc.to_problem(request.url.path), status_code=exc.status, media_type=PROBLEM, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "", "message": "invalid request"}
        return problem_response(
            422,
            "Unprocessable content",
            f"invalid {first['field']}: {first['message']}",
            request,
            field=first["field"],
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed"}
        return problem_response(
            exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail), request
        )

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request: Request, _exc: ClientDisconnect) -> Response:
        # Not a server error: the client hung up (mid-upload, typically). Whatever it sent was rolled back
        # by the route (an upload's object is deleted); nobody is left to read a response.
        log.info("client disconnected during %s %s; request abandoned", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(PoolTimeout)
    async def _database_away(request: Request, exc: Exception) -> JSONResponse:
        # the database is down, unreachable, out of connections or locked past the timeout: the request
        # was rolled back with its transaction (an upload's object and pending row are removed by its
        # saga); the client may retry
        log.error("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        response = problem_response(
            503,
            "Service unavailable",
            "the database is unavailable; retry later",
            request,
            backend="database",
        )
        response.headers["Retry-After"] = "5"
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500, "Internal error", "unexpected server error; see controller logs", request
        )

    app.include_router(health.router)
    app.include_router(datasets.router)
    app.include_router(models.router)
    app.include_router(tokens_api.router)
    app.include_router(audit_router)
    app.include_router(contracts.router)
    app.include_router(jobs.router)
    app.include_router(translation.router)
    app.include_router(devices.router)
    app.include_router(commands.router)
    app.include_router(deployments.router)
    app.include_router(monitoring.router)
    app.include_router(drift.router)
    app.include_router(fl.router)
    app.include_router(fl_audit.router)
    app.include_router(seed_compat.router)  # the seed's section 4.3 calls as written
    return app
