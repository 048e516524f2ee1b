"""The controller's device-facing HTTP routes (templates for the controller, formatted by the agent)."""

from __future__ import annotations

ENROLLMENTS = "/v1/enrollments"
DESIRED_STATE = "/v1/devices/{device_id}/desired-state"
STATUS = "/v1/devices/{device_id}/status"
TELEMETRY = "/v1/devices/{device_id}/telemetry"
COMMANDS = "/v1/devices/{device_id}/commands"
PENDING_COMMANDS = "/v1/devices/{device_id}/commands/pending"
COMMAND = "/v1/devices/{device_id}/commands/{command_id}"
SIGNED_COMMAND = "/v1/devices/{device_id}/commands/{command_id}/signed"
MODEL_DOWNLOAD = "/v1/devices/{device_id}/models/{model_id}/versions/{version}"
DATASET_DOWNLOAD = "/v1/devices/{device_id}/datasets/{dataset_id}"
"""A drift reference data set named by the device's desired state."""
CERTIFICATE = "/v1/devices/{device_id}/certificate"
"""Certificate renewal: a CSR signed with the device's key for a new certificate (the device itself)."""
EVENTS = "/v1/devices/{device_id}/events"
"""Device events (drift alarms), stored from telemetry records of ``EVENT_TYPES``."""
