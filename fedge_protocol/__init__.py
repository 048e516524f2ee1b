"""The controller<->device contract, defined once: MQTT topics, the signing envelope and canonical JSON,
the documents both ends exchange, status words and device-facing HTTP routes.

pydantic + stdlib only; installed with the base distribution and imported by the controller and the agent
alike. Nothing protocol-shaped is spelled anywhere else.
"""

from __future__ import annotations

from fedge_protocol import paths
from fedge_protocol.documents import (
    DEVICE_AUDIENCE,
    EVENT_TYPES,
    MAX_DEVICE_TOKEN_SECONDS,
    Command,
    CommandAck,
    DatasetReference,
    DesiredState,
    DriftDetector,
    DriftEvent,
    Enrollment,
    EnrollRequest,
    ModelReference,
    MonitorSummary,
    OutboxMessage,
    StatusReport,
    TelemetryPost,
    TelemetryType,
)
from fedge_protocol.envelope import (
    ALGORITHM,
    DocumentType,
    MalformedEnvelope,
    b64url,
    b64url_decode,
    canonical_json,
    envelope,
    open_envelope,
    signing_input,
)
from fedge_protocol.status import CommandKind, CommandState, DeploymentStatus
from fedge_protocol.topics import (
    DEVICE_READ,
    DEVICE_WRITE,
    PREFIX,
    Leaf,
    device_acl_pattern,
    device_may,
    device_topic,
    every_device,
    split_device_topic,
)

__all__ = [
    "ALGORITHM",
    "DEVICE_AUDIENCE",
    "DEVICE_READ",
    "DEVICE_WRITE",
    "EVENT_TYPES",
    "MAX_DEVICE_TOKEN_SECONDS",
    "PREFIX",
    "Command",
    "CommandAck",
    "CommandKind",
    "CommandState",
    "DatasetReference",
    "DeploymentStatus",
    "DesiredState",
    "DocumentType",
    "DriftDetector",
    "DriftEvent",
    "EnrollRequest",
    "Enrollment",
    "Leaf",
    "MalformedEnvelope",
    "ModelReference",
    "MonitorSummary",
    "OutboxMessage",
    "StatusReport",
    "TelemetryPost",
    "TelemetryType",
    "b64url",
    "b64url_decode",
    "canonical_json",
    "device_acl_pattern",
    "device_may",
    "device_topic",
    "envelope",
    "every_device",
    "open_envelope",
    "paths",
    "signing_input",
    "split_device_topic",
]
