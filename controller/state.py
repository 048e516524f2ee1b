"""Everything a running controller holds: settings, database, backends, registry."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from controller.config import ControllerSettings
from controller.db.session import make_engine, migrate, session_factory
from controller.registry.service import Buckets, Registry
from controller.security import tokens
from controller.security.oidc import OidcVerifier
from controller.storage import ArtifactStore, make_store

if TYPE_CHECKING:
    from controller.chain.base import ChainBackend
    from controller.federation.manager import FlJobManager
    from controller.fleet.broker.messaging import FleetMessaging
    from controller.fleet.commands import Commands
    from controller.fleet.deployments import Rollouts
    from controller.fleet.devices import Fleet
    from controller.fleet.drift_policy import DriftLoop
    from controller.training.manager import JobManager

log = logging.getLogger("fedge.controller")


@dataclass
class ControllerState:
    """The services container, built once per process by ``build_state``. Every service is required:
    routes receive single services through the dependencies in :mod:`controller.api.deps`."""

    settings: ControllerSettings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ArtifactStore
    registry: Registry
    chain: ChainBackend
    fleet: Fleet
    rollouts: Rollouts
    commands: Commands
    jobs: JobManager
    federation: FlJobManager
    drift: DriftLoop
    """Drift policies: acts on drift events (notify, retrain -> translate -> canary) on its own thread."""
    messaging: FleetMessaging | None = None
    """MQTT push of desired states and commands; None when the controller runs without a broker."""
    oidc: OidcVerifier | None = None
    generated_admin_token: str | None = field(default=None, repr=False)
    owns_chain: bool = True

    @property
    def broker_url(self) -> str | None:
        """The broker address devices get at enrollment (None: HTTP polling only)."""
        return self.messaging.broker.endpoint.url if self.messaging is not None else None

    def close(self) -> None:
        if self.messaging is not None:
            self.messaging.stop()
            self.messaging = None
        self.drift.stop()
        self.rollouts.stop()
        self.jobs.stop()
        self.federation.stop()
        if self.owns_chain:
            self.chain.close()
        self.engine.dispose()


def build_state(
    settings: ControllerSettings, chain: ChainBackend | None = None, *, start_jobs: bool = True
) -> ControllerState:
    """Create the data dir, migrate the database, open backends (the chain from settings unless one is
    given), bootstrap the admin token and reconcile what a crash may have left half-written."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    owns_chain = chain is None
    if chain is None:
        from controller.chain.factory import make_chain

        chain = make_chain(settings)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    sessions = session_factory(engine)
    store = make_store(settings)
    buckets = Buckets.with_prefix(settings.bucket_prefix)
    store.ensure_bucket(buckets.datasets)
    store.ensure_bucket(buckets.models)
    store.ensure_bucket(buckets.packages)
    registry = Registry(sessions, store, buckets, chain)
    with sessions.begin() as s:
        preset = settings.admin_token.get_secret_value() if settings.admin_token else None
        generated = tokens.ensure_admin(s, preset)
    registry.reconcile(settings.pending_grace_seconds)
    oidc = (
        OidcVerifier(
            settings.oidc_issuer, settings.oidc_audience, settings.oidc_role_claim, settings.oidc_default_role
        )
        if settings.oidc_issuer
        else None
    )
    from controller.federation.manager import FlJobManager
    from controller.fleet.ca import DeviceCA
    from controller.fleet.commands import Commands
    from controller.fleet.deployments import Rollouts
    from controller.fleet.devices import Fleet
    from controller.fleet.drift_policy import DriftLoop
    from controller.training.factory import make_runner
    from controller.training.manager import JobManager

    fleet = Fleet(
        sessions,
        DeviceCA.load_or_create(settings.data_dir / "fleet", settings.device_cert_seconds),
        registry,
        last_seen_write_seconds=settings.last_seen_write_seconds,
    )
    commands = Commands(sessions, fleet, keep_per_device=settings.telemetry_keep_per_device)
    jobs = JobManager(settings, sessions, registry, make_runner(settings))
    federation = FlJobManager(settings, sessions, registry, chain, fleet, commands)
    rollouts = Rollouts(sessions, fleet)
    drift = DriftLoop(settings, sessions, registry, jobs, federation, rollouts)
    commands.on_event = drift.submit
    state = ControllerState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        store=store,
        registry=registry,
        chain=chain,
        fleet=fleet,
        rollouts=rollouts,
        commands=commands,
        jobs=jobs,
        federation=federation,
        drift=drift,
        oidc=oidc,
        generated_admin_token=generated,
        owns_chain=owns_chain,
    )
    from controller.fleet.broker.factory import make_broker
    from controller.fleet.broker.messaging import FleetMessaging

    broker = make_broker(settings, fleet)
    if broker is not None:
        state.messaging = FleetMessaging(broker, fleet, state.rollouts, state.commands)
        state.messaging.start()
    state.rollouts.start()  # times out devices that never answer a deployment
    if start_jobs:  # without workers this process only queues jobs (another replica runs them)
        state.jobs.start()
        state.federation.start()
        state.drift.start()  # acts on drift events (its actions start jobs, so only where jobs run)
    return state
