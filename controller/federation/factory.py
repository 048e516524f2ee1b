"""Pick the federated-learning engine from settings (``FEDGE_FL_ENGINE``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.config import ControllerSettings
from controller.federation.base import EngineUnavailable, FederationEngine

if TYPE_CHECKING:
    from controller.fleet.ca import DeviceCA

ENGINE_NAMES = ("flower", "nvflare")
"""Engines this controller can run (a job picks one with ``engine``; FEDGE_FL_ENGINE=none: FL is off)."""


def make_federation_engine(
    settings: ControllerSettings, ca: DeviceCA | None = None, name: str | None = None
) -> FederationEngine:
    """The engine ``name`` (default ``settings.fl_engine``), under ``<data_dir>/federation``. ``ca``: the
    device CA (loaded from ``<data_dir>/fleet`` when not given) that signs the federation's server
    certificate."""
    if settings.fl_engine == "none":
        raise EngineUnavailable(f"federated learning is off (FEDGE_FL_ENGINE={settings.fl_engine})")
    name = name or settings.fl_engine
    if name == "nvflare":
        from controller.federation.nvflare import NvflareEngine, missing_extra

        reason = missing_extra()
        if reason is not None:
            raise EngineUnavailable(reason)
        return NvflareEngine(settings.data_dir / "federation" / "nvflare")
    if name != "flower":
        known = ", ".join(ENGINE_NAMES)
        raise EngineUnavailable(f"unknown federated-learning engine {name!r} (known: {known})")
    try:
        from controller.federation.flower import FlowerEngine
    except ImportError as exc:
        raise EngineUnavailable(
            f"the Flower engine needs flwr and torch: pip install 'fedge[controller,train]' ({exc})"
        ) from exc
    if ca is None:
        from controller.fleet.ca import DeviceCA

        ca = DeviceCA.load_or_create(settings.data_dir / "fleet")
    superlink_ca = settings.fl_superlink_ca.read_bytes() if settings.fl_superlink_ca else None
    return FlowerEngine(
        settings.data_dir / "federation",
        ca,
        superlink_address=settings.fl_superlink_address,
        superlink_ca=superlink_ca,
        superlink_port=settings.fl_superlink_port,
        fleet_host=settings.fl_fleet_host,
        fleet_port=settings.fl_fleet_port,
        fleet_public_host=settings.fl_fleet_public_host,
        start_timeout=settings.fl_superlink_start_seconds,
    )
