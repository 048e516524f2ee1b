"""The pure planner: ``plan(current, desired)`` -> typed steps. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, order=True)
class ModelRef:
    """One model version, named by the hash the chain holds for it."""

    model_id: str
    version: int
    sha256: str


@dataclass(frozen=True)
class Current:
    """What the device has: the active slot, the previous-success slot, the last failure, every slot."""

    active: ModelRef | None = None
    previous: ModelRef | None = None
    failed: ModelRef | None = None
    installed: frozenset[ModelRef] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Desired:
    """What the controller wants (from a verified, signed document)."""

    model: ModelRef | None
    download: str | None = None
    sample_input: Any = None
    deployment_id: str | None = None
    revision: int = 0

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Desired:
        m = payload.get("model")
        if not m:
            return cls(
                None, deployment_id=payload.get("deployment_id"), revision=int(payload.get("revision", 0))
            )
        return cls(
            ModelRef(str(m["model_id"]), int(m["version"]), str(m["sha256"])),
            download=m.get("download"),
            sample_input=m.get("sample_input"),
            deployment_id=payload.get("deployment_id"),
            revision=int(payload.get("revision", 0)),
        )


@dataclass(frozen=True)
class Fetch:
    ref: ModelRef
    url: str


@dataclass(frozen=True)
class Verify:
    ref: ModelRef


@dataclass(frozen=True)
class Activate:
    ref: ModelRef


@dataclass(frozen=True)
class HealthCheck:
    ref: ModelRef
    sample_input: Any = None


@dataclass(frozen=True)
class Remove:
    ref: ModelRef


Step = Fetch | Verify | Activate | HealthCheck | Remove


def plan(current: Current, desired: Desired) -> list[Step]:
    """The steps that take ``current`` to ``desired``; empty when there is nothing to do.

    A version that failed on this device is not retried until the desired state names another one.
    A version still installed (e.g. the previous slot, on rollback) is verified again, not fetched.
    Old slots other than the new and the outgoing one are removed after the new one is healthy.
    """
    ref = desired.model
    if ref is None or ref == current.active or ref == current.failed:
        return []
    steps: list[Step] = []
    if ref not in current.installed:
        if not desired.download:
            raise ValueError(f"desired model {ref.model_id} v{ref.version} has no download location")
        steps.append(Fetch(ref, desired.download))
    steps += [Verify(ref), Activate(ref), HealthCheck(ref, desired.sample_input)]
    keep = {ref, current.active}
    steps += [Remove(r) for r in sorted(current.installed) if r not in keep]
    return steps
