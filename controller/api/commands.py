"""Device commands (``grid-run``) and device telemetry: create, deliver (signed, HTTP poll; MQTT push is
done by the fleet messaging), acknowledge through telemetry, query status, results and telemetry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from controller.api.deps import CommandsDep, DevicePath, DevicesDep, FleetCaller, Offset, OwnDevicePath
from controller.db.models import DeviceCommand, TelemetryRecord
from controller.schemas.commands import CommandIn, CommandOut, CommandPage, TelemetryOut, TelemetryPage
from controller.security.principal import Role
from fedge_protocol import TelemetryPost, paths

router = APIRouter(tags=["fleet"])


def command_out(c: DeviceCommand) -> CommandOut:
    return CommandOut(
        id=c.id,
        device_id=c.device_id,
        kind=c.kind,
        model_id=c.model_id,
        version=c.version,
        params=c.params,
        state=c.state,
        result=c.result,
        error=c.error,
        created_by=c.created_by,
        created_at=c.created_at,
        started_at=c.started_at,
        finished_at=c.finished_at,
    )


def telemetry_out(t: TelemetryRecord) -> TelemetryOut:
    return TelemetryOut(
        seq=t.seq, type=t.type, command_id=t.command_id, body=t.body, received_at=t.received_at
    )


@router.post(paths.COMMANDS, status_code=201, response_model=CommandOut)
def create_command(
    device_id: DevicePath, body: CommandIn, commands: CommandsDep, caller: FleetCaller
) -> CommandOut:
    """Queue a command for a device (developer), pushed over MQTT and served to its polls. A device may
    ask for one for itself (``fedge-agent grid run``): it is stored ``running`` and run by that process."""
    days = body.days if isinstance(body.days, str) else ",".join(str(d) for d in body.days)
    command = commands.create(
        device_id,
        body.kind,
        body.model_id,
        body.version,
        days,
        caller.subject,
        start_now=caller.role is Role.DEVICE,
    )
    return command_out(command)


@router.get(paths.COMMANDS, response_model=CommandPage)
def list_commands(
    device_id: DevicePath,
    commands: CommandsDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> CommandPage:
    """A device's commands, newest first."""
    rows, total = commands.for_device(device_id, limit, offset)
    return CommandPage(items=[command_out(c) for c in rows], total=total, limit=limit, offset=offset)


@router.get(paths.PENDING_COMMANDS, response_model=list[dict[str, str]])
def pending_commands(device_id: OwnDevicePath, commands: CommandsDep) -> list[dict[str, str]]:
    """The device's unacknowledged commands, oldest first, each a signed envelope ``{alg, payload,
    signature}`` (device CA, command context)."""
    return [commands.signed(c) for c in commands.pending(device_id)]


@router.get(paths.COMMAND, response_model=CommandOut)
def get_command(device_id: DevicePath, command_id: str, commands: CommandsDep) -> CommandOut:
    """One command: state (queued, running, succeeded, failed), result summary, error."""
    return command_out(commands.get(device_id, command_id))


@router.get(paths.SIGNED_COMMAND, response_model=dict[str, str])
def signed_command(device_id: OwnDevicePath, command_id: str, commands: CommandsDep) -> dict[str, str]:
    """One command as the device verifies it (signed envelope)."""
    return commands.signed(commands.get(device_id, command_id))


@router.post(paths.TELEMETRY, status_code=204, response_class=Response)
def post_telemetry(
    device_id: OwnDevicePath, body: TelemetryPost, commands: CommandsDep, devices: DevicesDep
) -> Response:
    """One outbox record over HTTP (when the broker is out of reach); stored once per sequence number."""
    commands.record_telemetry(device_id, body.seq, body.body)
    devices.touch(device_id)
    return Response(status_code=204)


@router.get(paths.TELEMETRY, response_model=TelemetryPage)
def list_telemetry(
    device_id: DevicePath,
    commands: CommandsDep,
    command_id: str | None = None,
    type: Annotated[str | None, Query(max_length=64, description="e.g. grid.day, command")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> TelemetryPage:
    """Stored telemetry of a device in outbox order, optionally of one command or one type."""
    rows, total = commands.telemetry(device_id, command_id=command_id, kind=type, limit=limit, offset=offset)
    return TelemetryPage(items=[telemetry_out(t) for t in rows], total=total, limit=limit, offset=offset)
