"""HE aggregation end to end in one process: the fedge ServerApp's ``run_federation`` with ``he`` on a
grid that hands every message to the real fedge ClientApp of each node (no runtime, real TenSEAL).

What the controller side ever holds is recorded (every message it sends and receives): it can decrypt
none of it; the HE model equals plaintext FedAvg within CKKS error; local DP composes; masking hides a
single update from a participant who holds the key set; a masked round with a dropout keeps the model."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal as ts
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from controller.federation.he import HeAggregation, HeSetupError, check_he_config
from controller.federation.serverapp import FederationConfig, ListReporter, run_federation
from edge_agent.learning.clientapp import DevicePolicy, make_client_app
from edge_agent.learning.data import LocalData, load_local_data
from fedge_common import he
from fedge_common.sealing import SealError
from fedge_protocol.federation import ARRAYS, CONFIG
from fedge_protocol.he import CHUNK_PREFIX, HeAction, HeKey
from simulator.fl.inprocess import InProcessGrid as LocalGrid
from tests.controller.federation.fl_helpers import write_partition

pytestmark = pytest.mark.filterwarnings(
    "ignore:Secure RNG turned off:UserWarning",
    "ignore:Full backward hook is firing:UserWarning",
    "ignore:Optimal order is the largest alpha:UserWarning",
)


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _federation(
    tmp_path: Path, n: int = 3, mods: list[Any] | None = None
) -> tuple[ClientApp, dict[int, Context], dict[int, Path]]:
    data = {i: write_partition(tmp_path / f"d{i}.npz", i, n, n=450) for i in range(n)}
    states = {100 + i: tmp_path / f"state-{i}" for i in range(n)}
    node_of = {100 + i: i for i in range(n)}

    def load(context: Context) -> LocalData:
        return load_local_data(data[node_of[context.node_id]])

    def state_dir(context: Context) -> Path:
        return states[context.node_id]

    def policy(context: Context) -> DevicePolicy:
        return DevicePolicy(dataset_id="digits", budget_epsilon=100.0)

    app = make_client_app(load, state_dir, policy, mods=mods)
    contexts = {node: Context(1, node, {}, RecordDict(), {}) for node in states}
    return app, contexts, states


def _config(tmp_path: Path, name: str, **extra: str | float) -> FederationConfig:
    base = {
        "num-server-rounds": 2,
        "min-nodes": 3,
        "model": "digits-linear",
        "job-id": f"job-{name}",
        "output-path": str(tmp_path / f"{name}.npz"),
        "lr": 0.1,
    }
    return FederationConfig.from_run_config({**base, **extra})


def _run(
    tmp_path: Path, name: str, extra: dict[str, str | float] | None = None, grid: LocalGrid | None = None
) -> tuple[dict[str, np.ndarray], ListReporter, LocalGrid]:
    if grid is None:
        app, contexts, _ = _federation(tmp_path / name)
        grid = LocalGrid(app, contexts)
    reporter = ListReporter()
    run_federation(grid, _config(tmp_path, name, **(extra or {})), reporter)  # type: ignore[arg-type]
    with np.load(tmp_path / f"{name}.npz") as npz:
        return {k: npz[k] for k in npz.files}, reporter, grid


def _all_bytes(messages: list[Message]) -> list[bytes]:
    out: list[bytes] = []
    for msg in messages:
        for cfg in msg.content.config_records.values():
            for value in cfg.values():
                values = value if isinstance(value, list) else [value]
                out += [v for v in values if isinstance(v, bytes)]
        for rec in msg.content.array_records.values():
            out += [a.data for a in rec.values()]
    return out


def test_the_he_model_equals_plaintext_fedavg_and_the_controller_cannot_decrypt(tmp_path: Path) -> None:
    plain, plain_reports, _ = _run(tmp_path, "plain")
    enc, reports, grid = _run(tmp_path, "he", {"he": '{"poly_modulus_degree": 4096, "scale_bits": 34}'})

    # (b) the same model as plaintext FedAvg, within CKKS error
    for name in plain:
        rel = np.max(np.abs(enc[name] - plain[name])) / np.max(np.abs(plain[name]))
        assert rel <= 1e-3, (name, rel)
    last = [r for r in reports.rounds if r.kind == "evaluate"][-1]
    last_plain = [r for r in plain_reports.rounds if r.kind == "evaluate"][-1]
    assert abs(last.metrics["eval_accuracy"] - last_plain.metrics["eval_accuracy"]) <= 0.001

    # the train replies the controller received were ciphertext chunks, not parameters
    trains = [m for m in grid.received if m.metadata.message_type == "train"]
    assert len(trains) == 6
    assert all(
        set(m.content.array_records[ARRAYS]).issubset({*(f"{CHUNK_PREFIX}{i:05d}" for i in range(9))})
        for m in trains
    )

    # (a) nothing the controller stored or received holds a secret key: every context it got is public
    # only, a TenSEAL decrypt with it fails, and the sealed blobs are not contexts at all
    keygen = next(
        m for m in grid.received if HeKey.PUBLIC_CONTEXT in m.content.config_records.get(CONFIG, {})
    )
    public = keygen.content.config_records[CONFIG][HeKey.PUBLIC_CONTEXT]
    ctx = ts.context_from(public)
    assert ctx.is_public() and not ctx.has_secret_key()
    chunk = trains[0].content.array_records[ARRAYS][f"{CHUNK_PREFIX}00000"].numpy().tobytes()
    with pytest.raises(ValueError, match="secret"):
        ts.ckks_vector_from(ctx, chunk).decrypt()
    contexts = 0
    for blob in _all_bytes(grid.received + grid.sent):
        try:
            loaded = ts.context_from(blob)
        except Exception:
            continue
        contexts += 1
        assert not loaded.has_secret_key()
        with pytest.raises(ValueError):
            loaded.secret_key()
    assert contexts >= 1
    # the devices' secret contexts (on disk, 0600) never appear in any message
    secrets = [p.read_bytes() for p in (tmp_path / "he").glob("state-*/he/*.ctx")]
    assert len(secrets) == 3 and len(set(secrets)) == 1
    secret_key = ts.context_from(secrets[0]).serialize(save_secret_key=True, save_public_key=False)
    assert all(secret_key[-64:] not in blob for blob in _all_bytes(grid.received + grid.sent))


def test_he_composes_with_local_dp(tmp_path: Path) -> None:
    enc, reports, grid = _run(tmp_path, "dp", {"he": "{}", "dp-target-epsilon": 5.0})
    train = [r for r in reports.rounds if r.kind == "train"]
    assert [r.participants for r in train] == [3, 3]
    assert all(0 < c["metrics"]["dp-epsilon"] <= 5.0 for r in train for c in r.clients)
    assert all(np.all(np.isfinite(v)) for v in enc.values())
    assert any(
        m.metadata.message_type == "train" and f"{CHUNK_PREFIX}00000" in m.content.array_records[ARRAYS]
        for m in grid.received
    )


def test_masking_hides_one_update_from_a_colluding_key_holder(tmp_path: Path) -> None:
    plain, _, _ = _run(tmp_path, "plain")
    enc, _, grid = _run(tmp_path, "mask", {"he": '{"masking": true}'})
    for name in plain:
        assert np.max(np.abs(enc[name] - plain[name])) / np.max(np.abs(plain[name])) <= 1e-3

    # a participant holding the key set decrypts one client's round-1 ciphertext, as a controller that
    # colludes with it could: it sees weight x parameters + masks, far from any model
    secret = next((tmp_path / "mask").glob("state-1/he/*.ctx")).read_bytes()
    ctx = he.load_secret_context(secret)
    reply = next(
        m for m in grid.received if m.metadata.message_type == "train" and int(m.metadata.src_node_id) == 100
    )
    record = reply.content.array_records[ARRAYS]
    chunks = [record[n].numpy().tobytes() for n in sorted(record)]
    size = sum(int(np.prod(v.shape)) for v in plain.values())
    seen = he.decrypt(ctx, chunks, size)
    weight = float(str(next(iter(reply.content.metric_records.values()))["num-examples"]))
    model = seen / weight
    assert np.std(model) > 1000 * np.std(np.concatenate([v.ravel() for v in plain.values()]))

    # the same without masking: the colluder reads the update itself
    _, _, unmasked = _run(tmp_path, "nomask", {"he": "{}"})
    secret = next((tmp_path / "nomask").glob("state-1/he/*.ctx")).read_bytes()
    reply = next(
        m
        for m in unmasked.received
        if m.metadata.message_type == "train" and int(m.metadata.src_node_id) == 100
    )
    record = reply.content.array_records[ARRAYS]
    seen = he.decrypt(
        he.load_secret_context(secret), [record[n].numpy().tobytes() for n in sorted(record)], size
    )
    assert np.max(np.abs(seen / weight)) < 10


def test_a_masked_round_with_a_dropout_keeps_the_model_and_the_next_round_goes_on(tmp_path: Path) -> None:
    app, contexts, _ = _federation(tmp_path / "drop")
    grid = LocalGrid(app, contexts, drop={1: {102}})
    enc, reports, _ = _run(tmp_path, "drop", {"he": '{"masking": true}', "min-nodes": 2}, grid)
    train = [r for r in reports.rounds if r.kind == "train"]
    assert [r.participants for r in train] == [2, 3]
    assert "train_loss" not in train[0].metrics  # round 1 was not aggregated
    assert "train_loss" in train[1].metrics
    assert all(np.all(np.isfinite(v)) for v in enc.values())


def test_he_setup_fails_when_too_few_nodes_take_the_key(tmp_path: Path) -> None:
    app, contexts, _ = _federation(tmp_path / "few", n=2)
    grid = LocalGrid(app, contexts)
    spec = check_he_config("{}", "fedavg")
    assert spec is not None
    with pytest.raises(HeSetupError, match="connected"):
        HeAggregation.setup(grid, spec, job_id="j", min_nodes=3, timeout=5, node_wait=0.1)  # type: ignore[arg-type]


def test_a_device_refuses_a_sealed_key_meant_for_another(tmp_path: Path) -> None:
    app, contexts, _ = _federation(tmp_path / "wrong")
    grid = LocalGrid(app, contexts)
    spec = check_he_config("{}", "fedavg")
    assert spec is not None
    session = HeAggregation.setup(grid, spec, job_id="j", min_nodes=3, timeout=5)  # type: ignore[arg-type]
    keygen = next(m for m in grid.received if HeKey.SEALED in m.content.config_records.get(CONFIG, {}))
    blobs = keygen.content.config_records[CONFIG][HeKey.SEALED]
    assert isinstance(blobs, list)
    # give node 102 the blob sealed to node 101
    msg = next(
        m for m in grid.sent if m.metadata.message_type == HeAction.KEY and int(m.metadata.dst_node_id) == 102
    )
    msg = copy.deepcopy(msg)
    msg.content.config_records[CONFIG][HeKey.SEALED] = blobs[0]
    with pytest.raises(SealError, match="does not open"):  # Flower turns this into an error reply
        grid.send_and_receive([msg])
    assert session.holder == 100 and session.members == [100, 101, 102]


def test_the_controller_refuses_a_key_set_that_would_give_it_the_secret(tmp_path: Path) -> None:
    """A key holder that (by a bug or on purpose) replies with its secret context instead of the public one
    fails the setup: the controller never keeps a context holding a secret key."""

    def leak(msg: Message, context: Context, call_next: Any) -> Message:
        reply: Message = call_next(msg, context)
        if msg.metadata.message_type == HeAction.KEYGEN:
            secret = next(
                (tmp_path / "leak" / f"state-{context.node_id - 100}" / "he").glob("*.ctx")
            ).read_bytes()
            reply.content.config_records[CONFIG][HeKey.PUBLIC_CONTEXT] = secret
        return reply

    app, contexts, _ = _federation(tmp_path / "leak", mods=[leak])
    spec = check_he_config("{}", "fedavg")
    assert spec is not None
    with pytest.raises(HeSetupError, match="not public-only"):
        HeAggregation.setup(LocalGrid(app, contexts), spec, job_id="j", min_nodes=3, timeout=5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("he_text", "strategy", "secagg", "match"),
    [
        ('{"poly_modulus_degree": 1000}', "fedavg", "", "poly_modulus_degree"),
        ('{"colour": 1}', "fedavg", "", "unknown keys"),
        ("[1]", "fedavg", "", "object"),
        ("{}", "krum", "", "FedAvg only"),
        (
            "{}",
            '{"name": "fedavg", "central_dp": {"noise_multiplier": 1, "clipping_norm": 1, "num_sampled_clients": 2}}',
            "",
            "central DP",
        ),
        ("{}", "fedavg", '{"num_shares": 3}', "SecAgg"),
    ],
)
def test_the_run_config_refuses_what_he_cannot_run(
    he_text: str, strategy: str, secagg: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        FederationConfig.from_run_config({"he": he_text, "strategy": strategy, "secure-aggregation": secagg})
