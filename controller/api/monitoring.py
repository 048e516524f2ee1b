"""Monitoring on the devices: their events (drift alarms, newest first) and the drift reference data set
a device's desired state names (streamed, integrity-checked against the dataset's chain record)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from controller.api.deps import CommandsDep, DevicePath, Offset, RegistryDep
from controller.api.downloads import artifact_response
from controller.db.models import DeviceEvent
from controller.errors import Conflict, Forbidden
from controller.fleet.commands import Commands
from controller.fleet.device_events import DeviceEvents
from controller.schemas.events import DeviceEventOut, DeviceEventPage
from fedge_protocol import paths

router = APIRouter(tags=["fleet"])


def _events(commands: CommandsDep) -> DeviceEvents:
    return DeviceEvents(commands.sessions, commands.fleet)


EventsDep = Annotated[DeviceEvents, Depends(_events)]


def event_out(e: DeviceEvent) -> DeviceEventOut:
    return DeviceEventOut(
        id=e.id,
        device_id=e.device_id,
        seq=e.seq,
        type=e.type,
        detector=e.detector,
        model_id=e.model_id,
        version=e.version,
        occurred_at=e.occurred_at,
        received_at=e.received_at,
        body=e.body,
    )


@router.get(paths.EVENTS, response_model=DeviceEventPage)
def list_events(
    device_id: DevicePath,
    events: EventsDep,
    type: Annotated[str | None, Query(max_length=64, description="e.g. monitor.drift")] = None,
    model_id: Annotated[str | None, Query(max_length=36)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> DeviceEventPage:
    """A device's events (drift alarms), newest first; 404 for an unknown device."""
    rows, total = events.page(device_id, kind=type, model_id=model_id, limit=limit, offset=offset)
    return DeviceEventPage(items=[event_out(e) for e in rows], total=total, limit=limit, offset=offset)


def _reference_of(commands: Commands, device_id: str, dataset_id: str) -> str:
    desired = commands.fleet.get(device_id).desired or {}
    if desired.get("reference_dataset_id") != dataset_id:
        raise Forbidden(f"dataset {dataset_id} is not the drift reference deployed to device {device_id}")
    return dataset_id


@router.get(
    paths.DATASET_DOWNLOAD,
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def download_reference_dataset(
    device_id: DevicePath,
    dataset_id: str,
    request: Request,
    commands: CommandsDep,
    registry: RegistryDep,
) -> Response:
    """The drift reference data set the device's desired state names (403 for any other), checked
    against its chain record while streamed."""
    await run_in_threadpool(_reference_of, commands, device_id, dataset_id)
    ds = await run_in_threadpool(registry.get_dataset, dataset_id)
    chain_sha, _ = await run_in_threadpool(registry.chain_dataset_hash, ds)
    if chain_sha is None or not ds.sha256:
        raise Conflict(f"dataset {dataset_id} has no chain record")
    return artifact_response(
        request,
        lambda: registry.verified_chunks(ds.bucket, ds.object_key, chain_sha, f"dataset {ds.id}"),
        sha256=ds.sha256,
        md5=ds.md5,
        size=ds.size_bytes,
        filename=ds.filename or "reference.npz",
        content_type=ds.content_type,
    )
