"""Enrollment (one-time tokens, CSR signing), device authentication (ES256 JWTs signed with the device
key), revocation, status reports and the signed desired-state document."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import jwt
from cryptography import x509
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from controller.db.models import Device, EnrollmentToken, ModelVersion, new_id, utcnow
from controller.errors import Conflict, Forbidden, NotFound, Unauthorized, Unprocessable
from controller.fleet.ca import CsrRejected, DeviceCA
from controller.fleet.credentials import CredentialCache, VerifiedCredential
from controller.fleet.desired import DesiredDocument, DesiredDocuments, DesiredPoll, payload_etag, source_key
from controller.fleet.events import FleetEvents
from controller.fleet.references import reference_for
from controller.fleet.renewal import DeviceRevoked, check_not_expired, renew_certificate
from controller.security.principal import Principal, Role
from fedge_protocol import DEVICE_AUDIENCE, MAX_DEVICE_TOKEN_SECONDS, DesiredState, ModelReference, paths
from fedge_protocol.lifecycle import RenewedCertificate

if TYPE_CHECKING:
    from controller.registry.service import Registry

ENROLLMENT_PREFIX = "fedge-enroll-"
CLOCK_LEEWAY_SECONDS = 30
LAST_SEEN_WRITE_SECONDS = 5.0
ACTIVE, REVOKED = "active", "revoked"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_device_token(credential: str) -> bool:
    """True for a JWT whose (unverified) audience is the device API: routes it to device authentication."""
    if credential.count(".") != 2:
        return False
    try:
        claims = jwt.decode(credential, options={"verify_signature": False})
    except jwt.PyJWTError:
        return False
    aud = claims.get("aud")
    return aud == DEVICE_AUDIENCE or (isinstance(aud, list) and DEVICE_AUDIENCE in aud)


@dataclass(frozen=True)
class Enrolled:
    device_id: str
    certificate_pem: str


class Fleet:
    """Device identity and desired state over SQL, the device CA and the registry (for chain hashes)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        ca: DeviceCA,
        registry: Registry,
        events: FleetEvents | None = None,
        last_seen_write_seconds: float = LAST_SEEN_WRITE_SECONDS,
    ) -> None:
        self.sessions = sessions
        self.ca = ca
        self.registry = registry
        self.events = events or FleetEvents()
        self.last_seen_write_seconds = last_seen_write_seconds
        self.documents = DesiredDocuments()
        self.credentials = CredentialCache()
        """Verified device JWTs (:mod:`controller.fleet.credentials`): a reused token skips the crypto."""
        self._enrolled_hooks: list[Callable[[Session, Device], None]] = []

    def on_enrolled(self, hook: Callable[[Session, Device], None]) -> None:
        """Run ``hook(session, device)`` inside each enrollment's transaction, after the device row is
        added (continuous deployments give the new device its desired state there, atomically)."""
        self._enrolled_hooks.append(hook)

    # ------------------------------------------------------------ enrollment
    def mint_enrollment_token(
        self, labels: dict[str, str], ttl_seconds: int, created_by: str
    ) -> tuple[str, Any]:
        token = ENROLLMENT_PREFIX + secrets.token_urlsafe(32)
        expires = utcnow() + dt.timedelta(seconds=ttl_seconds)
        with self.sessions.begin() as s:
            s.add(
                EnrollmentToken(
                    token_hash=hash_secret(token),
                    labels=dict(labels),
                    created_by=created_by,
                    expires_at=expires,
                )
            )
        return token, expires

    def enroll(self, token: str, csr_pem: str, labels: dict[str, str], facts: dict[str, Any]) -> Enrolled:
        """Consume the token (single use, atomically), sign the CSR, record the device."""
        digest = hash_secret(token)
        now = utcnow()
        device_id = new_id()
        with self.sessions.begin() as s:
            row = s.scalar(select(EnrollmentToken).where(EnrollmentToken.token_hash == digest))
            if row is None or not hmac.compare_digest(row.token_hash, digest):
                raise Unauthorized("unknown enrollment token")
            if row.used_at is not None:
                raise Unauthorized("enrollment token has already been used (tokens are single-use)")
            if row.expires_at <= now:
                raise Unauthorized("enrollment token has expired; ask an admin for a new one")
            try:
                cert = self.ca.sign_csr(csr_pem, device_id)
            except CsrRejected as exc:
                raise Unprocessable(str(exc), field="csr") from exc
            claimed = s.execute(
                update(EnrollmentToken)
                .where(EnrollmentToken.id == row.id, EnrollmentToken.used_at.is_(None))
                .values(used_at=now, device_id=device_id)
            )
            if getattr(claimed, "rowcount", 1) != 1:
                raise Unauthorized("enrollment token has already been used (tokens are single-use)")
            from cryptography.hazmat.primitives import serialization

            pem = cert.public_bytes(serialization.Encoding.PEM).decode()
            device = Device(
                id=device_id,
                status=ACTIVE,
                labels={**row.labels, **labels},
                facts=dict(facts),
                certificate=pem,
                cert_serial=format(cert.serial_number, "x"),
                desired=None,
                desired_revision=0,
                last_seen_at=now,
            )
            s.add(device)
            s.flush()
            for hook in self._enrolled_hooks:
                hook(s, device)
        self.events.desired_changed([device_id])  # retained: the agent gets it on subscribe
        return Enrolled(device_id, pem)

    # ---------------------------------------------------------- authentication
    def authenticate(self, credential: str) -> Principal:
        """Verify a device-signed ES256 JWT (iss = sub = device id, aud, exp <= 5 min) with the public key
        of the device's certificate; revoked devices are refused at once."""
        return self.authenticate_device(credential)[0]

    def authenticate_device(self, credential: str) -> tuple[Principal, Device]:
        """:meth:`authenticate`, also returning the device row it read (detached), so that a device route
        need not read it again."""
        now = utcnow()
        cached = self.credentials.get(credential, now.timestamp())
        if cached is not None:
            device_id = cached.device_id
        else:
            try:
                unverified = jwt.decode(credential, options={"verify_signature": False})
            except jwt.PyJWTError as exc:
                raise Unauthorized(f"malformed device token: {exc}") from exc
            sub = unverified.get("sub")
            if not isinstance(sub, str) or unverified.get("iss") != sub:
                raise Unauthorized("device token needs iss = sub = device id")
            device_id = sub
        with self.sessions() as s:  # the one read of the row: revocation (any replica) is seen at once
            device = s.get(Device, device_id)
            if device is None:
                raise Unauthorized("unknown device")
            if device.status != ACTIVE:
                self.credentials.forget_device(device_id)
                raise DeviceRevoked(device_id)  # its own problem type: the agent stops, not retries
            cert_pem = device.certificate
        if cached is not None and cached.cert_serial == device.cert_serial:
            return Principal(subject=device_id, role=Role.DEVICE, via="device"), device
        certificate = x509.load_pem_x509_certificate(cert_pem.encode())
        check_not_expired(device_id, certificate, now)
        key = certificate.public_key()
        try:
            claims = jwt.decode(
                credential,
                key,  # type: ignore[arg-type]
                algorithms=["ES256"],
                audience=DEVICE_AUDIENCE,
                leeway=CLOCK_LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("device token has expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid device token: {exc}") from exc
        if claims["iss"] != device_id or claims["sub"] != device_id:
            raise Unauthorized("device token needs iss = sub = device id")
        ts = now.timestamp()
        if claims["exp"] - claims["iat"] > MAX_DEVICE_TOKEN_SECONDS or claims["exp"] - ts > (
            MAX_DEVICE_TOKEN_SECONDS + CLOCK_LEEWAY_SECONDS
        ):
            raise Unauthorized("device token lives longer than 5 minutes")
        until = min(float(claims["exp"]), certificate.not_valid_after_utc.timestamp())
        self.credentials.put(credential, VerifiedCredential(device_id, device.cert_serial, until))
        return Principal(subject=device_id, role=Role.DEVICE, via="device"), device

    # ----------------------------------------------------------------- devices
    def get(self, device_id: str) -> Device:
        with self.sessions() as s:
            device = s.get(Device, device_id)
            if device is None:
                raise NotFound(f"device {device_id} not found")
            return device

    def list(self, limit: int | None = None, offset: int = 0) -> list[Device]:
        """Devices, oldest enrolled first (ties by id, so pages never overlap); all, or a page."""
        with self.sessions() as s:
            q = select(Device).order_by(Device.enrolled_at, Device.id).offset(offset)
            return list(s.scalars(q if limit is None else q.limit(limit)).all())

    def revoke(self, device_id: str) -> None:
        with self.sessions.begin() as s:
            device = s.get(Device, device_id)
            if device is None:
                raise NotFound(f"device {device_id} not found")
            if device.status != REVOKED:
                device.status, device.revoked_at = REVOKED, utcnow()
        self.documents.forget(device_id)
        self.credentials.forget_device(device_id)
        self.events.device_revoked(device_id)

    def renew_certificate(self, device_id: str, csr_pem: str) -> RenewedCertificate:
        """A new certificate for the device's own key (:mod:`controller.fleet.renewal`)."""
        return renew_certificate(self.sessions, self.ca, device_id, csr_pem)

    def touch(self, device_id: str, last_seen_at: dt.datetime | None = None) -> None:
        """Heartbeat (a poll or telemetry from the device): ``last_seen_at`` is written at most once per
        ``last_seen_write_seconds`` per device (status reports always write it). ``last_seen_at``: the value
        the caller just read, to skip the statement when it is recent enough."""
        now = utcnow()
        cutoff = now - dt.timedelta(seconds=self.last_seen_write_seconds)
        if last_seen_at is not None and last_seen_at > cutoff:
            return
        stale = or_(Device.last_seen_at.is_(None), Device.last_seen_at <= cutoff)
        with self.sessions.begin() as s:
            s.execute(update(Device).where(Device.id == device_id, stale).values(last_seen_at=now))

    # ------------------------------------------------------------- desired state
    def chain_hash(self, mv: ModelVersion) -> tuple[str | None, str]:
        """(sha256 on chain, record) for a version, from the registry's one cache of chain facts."""
        return self.registry.provenance.cached_version_hash(mv)

    def desired_payload(self, device_id: str) -> dict[str, Any]:
        """The desired-state document of a device (deterministic: its hash is the ETag); a copy."""
        return copy.deepcopy(self._document(self.get(device_id)).payload)

    def _build_payload(self, device: Device) -> dict[str, Any]:
        document = DesiredState(device_id=device.id, revision=device.desired_revision)
        desired = device.desired
        if desired:
            mv = self.registry.resolve_version(desired["model_id"], int(desired["version"]))
            descriptor = mv.descriptor or {}
            document.deployment_id = desired.get("deployment_id")
            document.model = self.model_reference(device.id, mv, "cannot deploy it")
            document.model.sample_input = descriptor.get("sample_input")
            if desired.get("reference_dataset_id"):
                document.model.reference = reference_for(
                    self.registry, device.id, desired["reference_dataset_id"]
                )
        return document.model_dump(mode="json")

    def model_reference(self, device_id: str, mv: ModelVersion, refusal: str) -> ModelReference:
        """A model version as a signed document names it for a device: the SHA-256 *from the chain*, the
        chain record and where the device downloads it. Conflict ("... ; <refusal>") without a record."""
        sha, record = self.chain_hash(mv)
        if sha is None:
            raise Conflict(f"model {mv.model_id} v{mv.version} has no chain record; {refusal}")
        return ModelReference(
            model_id=mv.model_id,
            version=mv.version,
            kind=mv.kind,
            sha256=sha,
            chain_record=record,
            chain_tx=mv.chain_tx,
            size_bytes=mv.size_bytes,
            download=paths.MODEL_DOWNLOAD.format(
                device_id=device_id, model_id=mv.model_id, version=mv.version
            ),
        )

    def _document(self, device: Device) -> DesiredDocument:
        """The device's document for the row as read: cached while its revision and ``desired`` stay."""
        source = source_key(device.desired_revision, device.desired)
        doc = self.documents.get(device.id, source)
        if doc is None:
            payload = self._build_payload(device)
            doc = DesiredDocument(source, payload, payload_etag(payload))
            self.documents.put(device.id, doc)
        return doc

    def poll_desired_state(
        self,
        device_id: str,
        known_etags: Collection[str] = (),
        *,
        heartbeat: bool = False,
        device: Device | None = None,
    ) -> DesiredPoll:
        """One poll: the ETag, and the signed envelope unless it is one of ``known_etags`` (a 304: nothing
        is signed). A document is signed once per revision, then served from the cache. ``device``: the row
        as the caller just read it (device authentication), else it is read here (one session).
        ``heartbeat``: a poll by the device itself (``last_seen_at``, throttled, see :meth:`touch`)."""
        if device is None or device.id != device_id:
            device = self.get(device_id)
        if heartbeat:
            self.touch(device_id, device.last_seen_at)
        doc = self._document(device)
        if doc.etag in known_etags:
            return DesiredPoll(doc.etag, None)
        if doc.envelope is None:
            doc = replace(doc, envelope=self.ca.sign_document(doc.payload))
            self.documents.put(device_id, doc)
        assert doc.envelope is not None
        return DesiredPoll(doc.etag, doc.envelope)

    def signed_desired_state(self, device_id: str) -> tuple[dict[str, str], str]:
        """(signed envelope, ETag) of the device's current document (the MQTT push)."""
        poll = self.poll_desired_state(device_id)
        assert poll.envelope is not None
        return poll.envelope, poll.etag

    def desired_model(self, device_id: str, model_id: str, version: int) -> ModelVersion:
        """The version a device may download: only the one deployed to it."""
        desired = self.get(device_id).desired
        if not desired or desired.get("model_id") != model_id or int(desired.get("version", -1)) != version:
            raise Forbidden(f"model {model_id} v{version} is not deployed to device {device_id}")
        return self.registry.resolve_version(model_id, version)
