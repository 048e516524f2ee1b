"""Fleet devices: enrollment tokens, enrollment (CSR -> certificate), listing, revocation, and the
device-facing routes (signed desired state with ETag, status reports, model download)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from controller.api.deps import (
    BrokerUrlDep,
    CallingDevice,
    CommandsDep,
    DevicePath,
    DevicesDep,
    FleetCaller,
    Offset,
    Operator,
    OwnDevicePath,
    RegistryDep,
    RolloutsDep,
    SettingsDep,
    StoreDep,
)
from controller.api.downloads import artifact_response
from controller.db.models import Device, utcnow
from controller.errors import Forbidden
from controller.schemas.devices import DeviceOut, EnrollmentTokenOut, EnrollmentTokenRequest
from controller.security.principal import Role
from fedge_protocol import DEVICE_AUDIENCE, Enrollment, EnrollRequest, StatusReport, paths
from fedge_protocol.lifecycle import CertificateRenewal, RenewedCertificate

router = APIRouter(tags=["fleet"])
DEFAULT_POLL_SECONDS = 10.0


def device_out(d: Device, poll_seconds: float = DEFAULT_POLL_SECONDS) -> DeviceOut:
    reported = d.reported or {}
    online = (
        d.status == "active"
        and d.last_seen_at is not None
        and (utcnow() - d.last_seen_at).total_seconds() <= 3 * poll_seconds
    )
    return DeviceOut(
        id=d.id,
        status=d.status,
        online=online,
        labels=d.labels,
        facts=d.facts,
        desired=d.desired,
        reported=d.reported,
        model_id=reported.get("active_model_id"),
        model_version=reported.get("active_version"),
        last_error=d.last_error,
        enrolled_at=d.enrolled_at,
        revoked_at=d.revoked_at,
        last_seen_at=d.last_seen_at,
    )


@router.post("/v1/enrollment-tokens", status_code=201, response_model=EnrollmentTokenOut)
def create_enrollment_token(
    body: EnrollmentTokenRequest, devices: DevicesDep, admin: Operator
) -> EnrollmentTokenOut:
    """Mint a one-time, expiring enrollment token (admin)."""
    token, expires = devices.mint_enrollment_token(body.labels, body.ttl_seconds, admin.subject)
    return EnrollmentTokenOut(token=token, expires_at=expires)


@router.post(
    paths.ENROLLMENTS,
    status_code=201,
    response_model=Enrollment,
    responses={401: {"description": "unknown, used or expired enrollment token"}},
)
def enroll(
    body: EnrollRequest,
    request: Request,
    devices: DevicesDep,
    settings: SettingsDep,
    broker_url: BrokerUrlDep,
) -> Enrollment:
    """Exchange a one-time token and a CSR for a device certificate. Unknown, replayed or expired
    tokens are 401."""
    done = devices.enroll(body.token, body.csr, body.labels, body.facts)
    api_url = settings.public_url or str(request.base_url).rstrip("/")
    return Enrollment(
        device_id=done.device_id,
        certificate=done.certificate_pem,
        ca_certificate=devices.ca.certificate_pem,
        api_url=api_url,
        broker_url=broker_url,
        audience=DEVICE_AUDIENCE,
    )


@router.get("/v1/devices", response_model=list[DeviceOut])
def list_devices(
    devices: DevicesDep,
    _caller: Operator,
    limit: Annotated[int | None, Query(ge=1, le=10000, description="at most this many (default all)")] = None,
    offset: Offset = 0,
) -> list[DeviceOut]:
    """Devices with online/offline (last seen within 3 poll intervals), model and last error, oldest
    enrolled first: all of them, or a page with ``limit``/``offset`` (a large fleet's list is best paged)."""
    return [device_out(d) for d in devices.list(limit=limit, offset=offset)]


@router.get("/v1/devices/{device_id}", response_model=DeviceOut)
def get_device(device_id: DevicePath, devices: DevicesDep) -> DeviceOut:
    """One device (a device may read only itself)."""
    return device_out(devices.get(device_id))


@router.delete("/v1/devices/{device_id}", status_code=204, response_class=Response)
def revoke_device(device_id: str, devices: DevicesDep, _admin: Operator) -> Response:
    """Revoke a device: its signed tokens are refused from the next request on, and the broker refuses
    its credential and closes its connection."""
    devices.revoke(device_id)
    return Response(status_code=204)


@router.get(
    paths.DESIRED_STATE,
    responses={304: {"description": "unchanged since the ETag in If-None-Match"}},
)
def desired_state(
    device_id: DevicePath,
    devices: DevicesDep,
    caller: FleetCaller,
    calling: CallingDevice,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The device's desired state, signed by the device CA (``{alg, payload, signature}``); ETag/304.
    A 304 signs nothing and, for the device itself, reuses the row its authentication read."""
    known = [t.strip() for t in if_none_match.split(",")] if if_none_match else []
    poll = devices.poll_desired_state(device_id, known, heartbeat=caller.role is Role.DEVICE, device=calling)
    headers = {"ETag": poll.etag, "Cache-Control": "private, no-cache"}
    if poll.envelope is None:
        return Response(status_code=304, headers=headers)
    import json

    return Response(json.dumps(poll.envelope), media_type="application/json", headers=headers)


@router.post(paths.STATUS, status_code=204, response_class=Response)
def report_status(device_id: OwnDevicePath, body: StatusReport, rollouts: RolloutsDep) -> Response:
    """A device reports the outcome of applying its desired state (drives rollouts)."""
    rollouts.report(device_id, body.model_dump())
    return Response(status_code=204)


@router.post(
    paths.CERTIFICATE,
    status_code=201,
    response_model=RenewedCertificate,
    responses={
        401: {"description": "revoked device (problem type device-revoked) or expired certificate"},
        422: {"description": "malformed CSR, or its key is not the device's key"},
    },
)
def renew_certificate(
    device_id: OwnDevicePath, body: CertificateRenewal, devices: DevicesDep
) -> RenewedCertificate:
    """A device renews its certificate before it expires: a CSR signed with its own key (the key stays;
    a foreign key is refused) for a new certificate with a new serial and validity."""
    return devices.renew_certificate(device_id, body.csr)


@router.get(
    paths.MODEL_DOWNLOAD,
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        307: {
            "description": "S3 store: a short-lived presigned URL in Location (the bytes come straight "
            "from storage; the device checks them against the signed chain hash)"
        },
    },
)
async def download_deployed_model(
    device_id: DevicePath,
    model_id: str,
    version: int,
    request: Request,
    devices: DevicesDep,
    commands: CommandsDep,
    registry: RegistryDep,
    store: StoreDep,
) -> Response:
    """The artifact deployed to this device, or named by a command for it (a grid policy to run):
    with the local store integrity-checked against the chain while streamed; with S3 a 307 to a
    presigned URL (``FEDGE_S3_PRESIGNED_DOWNLOADS``), the device checking the SHA-256 itself."""
    try:
        mv = await run_in_threadpool(devices.desired_model, device_id, model_id, version)
    except Forbidden:
        if not await run_in_threadpool(commands.names_version, device_id, model_id, version):
            raise Forbidden(
                f"model {model_id} v{version} is neither deployed to device {device_id} nor named by a "
                "command for it"
            ) from None
        mv = await run_in_threadpool(registry.resolve_version, model_id, version)
    chain_sha, _ = await run_in_threadpool(devices.chain_hash, mv)
    assert mv.sha256
    return artifact_response(
        request,
        lambda: registry.verified_chunks(mv.bucket, mv.object_key, chain_sha, f"model {model_id} v{version}"),
        sha256=mv.sha256,
        md5=mv.md5,
        size=mv.size_bytes,
        filename=mv.filename or "model.onnx",
        content_type=mv.content_type,
        extra_headers={"X-Model-Version": str(mv.version), "X-Model-Kind": mv.kind},
        redirect=lambda: store.presigned_get(mv.bucket, mv.object_key),
    )
