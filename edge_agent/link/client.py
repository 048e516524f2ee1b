"""HTTP link to the controller, authenticated with short-lived tokens signed by the device key."""

from __future__ import annotations

import hashlib
import json
import os
import random
import ssl
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edge_agent.identity import DeviceIdentity
from edge_agent.link.signed import verify_command, verify_desired_state
from fedge_common.tls import describe as tls_describe
from fedge_protocol import TelemetryPost, paths
from fedge_protocol.lifecycle import DEVICE_REVOKED, CertificateRenewal, RenewedCertificate, problem_type

KEEPALIVE_EXPIRY = 4.0
"""Seconds an idle connection to the controller is reused: under uvicorn's 5 s keep-alive. With equal
timeouts (httpx's default is 5 s too) a request sent just as the server closes the idle connection fails
with "Server disconnected without sending a response" (seen as a failed model download)."""


class LinkError(Exception):
    """The controller could not be reached or answered with an error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        """Worth another try: no answer at all (the link), or a 5xx / 429 (the server, for now)."""
        return self.status is None or self.status >= 500 or self.status == 429


class DeviceRevoked(LinkError):
    """The controller says this device is revoked (problem type ``device-revoked``): stop, do not retry.
    Once seen, the link refuses every later request without sending it."""

    @property
    def transient(self) -> bool:
        return False


def _revocation(resp: httpx.Response) -> str | None:
    """The detail of a device-revoked problem, else None."""
    if resp.status_code not in (401, 403) or "json" not in resp.headers.get("content-type", ""):
        return None
    try:
        body = json.loads(resp.read())
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("type") != problem_type(DEVICE_REVOKED):
        return None
    return str(body.get("detail") or DEVICE_REVOKED)


class DeviceAuth(httpx.Auth):
    """Adds ``Authorization: Bearer <ES256 JWT>``; a token is reused until a minute before it expires."""

    def __init__(self, identity: DeviceIdentity, ttl: int = 300) -> None:
        self.identity, self.ttl = identity, ttl
        self._token, self._until = "", 0.0

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        now = time.time()
        if now >= self._until:
            self._token, self._until = self.identity.sign_jwt(self.ttl, now), now + self.ttl - 60
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


@dataclass
class Poll:
    """One desired-state poll: ``changed`` False on 304."""

    status: int
    changed: bool
    desired: dict[str, Any] | None
    etag: str | None


def _detail(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("detail"))
    except ValueError:
        return resp.text[:200]


class ControllerLink:
    """Desired state (verified), status reports and model downloads for one device."""

    def __init__(
        self,
        identity: DeviceIdentity,
        *,
        timeout: float = 30.0,
        ttl: int = 300,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.identity = identity
        self.revoked: str | None = None
        """The controller's revocation detail once it said the device is revoked (then nothing is sent)."""
        self.on_revoked: Callable[[str], None] | None = None
        self._auth = DeviceAuth(identity, ttl)
        self.http = httpx.Client(
            base_url=identity.api_url,
            auth=self._auth,
            timeout=timeout,
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY),
            transport=transport,
            verify=verify,  # the pinned controller CA (edge_agent.tls.controller_verify)
            event_hooks={"request": [self._refuse_if_revoked], "response": [self._watch_revocation]},
        )
        self.etag: str | None = None
        self.last: dict[str, Any] | None = None
        self.not_modified = 0
        self._storage: httpx.Client | None = None
        """Fetches presigned storage URLs: no device token, kept alive (a new client costs ~40 ms of
        CA loading)."""

    def close(self) -> None:
        self.http.close()
        if self._storage is not None:
            self._storage.close()

    def _refuse_if_revoked(self, _request: httpx.Request) -> None:
        if self.revoked is not None:
            raise DeviceRevoked(f"not sent, the device is revoked (401 earlier): {self.revoked}", 401)

    def _watch_revocation(self, resp: httpx.Response) -> None:
        detail = _revocation(resp)
        if detail is None:
            return
        first = self.revoked is None
        self.revoked = detail
        if first and self.on_revoked is not None:
            self.on_revoked(detail)
        where = f"{resp.request.method} {resp.request.url.path}"
        raise DeviceRevoked(f"{where}: {resp.status_code} {detail}", resp.status_code)

    def use_identity(self, identity: DeviceIdentity) -> None:
        """Switch to a reloaded identity (a renewed certificate; the key is the same)."""
        self.identity = self._auth.identity = identity

    def renew_certificate(self, csr: str) -> dict[str, Any]:
        """POST a CSR signed with the device key; the controller's answer (:class:`RenewedCertificate`)."""
        try:
            resp = self.http.post(
                self._path(paths.CERTIFICATE), json=CertificateRenewal(csr=csr).model_dump()
            )
        except httpx.HTTPError as exc:
            raise LinkError(f"certificate renewal: {exc}") from exc
        self._check(resp, "certificate renewal")
        return RenewedCertificate.model_validate_json(resp.content).model_dump(mode="json")

    def _path(self, template: str, **params: Any) -> str:
        """A device route of the protocol for this device."""
        return template.format(device_id=self.identity.device_id, **params)

    def _check(self, resp: httpx.Response, what: str) -> None:
        if resp.status_code >= 400:
            raise LinkError(f"{what}: {resp.status_code} {_detail(resp)}", resp.status_code)

    def poll(self) -> Poll:
        """GET the desired state with ``If-None-Match``; the signed document is verified before use."""
        headers = {"If-None-Match": self.etag} if self.etag else {}
        try:
            resp = self.http.get(self._path(paths.DESIRED_STATE), headers=headers)
        except httpx.HTTPError as exc:
            raise LinkError(f"desired state: {tls_describe(exc)}") from exc
        if resp.status_code == 304:
            self.not_modified += 1
            return Poll(304, False, self.last, self.etag)
        self._check(resp, "desired state")
        desired = verify_desired_state(resp.json(), self.identity.ca_certificate, self.identity.device_id)
        self.etag, self.last = resp.headers.get("etag"), desired
        return Poll(resp.status_code, True, desired, self.etag)

    def report(self, report: dict[str, Any]) -> None:
        try:
            resp = self.http.post(self._path(paths.STATUS), json=report)
        except httpx.HTTPError as exc:
            raise LinkError(f"status report: {exc}") from exc
        self._check(resp, "status report")

    def send_telemetry(self, seq: int, body: dict[str, Any]) -> None:
        """One outbox telemetry record over HTTP (stored once per sequence number by the controller)."""
        try:
            resp = self.http.post(
                self._path(paths.TELEMETRY),
                json=TelemetryPost(seq=seq, body=body).model_dump(),
            )
        except httpx.HTTPError as exc:
            raise LinkError(f"telemetry: {exc}") from exc
        self._check(resp, "telemetry")

    def pending_commands(self) -> list[dict[str, Any]]:
        """Commands not acknowledged yet, each verified (signature, type, device) before use."""
        try:
            resp = self.http.get(self._path(paths.PENDING_COMMANDS))
        except httpx.HTTPError as exc:
            raise LinkError(f"commands: {exc}") from exc
        self._check(resp, "commands")
        return [verify_command(e, self.identity.ca_certificate, self.identity.device_id) for e in resp.json()]

    def request_command(self, body: dict[str, Any]) -> dict[str, Any]:
        """Ask the controller for a command for this device to run now; returns its verified document."""
        try:
            resp = self.http.post(self._path(paths.COMMANDS), json=body)
            self._check(resp, "command")
            resp = self.http.get(self._path(paths.SIGNED_COMMAND, command_id=resp.json()["id"]))
        except httpx.HTTPError as exc:
            raise LinkError(f"command: {exc}") from exc
        self._check(resp, "command")
        return verify_command(resp.json(), self.identity.ca_certificate, self.identity.device_id)

    def download(self, path: str, dest: Path) -> str:
        """Stream an artifact to ``dest`` (fsynced); returns the SHA-256 of the bytes received. A 307
        from the controller (S3 store) names a presigned storage URL: the bytes are fetched from there
        with a client of their own (no device token is sent to storage); the caller compares the hash
        with the signed chain record either way."""
        try:
            with self.http.stream("GET", path) as resp:
                if resp.status_code in (302, 303, 307, 308) and resp.headers.get("location"):
                    location = str(resp.url.join(resp.headers["location"]))
                else:
                    if resp.status_code >= 400:
                        resp.read()
                        self._check(resp, "model download")
                    return _write(resp, dest)
            if self._storage is None:
                self._storage = httpx.Client(timeout=self.http.timeout)
            with self._storage.stream("GET", location) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise LinkError(
                        f"model download from storage: HTTP {resp.status_code} {resp.text[:200]}",
                        resp.status_code,
                    )
                return _write(resp, dest)
        except httpx.HTTPError as exc:
            raise LinkError(f"model download: {exc}") from exc


def _write(resp: httpx.Response, dest: Path) -> str:
    """Stream a response body into ``dest`` (fsynced); the SHA-256 of what was written."""
    digest = hashlib.sha256()
    # undecoded bodies are read as they arrive (no re-chunking copy); an encoded one is decoded
    chunks = resp.iter_bytes(1 << 20) if resp.headers.get("content-encoding") else resp.iter_raw()
    with open(dest, "wb") as fh:
        for chunk in chunks:
            digest.update(chunk)
            fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    return digest.hexdigest()


class Backoff:
    """Exponential backoff with full jitter: after n failures wait uniform(0, min(cap, base * 2**n))."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base, self.cap, self.failures = base, cap, 0
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def success(self) -> float:
        """Reset; the next wait is the poll interval with +-10 % jitter."""
        self.failures = 0
        return self.base * self.rng.uniform(0.9, 1.1)

    def failure(self) -> float:
        self.failures += 1
        return self.rng.uniform(0, min(self.cap, self.base * 2**self.failures))
