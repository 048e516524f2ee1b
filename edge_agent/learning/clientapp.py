"""The agent's one Flower-facing room: a Message-API ``ClientApp`` (flwr 1.42) over Trainer + DP + ledger.

``@app.train()`` loads the global parameters, trains on the device's own data (the arrays never leave
it) and replies with the new parameters and metrics; ``@app.evaluate()`` scores the global parameters on
the device's evaluation split. What a message carries is named once in :mod:`fedge_protocol.federation`.

**Deployment** (a ``flower-supernode`` per agent) uses the module-level :data:`app`, configured by the
SuperNode's ``--node-config``:

===============================  ==========================================================================
``fedge-data-path``              the device's ``.npz`` (``x``, ``y``, optional ``x_test``/``y_test``);
                                 required
``fedge-state-dir``              the agent's state directory; the ledgers are in ``<dir>/privacy/``; required
                                 for local DP
``fedge-dataset-id``             the ledger's name for this dataset (default: the data file's stem)
``fedge-privacy-budget``         the device's epsilon budget on this dataset, all jobs together (default
                                 0: no private round fits, so a device must opt in to a budget)
``fedge-privacy-delta``          the delta the device accounts at (default 1e-5)
``fedge-privacy-accountant``     ``prv`` (default) or ``rdp``
``fedge-require-dp``             ``true``: refuse (raise) every train request without local DP (default false)
===============================  ==========================================================================

In the **simulation** runtime, :func:`make_client_app` takes ``load_data(context)`` and
``state_dir_for(context)`` (e.g. by ``context.node_config["partition-id"]``) and a ``policy_for(context)``.

A **private round** (the train config has ``dp-target-epsilon`` > 0) runs under the dataset's ledger
lock: charge any orphaned reservation in full; take the job's noise multiplier (chosen at its first round
from the target epsilon over ``planned-rounds`` x local epochs x batches per epoch, stored in the
ledger); estimate the round's epsilon with the device's accountant; ``reserve`` it; train with DP-SGD;
``commit`` the accountant's epsilon and state. When the reservation is refused the reply is a Flower
``Error`` with code :data:`~fedge_protocol.federation.BUDGET_EXCEEDED_CODE` and a reason starting with
:data:`~fedge_protocol.federation.BUDGET_EXCEEDED_REASON` (no step was taken, nothing is sent); the
ServerApp recognises it with :func:`~fedge_protocol.federation.is_budget_refusal`, counts the device as
refused and trains without it. Any other failure raises, which Flower reports as a failed reply.

Train replies carry ``train_loss``, ``train_accuracy``, ``num-examples``, ``steps``, ``dp-epsilon`` (the
device's epsilon on this dataset after the round, 0 without DP), ``dp-delta``, ``dp-noise-multiplier`` and
``dp-budget-remaining`` (the same keys with and without DP, as Flower's strategies require).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from edge_agent.learning import dp, pate
from edge_agent.learning.audit import audit_mod
from edge_agent.learning.data import LocalData, load_local_data
from edge_agent.learning.ledger import BudgetExceeded, PrivacyLedger
from edge_agent.learning.models import resolve_factory
from edge_agent.learning.roundlock import round_lock_mod
from edge_agent.learning.secagg import secagg_mod
from edge_agent.learning.trainer import DPSettings, FitConfig, FitResult, TorchTrainer
from fedge_protocol.federation import (
    ARRAYS,
    BUDGET_EXCEEDED_CODE,
    CONFIG,
    METRICS,
    NodeKey,
    ReplyKey,
    TrainKey,
    budget_refusal_reason,
)

__all__ = [
    "NODE_DATASET_ID",
    "NODE_DATA_PATH",
    "NODE_PRIVACY_ACCOUNTANT",
    "NODE_PRIVACY_BUDGET",
    "NODE_PRIVACY_DELTA",
    "NODE_REQUIRE_DP",
    "NODE_STATE_DIR",
    "DevicePolicy",
    "app",
    "make_client_app",
    "policy_from_node_config",
]

log = logging.getLogger("fedge.agent.learning")

NODE_DATA_PATH = NodeKey.DATA_PATH
NODE_STATE_DIR = NodeKey.STATE_DIR
NODE_DATASET_ID = NodeKey.DATASET_ID
NODE_PRIVACY_BUDGET = NodeKey.PRIVACY_BUDGET
NODE_PRIVACY_DELTA = NodeKey.PRIVACY_DELTA
NODE_PRIVACY_ACCOUNTANT = NodeKey.PRIVACY_ACCOUNTANT
NODE_REQUIRE_DP = NodeKey.REQUIRE_DP
DEFAULT_MODEL = "digits-mlp"


class RoundRefused(RuntimeError):
    """A train request the device will not run (it raises; Flower replies with a failure)."""


@dataclass(frozen=True)
class DevicePolicy:
    """What the device allows on one dataset: its own privacy budget and accounting."""

    dataset_id: str
    budget_epsilon: float = 0.0
    delta: float = 1e-5
    accountant: str = "prv"
    require_dp: bool = False


def _truthy(value: object) -> bool:
    return value is True or str(value).strip().lower() in ("1", "true", "yes", "on")


def _node_value(context: Context, key: str) -> Any:
    if key not in context.node_config:
        raise RoundRefused(f"the SuperNode's --node-config lacks {key!r}")
    return context.node_config[key]


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RoundRefused(f"{key!r} must be a number, got {value!r}")
    try:
        return float(value)
    except ValueError as exc:
        raise RoundRefused(f"{key!r} must be a number, got {value!r}") from exc


def _whole(value: object, key: str) -> int:
    number = _number(value, key)
    if number != int(number):
        raise RoundRefused(f"{key!r} must be a whole number, got {value!r}")
    return int(number)


def policy_from_node_config(context: Context) -> DevicePolicy:
    cfg = context.node_config
    dataset = str(cfg.get(NODE_DATASET_ID, "") or Path(str(cfg.get(NODE_DATA_PATH, "dataset"))).stem)
    return DevicePolicy(
        dataset_id=dataset,
        budget_epsilon=_number(cfg.get(NODE_PRIVACY_BUDGET, 0.0), NODE_PRIVACY_BUDGET),
        delta=_number(cfg.get(NODE_PRIVACY_DELTA, 1e-5), NODE_PRIVACY_DELTA),
        accountant=str(cfg.get(NODE_PRIVACY_ACCOUNTANT, "prv")),
        require_dp=_truthy(cfg.get(NODE_REQUIRE_DP, False)),
    )


def _data_from_node_config(context: Context) -> LocalData:
    return load_local_data(str(_node_value(context, NODE_DATA_PATH)))


def _state_dir_from_node_config(context: Context) -> Path:
    return Path(str(_node_value(context, NODE_STATE_DIR)))


def _params(record: ArrayRecord) -> dict[str, np.ndarray[Any, Any]]:
    return {name: array.numpy() for name, array in record.items()}


def _seed(base: int, *parts: int) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in (base, *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _ledger(state_dir: Path, policy: DevicePolicy) -> PrivacyLedger:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", policy.dataset_id) or "dataset"
    return PrivacyLedger(
        state_dir / "privacy" / f"{safe}.json",
        budget_epsilon=policy.budget_epsilon,
        delta=policy.delta,
        accountant=policy.accountant,
        dataset=policy.dataset_id,
    )


def _charge_orphans(ledger: PrivacyLedger) -> None:
    """Rounds that reserved and then crashed may have trained: charge their planned steps in full."""
    for orphan in ledger.orphans():
        state = ledger.accountant_state
        epsilon = ledger.spent
        if orphan.planned is not None:
            epsilon, state = dp.epsilon_after(state, ledger.delta, *orphan.planned, ledger.accountant)
        log.warning(
            "charging round %s of job %s in full: it reserved budget and never committed",
            orphan.round,
            orphan.job,
        )
        ledger.commit(orphan.job, orphan.round, epsilon=epsilon, accountant_state=state or {}, orphaned=True)


def private_fit(
    trainer: TorchTrainer,
    ledger: PrivacyLedger,
    job: str,
    server_round: int,
    params: Mapping[str, np.ndarray[Any, Any]],
    fit: FitConfig,
    *,
    target_epsilon: float,
    planned_rounds: int,
    max_grad_norm: float,
) -> tuple[FitResult, float]:
    """One DP-SGD round paid from the device's ledger: the fit and the device's epsilon after it.
    Raises :class:`BudgetExceeded` before any step when the device cannot afford the round."""
    trainer.check_params(params)  # a bad global model must not leave a reservation behind
    with ledger.lock():
        _charge_orphans(ledger)
        sample_rate, steps = dp.sample_rate_and_steps(trainer.num_examples, fit.batch_size, fit.epochs)
        record = ledger.job(job)
        if "noise_multiplier" in record:
            sigma = float(record["noise_multiplier"])
        else:
            sigma = dp.noise_multiplier_for(
                target_epsilon, ledger.delta, sample_rate, steps * planned_rounds, ledger.accountant
            )
            plan = {
                "target_epsilon": target_epsilon,
                "planned_rounds": planned_rounds,
                "sample_rate": sample_rate,
                "steps_per_round": steps,
                "max_grad_norm": max_grad_norm,
            }
            ledger.set_noise_plan(job, sigma, plan)
        after, expected = dp.epsilon_after(
            ledger.accountant_state, ledger.delta, sigma, sample_rate, steps, ledger.accountant
        )
        ledger.reserve(job, server_round, max(after - ledger.spent, 0.0), planned=(sigma, sample_rate, steps))
        settings = DPSettings(
            noise_multiplier=sigma,
            max_grad_norm=max_grad_norm,
            delta=ledger.delta,
            accountant=ledger.accountant,
            accountant_state=ledger.accountant_state,
        )
        # a crash from here on leaves the reservation open: the next round charges it in full
        result = trainer.fit(params, replace(fit, dp=settings))
        privacy = result.privacy
        assert privacy is not None
        # the steps taken are the planned ones (a fixed number of batches), so is the epsilon
        same = privacy.accountant_state.get("history") == [list(e) for e in expected["history"]]
        epsilon = after if same else privacy.epsilon
        ledger.commit(
            job, server_round, epsilon=epsilon, accountant_state=privacy.accountant_state, steps=privacy.steps
        )
        return result, epsilon


class _Config:
    """Typed reads of the train/evaluate ConfigRecord (a bad value refuses the round)."""

    def __init__(self, msg: Message) -> None:
        records = msg.content.config_records
        self.record: ConfigRecord = records[CONFIG] if CONFIG in records else ConfigRecord()

    def __contains__(self, key: str) -> bool:
        return key in self.record

    def number(self, key: str, default: float) -> float:
        return _number(self.record.get(key, default), key)

    def whole(self, key: str, default: int) -> int:
        return _whole(self.record.get(key, default), key)

    def text(self, key: str, default: str) -> str:
        value = self.record.get(key, default)
        if not isinstance(value, str):
            raise RoundRefused(f"{key!r} must be text, got {value!r}")
        return value


def _arrays(msg: Message) -> dict[str, np.ndarray[Any, Any]]:
    records = msg.content.array_records
    if ARRAYS not in records:
        raise RoundRefused(f"the message carries no {ARRAYS!r} ArrayRecord")
    return _params(records[ARRAYS])


def make_client_app(
    load_data: Callable[[Context], LocalData] = _data_from_node_config,
    state_dir_for: Callable[[Context], Path] = _state_dir_from_node_config,
    policy_for: Callable[[Context], DevicePolicy] = policy_from_node_config,
    mods: list[Mod] | None = None,
) -> ClientApp:
    """A ClientApp reading the device's data, state directory and policy through the given functions;
    ``mods`` wrap every handler (Flower mods: ``(msg, context, call_next) -> Message``)."""
    # HE: decrypt the encrypted global model coming in, encrypt the train reply going out (after local DP)
    from edge_agent.learning.he import make_he_mod, register_he

    app = ClientApp(mods=[*(mods or []), make_he_mod(state_dir_for)])
    register_he(app, state_dir_for)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        cfg = _Config(msg)
        server_round = cfg.whole(TrainKey.SERVER_ROUND, 0)
        job = cfg.text(TrainKey.JOB_ID, "") or f"flwr-run-{context.run_id}"
        data = load_data(context)
        trainer = TorchTrainer(resolve_factory(cfg.text(TrainKey.MODEL, DEFAULT_MODEL)), data)
        fit = FitConfig(
            epochs=cfg.whole(TrainKey.LOCAL_EPOCHS, 1),
            batch_size=cfg.whole(TrainKey.BATCH_SIZE, 32),
            lr=cfg.number(TrainKey.LR, 0.1),
            momentum=cfg.number(TrainKey.MOMENTUM, 0.0),
            proximal_mu=cfg.number(TrainKey.PROXIMAL_MU, 0.0),
            seed=_seed(cfg.whole(TrainKey.SEED, 0), server_round, context.node_id),
        )
        params = _arrays(msg)
        target = cfg.number(TrainKey.DP_TARGET_EPSILON, 0.0)
        policy = policy_for(context)
        epsilon = remaining = sigma = 0.0
        if target > 0:
            delta = cfg.number(TrainKey.DP_DELTA, policy.delta)
            if delta != policy.delta:
                raise RoundRefused(f"the job asks for delta {delta}; this device accounts at {policy.delta}")
            ledger = _ledger(state_dir_for(context), policy)
            try:
                result, epsilon = private_fit(
                    trainer,
                    ledger,
                    job,
                    server_round,
                    params,
                    fit,
                    target_epsilon=target,
                    planned_rounds=cfg.whole(TrainKey.PLANNED_ROUNDS, max(server_round, 1)),
                    max_grad_norm=cfg.number(TrainKey.DP_MAX_GRAD_NORM, 1.0),
                )
            except BudgetExceeded as exc:
                log.warning("refusing round %s of job %s: %s", server_round, job, exc)
                return Message(Error(BUDGET_EXCEEDED_CODE, budget_refusal_reason(str(exc))), reply_to=msg)
            assert result.privacy is not None
            sigma, remaining = result.privacy.noise_multiplier, ledger.remaining()
        elif policy.require_dp:
            raise RoundRefused(f"this device trains {policy.dataset_id!r} only with local DP")
        else:
            result = trainer.fit(params, fit)
        metrics = MetricRecord(
            {
                ReplyKey.TRAIN_LOSS: float(result.metrics["train_loss"]),
                ReplyKey.TRAIN_ACCURACY: float(result.metrics["train_accuracy"]),
                ReplyKey.NUM_EXAMPLES: result.num_examples,
                ReplyKey.STEPS: int(result.metrics["steps"]),
                ReplyKey.DP_EPSILON: float(epsilon),
                ReplyKey.DP_DELTA: float(policy.delta if target > 0 else 0.0),
                ReplyKey.DP_NOISE_MULTIPLIER: float(sigma),
                ReplyKey.DP_BUDGET_REMAINING: float(remaining),
            }
        )
        arrays = ArrayRecord({name: Array(np.asarray(value)) for name, value in result.params.items()})
        return Message(RecordDict({ARRAYS: arrays, METRICS: metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        cfg = _Config(msg)
        trainer = TorchTrainer(resolve_factory(cfg.text(TrainKey.MODEL, DEFAULT_MODEL)), load_data(context))
        result = trainer.evaluate(_arrays(msg))
        metrics = MetricRecord(
            {
                ReplyKey.EVAL_LOSS: result.loss,
                ReplyKey.EVAL_ACCURACY: result.accuracy,
                ReplyKey.NUM_EXAMPLES: result.num_examples,
            }
        )
        return Message(RecordDict({METRICS: metrics}), reply_to=msg)

    # FedPATE vote requests (edge_agent/learning/pate.py): teachers on the device's data, paid from its ledger
    app.query()(pate.make_query_handler(load_data, lambda ctx: _ledger(state_dir_for(ctx), policy_for(ctx))))

    return app


#: the deployment ClientApp (``edge_agent.learning.clientapp:app``), configured by --node-config;
#: every message holds the agent's update lock (no model swap mid-round; edge_agent/learning/roundlock.py);
#: SecAgg+ train messages go through Flower's secaggplus_mod (edge_agent/learning/secagg.py)
app = make_client_app(mods=[round_lock_mod, audit_mod, secagg_mod])
