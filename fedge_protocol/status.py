"""Status words shared by the controller and the agent (one spelling each)."""

from __future__ import annotations

from enum import StrEnum


class DeploymentStatus(StrEnum):
    """What a device reports about applying its desired state (the Greengrass status enum)."""

    APPLYING = "applying"
    SUCCEEDED = "succeeded"
    FAILED_ROLLED_BACK = "failed-rolled-back"
    FAILED_UNABLE_TO_ROLLBACK = "failed-unable-to-rollback"
    REJECTED = "rejected"

    @property
    def failed(self) -> bool:
        return self in FAILED

    @property
    def terminal(self) -> bool:
        return self is not DeploymentStatus.APPLYING


FAILED: frozenset[DeploymentStatus] = frozenset(
    {
        DeploymentStatus.FAILED_ROLLED_BACK,
        DeploymentStatus.FAILED_UNABLE_TO_ROLLBACK,
        DeploymentStatus.REJECTED,
    }
)


class CommandState(StrEnum):
    """The life of a device command: stored ``queued``; the device acknowledges ``running``, then
    ``succeeded`` or ``failed`` (as telemetry records of type ``command``)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (CommandState.SUCCEEDED, CommandState.FAILED)


class CommandKind(StrEnum):
    """What a device command asks for."""

    GRID_RUN = "grid-run"
    FL_JOIN = "fl-join"
    """Join a federated-learning job with a SuperNode (params: ``fedge_protocol.fl_commands.FlJoin``)."""
    FL_LEAVE = "fl-leave"
    """Leave a federated-learning job (params: ``fedge_protocol.fl_commands.FlLeave``); the job's fl-join is
    then acknowledged ``succeeded`` and the SuperNode stops once no joined job is left."""
