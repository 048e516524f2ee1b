"""Federated learning on digits in Flower's simulation runtime: FedAvg and local DP-SGD side by side.

Ten simulated devices hold scikit-learn's digits, split by ``simulator.fl.make_federated_digits``: a
20 % stratified test set (dealt out to the devices for federated evaluation, so the example-weighted
accuracy is the accuracy on the whole test set), the rest label-skewed by Dirichlet(alpha = 0.5), about
140 examples per device. Every run is the fedge ServerApp (``controller.federation.serverapp``) and
ClientApp (``edge_agent.learning.clientapp``) in ``flwr.simulation.run_simulation`` (Ray on loopback),
at most 20 rounds:

- ``fedavg``: FedAvg, ``digits-mlp`` (64-128-10), 5 local epochs, batch 16, SGD lr 0.1 momentum 0.9;
- ``dp eps 3`` / ``dp eps 8``: example-level local DP-SGD (Opacus, ghost clipping, PRV accountant,
  delta 1e-5): ``digits-linear`` (650 parameters: DP noise grows with the parameter count), one local
  epoch, batch 32, clipping norm 1, FedAvgM with server momentum. Each device draws its noise multiplier
  for its own target epsilon over the whole planned run and pays every round from its own privacy ledger;
  the epsilon reported is the maximum over the devices' ledgers after the run (every step counted).

``dp_epoch_ratio`` is the time of one DP-SGD epoch (ghost clipping, Poisson batches, noise) over one plain
SGD epoch of the same network (``digits-mlp``, batch 32, the 1,437 training digits, one thread), the two
interleaved round by round; the median of each is used. Per-round wall time is what the ServerApp measured
per phase (train + evaluate, ClientApp start-up included), so round 1 carries the actors' start.

Deployment mode (``deployment``, skipped with ``--no-deployment`` or without flwr): the controller's Flower
engine (``controller.federation.flower.FlowerEngine``: a supervised ``flower-superlink`` with TLS from a
fresh device CA and SuperNode authentication, behind the Fleet-only front) and 3 real ``flower-supernode``
processes on loopback, each with its own registered EC key and one of 3 Dirichlet(0.5) digits partitions
(``simulator.fl.loopback``), run a FedAvg job: ``digits-mlp``, 1 local epoch, batch 32, lr 0.1, 3 rounds (5
without ``--quick``). Side by side:

- ``round_s``: the median round (train + evaluate phase as the ServerApp timed them, rounds after the first)
  vs ``local_train_s``: the same local epoch on the same partitions in this process (the slowest device's
  median fit: the devices train in parallel); ``engine_overhead`` = round_s / local_train_s;
- ``bytes_ratio``: parameter bytes per client per round (train down + up, evaluate down, from the round
  reports) over the model's float32 size (3.0 would be three bare copies); ``deployment.wire_bytes_ratio``:
  all HTTP body bytes through the Fleet front per client per round (polls, heartbeats, objects) over the same;
- where a phase goes: the SuperNodes' logs (stamped line by line) and a ``/proc`` scan of every
  ``flwr-clientapp`` process (one per message) give the SuperExec pickup, the ClientApp process start-up and
  its life, and what is left of the phase: Flower's pull polling (``deployment.timeline``); the imports of a
  ClientApp process are timed apart in fresh interpreters (``deployment.clientapp_imports_s``).

HE (``docs/fl-he.md``), side by side in the same run: ``fedavg_he`` is the FedAvg run with ``privacy.he``
(CKKS N=4096, pairwise masking) in the simulation runtime; ``he_accuracy_diff`` is HE minus plaintext
final accuracy of the same digits job through the fedge ServerApp and ClientApp in one process with fixed
node ids (``simulator.fl.inprocess``: Flower's simulation draws random node ids, which reseed the devices'
shuffles); ``he_time_ratio`` and ``he_bytes_ratio`` are one round at 105,010 parameters over 10 clients
(``he_round``: local training, encode, aggregate, decode on the critical path; bytes per client per
round: update up, global model down for train and evaluate) with HE over plaintext.

    python bench/fl.py [--quick] [--seeds 0,1,2] [--rounds R] [--deployment-rounds R] [--no-deployment]

``--quick``: 10 rounds, no eps-8 run, 3 deployment rounds. The last line of stdout is a JSON summary (per
seed and mean; the deployment keys are null when that section was skipped).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from edge_agent.learning.data import LocalData
from edge_agent.learning.ledger import PrivacyLedger
from edge_agent.learning.models import resolve_factory
from edge_agent.learning.trainer import DPSettings, FitConfig, TorchTrainer
from simulator.fl.flower import simulate
from simulator.fl.partition import make_federated_digits

DEVICES, ALPHA, DELTA = 10, 0.5, 1e-5
HE_SPEC, HE_CLIENTS = json.dumps({"masking": True}), 10  # privacy.he of the HE runs (CKKS N=4096, masks)

FEDAVG = {
    "strategy": "fedavg",
    "model": "digits-mlp",
    "local-epochs": 5,
    "batch-size": 16,
    "lr": 0.1,
    "momentum": 0.9,
}
DP = {
    "strategy": '{"name": "fedavgm", "server_momentum": 0.9, "server_learning_rate": 1.0}',
    "model": "digits-linear",
    "local-epochs": 1,
    "batch-size": 32,
    "lr": 0.15,
    "momentum": 0.0,
    "dp-delta": DELTA,
    "dp-max-grad-norm": 1.0,
}


def run(name: str, config: dict[str, Any], rounds: int, seed: int, workdir: Path) -> dict[str, Any]:
    """One federated job; its per-round accuracy and wall time, and the devices' epsilon."""
    data = make_federated_digits(DEVICES, alpha=ALPHA, seed=seed)
    state = workdir / f"{name}-{seed}"
    target = float(config.get("dp-target-epsilon", 0.0))
    run_config = {**config, "num-server-rounds": rounds, "min-nodes": DEVICES, "seed": seed, "job-id": name}
    outcome = simulate(data, run_config, state, budget_epsilon=target, delta=DELTA)
    evaluate = {r.round: r for r in outcome.reports if r.kind == "evaluate"}
    train = {r.round: r for r in outcome.reports if r.kind == "train"}
    accuracy = [round(evaluate[k].metrics["eval_accuracy"], 4) for k in sorted(evaluate)]
    seconds = [round(train[k].seconds + evaluate[k].seconds, 2) for k in sorted(evaluate)]
    result: dict[str, Any] = {
        "accuracy": accuracy[-1],
        "per_round_accuracy": accuracy,
        "round_seconds": seconds,
        "rounds": len(accuracy),
        "wall_s": round(outcome.seconds, 1),
        "participants": min(r.participants for r in train.values()),
        "test_examples": len(data.y_test),
    }
    if target > 0:
        spent = [
            PrivacyLedger(path, budget_epsilon=target, delta=DELTA).spent
            for path in sorted(state.glob("device-*/privacy/digits.json"))
        ]
        result.update(
            epsilon=round(max(spent), 4),
            epsilon_min=round(min(spent), 4),
            devices_accounted=len(spent),
            delta=DELTA,
            target_epsilon=target,
        )
    return result


def epoch_ratio(rounds: int) -> dict[str, float]:
    """Median seconds of a plain and a DP-SGD epoch of digits-mlp on the training digits, interleaved."""
    data = make_federated_digits(1, alpha=None, seed=0)
    (x, y), _ = data.train[0], data.test[0]
    trainer = TorchTrainer(resolve_factory("digits-mlp"), LocalData(x, y, data.x_test, data.y_test))
    params = trainer.initial_params()
    plain = FitConfig(epochs=1, batch_size=32, lr=0.1)
    private = FitConfig(epochs=1, batch_size=32, lr=0.1, dp=DPSettings(1.0, 1.0, DELTA))
    times: dict[str, list[float]] = {"plain": [], "dp": []}
    for config in (plain, private):  # warm-up
        trainer.fit(params, config)
    for i in range(rounds):
        for name, config in (
            (("plain", plain), ("dp", private)) if i % 2 == 0 else (("dp", private), ("plain", plain))
        ):
            started = time.perf_counter()
            trainer.fit(params, config)
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"plain_s": medians["plain"], "dp_s": medians["dp"], "ratio": medians["dp"] / medians["plain"]}


DEPLOY_DEVICES = 3
DEPLOY = {"network": "digits-mlp", "local_epochs": 1, "batch_size": 32, "lr": 0.1}


def local_training(data: Any, reps: int) -> dict[str, Any]:
    """The deployment job's local work in this process, per device: median seconds of one fit (the same
    epochs, batch, lr and partition) and of one evaluation, the trainer built as the ClientApp does."""
    fit = FitConfig(epochs=DEPLOY["local_epochs"], batch_size=DEPLOY["batch_size"], lr=DEPLOY["lr"])
    factory = resolve_factory(str(DEPLOY["network"]))
    fits, evals = [], []
    for (x, y), (xt, yt) in zip(data.train, data.test, strict=True):
        trainer = TorchTrainer(factory, LocalData(x, y, xt, yt))
        params = trainer.initial_params()
        trainer.fit(params, fit)  # warm-up
        fit_s, eval_s = [], []
        for _ in range(reps):
            started = time.perf_counter()
            TorchTrainer(factory, LocalData(x, y, xt, yt)).fit(params, fit)
            fit_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            trainer.evaluate(params)
            eval_s.append(time.perf_counter() - started)
        fits.append(statistics.median(fit_s))
        evals.append(statistics.median(eval_s))
    return {"fit_s": fits, "eval_s": evals, "examples": [len(y) for _, y in data.train]}


def clientapp_imports(reps: int) -> dict[str, float]:
    """Median wall seconds of a fresh interpreter doing nothing, and importing what a ClientApp process
    imports (flwr's ClientApp runtime, then the agent's ClientApp: torch, the trainer, the ledger)."""
    runs: dict[str, list[float]] = {"interpreter_s": [], "imports_s": []}
    code = {
        "interpreter_s": "pass",
        "imports_s": "import flwr.supernode.runtime.run_clientapp, edge_agent.learning.clientapp",
    }
    for _ in range(reps):
        for key, source in code.items():
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", source], check=True, cwd=Path(__file__).resolve().parents[1]
            )
            runs[key].append(time.perf_counter() - started)
    return {key: round(statistics.median(values), 3) for key, values in runs.items()}


def deployment(rounds: int, seed: int, workdir: Path) -> dict[str, Any]:
    """The deployment-mode section (see the module docstring); ``{"skipped": why}`` without flwr."""
    try:
        import flwr  # noqa: F401

        from simulator.fl.loopback import LoopbackJob, run_loopback, timeline
    except ImportError as exc:
        return {"skipped": f"flwr is not installed ({exc}): pip install 'fedge[agent,train,controller]'"}
    if not (Path(sys.executable).parent / "flower-supernode").exists() and not shutil.which(
        "flower-supernode"
    ):
        return {"skipped": "flower-supernode is not installed beside this Python"}
    data = make_federated_digits(DEPLOY_DEVICES, alpha=ALPHA, seed=seed)
    job = LoopbackJob(
        rounds=rounds,
        seed=seed,
        network=str(DEPLOY["network"]),
        local_epochs=int(DEPLOY["local_epochs"]),
        batch_size=int(DEPLOY["batch_size"]),
        lr=float(DEPLOY["lr"]),
    )

    def progress(report: Any) -> None:
        print(f"  deployment round {report['round']} {report['kind']}: {report['seconds']:.1f} s", flush=True)

    outcome = run_loopback(data, job, workdir / "deployment", on_round=progress)
    if outcome.state != "succeeded":
        tails = "\n".join(f"device {k}: {tail}" for k, tail in outcome.logs.items())
        return {"failed": f"the deployment job {outcome.state}: {outcome.reason}", "logs": tails}
    local = local_training(data, reps=5)
    imports = clientapp_imports(reps=3)
    train = {r["round"]: r for r in outcome.reports if r["kind"] == "train"}
    evaluate = {r["round"]: r for r in outcome.reports if r["kind"] == "evaluate"}
    per_round = []
    for k in sorted(train):
        t, e = train[k], evaluate.get(k)
        clients = max(int(t["participants"]), 1)
        down = t["bytes_sent"] / clients
        up = t["bytes_received"] / clients
        eval_down = (e["bytes_sent"] / max(int(e["participants"]), 1)) if e else 0.0
        per_round.append(
            {
                "round": k,
                "train_s": round(t["seconds"], 3),
                "evaluate_s": round(e["seconds"], 3) if e else None,
                "round_s": round(t["seconds"] + (e["seconds"] if e else 0.0), 3),
                "participants": t["participants"],
                "bytes_per_client": {
                    "train_down": down,
                    "train_up": up,
                    "evaluate_down": eval_down,
                    "total": down + up + eval_down,
                },
                "eval_accuracy": e["metrics"].get("eval_accuracy") if e else None,
            }
        )
    later = per_round[1:] or per_round
    round_s = statistics.median(r["round_s"] for r in later)
    train_s = statistics.median(r["train_s"] for r in later)
    local_train_s = max(local["fit_s"])
    per_client = statistics.median(r["bytes_per_client"]["total"] for r in per_round)
    wire = (outcome.wire["bytes_in"] + outcome.wire["bytes_out"]) / DEPLOY_DEVICES / len(per_round)
    tl = timeline(outcome)
    return {
        "devices": DEPLOY_DEVICES,
        "rounds": len(per_round),
        **DEPLOY,
        "superlink": "FlowerEngine: flower-superlink (TLS, node auth) behind the Fleet-only front",
        "supernodes": "flower-supernode --isolation subprocess (one flwr-clientapp process per message)",
        "round_s": round(round_s, 3),
        "first_round_s": per_round[0]["round_s"],
        "train_phase_s": round(train_s, 3),
        "local_train_s": round(local_train_s, 5),
        "local_train_s_per_device": [round(v, 5) for v in local["fit_s"]],
        "local_eval_s": round(max(local["eval_s"]), 5),
        "examples_per_device": local["examples"],
        "engine_overhead": round(round_s / local_train_s, 1),
        "train_phase_overhead": round(train_s / local_train_s, 1),
        "model_bytes": outcome.model_bytes,
        "bytes_per_client_round": round(per_client, 1),
        "bytes_ratio": round(per_client / outcome.model_bytes, 4),
        "bytes_ratio_per_transfer": round(per_client / 3 / outcome.model_bytes, 4),
        "wire_bytes_per_client_round": round(wire, 1),
        "wire_bytes_ratio": round(wire / outcome.model_bytes, 4),
        "wire_requests_per_client_round": round(
            outcome.wire["requests"] / DEPLOY_DEVICES / len(per_round), 1
        ),
        "superlink_start_s": round(outcome.superlink_start_s, 2),
        "job_s": round(outcome.seconds, 1),
        "clientapp_imports_s": imports,
        "timeline": tl,
        "per_round": per_round,
        "final_accuracy": per_round[-1]["eval_accuracy"],
    }


def _print_deployment(dep: dict[str, Any]) -> None:
    if "skipped" in dep or "failed" in dep:
        print(f"deployment mode: skipped: {dep.get('skipped') or dep.get('failed')}")
        if dep.get("logs"):
            print(dep["logs"])
        return
    print(
        f"deployment mode: {dep['devices']} flower-supernode processes (TLS, node auth, loopback) against "
        f"the engine's SuperLink; {dep['network']}, {dep['local_epochs']} local epoch, batch "
        f"{dep['batch_size']}, {dep['rounds']} rounds (SuperLink healthy in {dep['superlink_start_s']:.1f} s)"
    )
    header = f"{'round':>5} {'train s':>8} {'eval s':>8} {'round s':>8} {'bytes/client':>13} {'eval acc':>9}"
    print(header)
    print("-" * len(header))
    for r in dep["per_round"]:
        print(
            f"{r['round']:>5} {r['train_s']:>8.2f} {r['evaluate_s'] or 0:>8.2f} {r['round_s']:>8.2f} "
            f"{r['bytes_per_client']['total']:>13,.0f} {r['eval_accuracy'] or 0:>9.4f}"
        )
    local_ms = dep["local_train_s"] * 1000
    print(
        f"median round (after round 1) {dep['round_s']:.2f} s vs local training {local_ms:.1f} ms (the same "
        f"epoch in-process, slowest device): engine overhead {dep['engine_overhead']:.0f}x (train phase "
        f"alone {dep['train_phase_s']:.2f} s: {dep['train_phase_overhead']:.0f}x)"
    )
    print(
        f"bytes per client per round {dep['bytes_per_client_round']:,.0f} (train down + up, evaluate down) "
        f"vs the float32 model {dep['model_bytes']:,}: {dep['bytes_ratio']:.3f}x "
        f"({dep['bytes_ratio_per_transfer']:.4f}x per copy); every HTTP body through the Fleet front "
        f"{dep['wire_bytes_per_client_round']:,.0f}: {dep['wire_bytes_ratio']:.2f}x "
        f"({dep['wire_requests_per_client_round']:.0f} requests per client per round)"
    )
    med = dep["timeline"]["median"]
    for kind in ("train", "evaluate"):
        cell = {key: "?" if v[kind] is None else f"{v[kind]:.2f}" for key, v in med.items()}
        print(
            f"  {kind} phase {cell['phase_s']} s = SuperNode {cell['node_s']} s (SuperExec pickup "
            f"{cell['pickup_s']}, ClientApp process start to its first log line {cell['startup_s']}, "
            f"then to the reply {cell['app_s']}) + polling {cell['polling_s']} s; ClientApp process life "
            f"{cell['clientapp_s']} s"
        )
    imports = dep["clientapp_imports_s"]
    print(
        f"  fresh interpreter {imports['interpreter_s']:.2f} s; importing flwr's ClientApp runtime and the "
        f"agent's ClientApp {imports['imports_s']:.2f} s; {dep['timeline']['clientapp_processes']} ClientApp "
        f"processes for {dep['rounds']} rounds x {dep['devices']} devices x 2 messages"
    )


def _ecdh(key: Any, peer: Any) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec

    shared: bytes = key.exchange(ec.ECDH(), peer)
    return shared


def wide_mlp() -> torch.nn.Module:
    """A 105,010-parameter digits MLP (64-1400-10) for the HE round at ~100k parameters."""
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 1400), torch.nn.ReLU(), torch.nn.Linear(1400, 10)
    )


def he_round(clients: int, reps: int, seed: int, masking: bool = True) -> dict[str, Any]:
    """One FedAvg round at ~100k parameters over ``clients`` devices, plaintext and HE side by side, with
    the real code of each end: the device's local training (TorchTrainer, FEDAVG's settings) and its
    update as an ArrayRecord (plaintext) or ``edge_agent.learning.he.encrypt_update`` (HE, pairwise masks
    from ECDH of P-256 keys), the controller's aggregation (Flower's ``aggregate_arrayrecords`` or the sum
    of ciphertexts with the public context only, ``fedge_common.he.add``) and the device's decryption
    (``decrypt_aggregate``). The devices train in parallel, so a round's critical path is one device's
    train + encode, the aggregation, and one device's decode; bytes per client per round count the update
    up, the global model down for train and for evaluate, as the round reports do."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    from edge_agent.learning.he import chunk_record, decrypt_aggregate, encrypt_update
    from fedge_common import he
    from fedge_common.sealing import pair_seed

    data = make_federated_digits(clients, alpha=ALPHA, seed=seed)
    shards = [
        LocalData(x=x, y=y, x_test=xt, y_test=yt)
        for (x, y), (xt, yt) in zip(data.train, data.test, strict=True)
    ]
    factory = resolve_factory("bench.fl:wide_mlp")
    model = factory(seed)
    params = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    n_params = sum(v.size for v in params.values())
    local: dict[str, Any] = FEDAVG  # the digits runs' local SGD
    fit = FitConfig(
        epochs=int(local["local-epochs"]),
        batch_size=int(local["batch-size"]),
        lr=float(local["lr"]),
        momentum=float(local["momentum"]),
        seed=seed,
    )
    spec = he.HeParams()
    secret = he.new_secret_context(spec)
    ctx = he.load_secret_context(secret)
    ctx.global_scale = 2.0**spec.scale_bits
    public = he.load_public_context(he.public_context(secret))
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(clients)]
    plain_s: list[float] = []
    he_s: list[float] = []
    parts: dict[str, list[float]] = {
        "train": [],
        "encode_plain": [],
        "aggregate_plain": [],
        "decode_plain": [],
        "encrypt": [],
        "aggregate_he": [],
        "decrypt": [],
    }
    rel_errors: list[float] = []
    for rep in range(reps):
        trained = []
        for k, shard in enumerate(shards):
            t = time.perf_counter()
            res = TorchTrainer(factory, shard).fit(params, fit)
            if k == 0:
                parts["train"].append(time.perf_counter() - t)
            trained.append((res.params, res.num_examples))
        # plaintext: the update as Flower arrays, FedAvg, the global model read back
        t = time.perf_counter()
        replies = [
            RecordDict(
                {
                    "arrays": ArrayRecord({n: Array(np.asarray(a)) for n, a in p.items()}),
                    "metrics": MetricRecord({"num-examples": w}),
                }
            )
            for p, w in trained
        ]
        parts["encode_plain"].append((time.perf_counter() - t) / clients)
        t = time.perf_counter()
        agg = aggregate_arrayrecords(replies, "num-examples")
        parts["aggregate_plain"].append(time.perf_counter() - t)
        t = time.perf_counter()
        plain_model = {n: a.numpy() for n, a in agg.items()}
        parts["decode_plain"].append(time.perf_counter() - t)
        plain_bytes = replies[0]["arrays"].count_bytes() + 2 * agg.count_bytes()
        # HE: each device encrypts weight x update + its pairwise masks; the controller adds
        layout = [(n, tuple(a.shape), str(a.dtype)) for n, a in params.items()]
        encrypted = []
        for k, (p, w) in enumerate(trained):
            t = time.perf_counter()
            seeds = {}
            if masking:
                for j in range(clients):
                    if j != k:
                        peer = keys[j].public_key()
                        context = f"{min(j, k)},{max(j, k)},{rep}".encode()
                        seed_bytes = pair_seed(partial(_ecdh, keys[k]), peer, context)
                        seeds[j] = (1 if k < j else -1, seed_bytes)
            masks = he.pairwise_mask(seeds, n_params, spec.mask_amplitude(clients)) if masking else None
            record = encrypt_update(
                ctx,
                spec,
                ArrayRecord({n: Array(np.asarray(a)) for n, a in p.items()}),
                float(w),
                layout,
                masks=masks,
            )
            if k == 0:
                parts["encrypt"].append(time.perf_counter() - t)
            encrypted.append(record)
        t = time.perf_counter()
        chunks = [[r[n].numpy().tobytes() for n in sorted(r)] for r in encrypted]
        summed = chunk_record(he.add(public, chunks), float(sum(w for _, w in trained)))
        parts["aggregate_he"].append(time.perf_counter() - t)
        t = time.perf_counter()
        he_model = {n: a.numpy() for n, a in decrypt_aggregate(ctx, summed, layout).items()}
        parts["decrypt"].append(time.perf_counter() - t)
        he_bytes = encrypted[0].count_bytes() + 2 * summed.count_bytes()
        rel_errors.append(
            max(
                float(np.max(np.abs(he_model[n] - plain_model[n])) / np.max(np.abs(plain_model[n])))
                for n in plain_model
            )
        )
        plain_s.append(
            parts["train"][-1]
            + parts["encode_plain"][-1]
            + parts["aggregate_plain"][-1]
            + parts["decode_plain"][-1]
        )
        he_s.append(
            parts["train"][-1] + parts["encrypt"][-1] + parts["aggregate_he"][-1] + parts["decrypt"][-1]
        )
        params = plain_model
    med = {k: round(statistics.median(v) * 1000, 2) for k, v in parts.items()}
    return {
        "parameters": n_params,
        "clients": clients,
        "masking": masking,
        "poly_modulus_degree": spec.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(spec.coeff_mod_bit_sizes),
        "scale_bits": spec.scale_bits,
        "plain_round_ms": round(statistics.median(plain_s) * 1000, 2),
        "he_round_ms": round(statistics.median(he_s) * 1000, 2),
        "time_ratio": round(statistics.median(he_s) / statistics.median(plain_s), 3),
        "phase_ms": med,
        "plain_bytes_per_client_round": plain_bytes,
        "he_bytes_per_client_round": he_bytes,
        "bytes_ratio": round(he_bytes / plain_bytes, 3),
        "ciphertext_vs_float32": round(encrypted[0].count_bytes() / (4 * n_params), 3),
        "public_context_bytes": len(he.public_context(secret)),
        "max_rel_error": max(rel_errors),
    }


def he_digits(rounds: int, seed: int, workdir: Path) -> dict[str, Any]:
    """The digits FedAvg run (FEDAVG, 10 devices) with HE and without, through the fedge ServerApp and
    ClientApp in one process with fixed node ids (``simulator.fl.inprocess``): Flower's simulation draws
    random node ids, which reseed the devices' shuffles, so only here do the two runs differ by HE alone."""
    from simulator.fl.inprocess import run_in_process

    data = make_federated_digits(DEVICES, alpha=ALPHA, seed=seed)
    shards = [
        LocalData(x=x, y=y, x_test=xt, y_test=yt)
        for (x, y), (xt, yt) in zip(data.train, data.test, strict=True)
    ]
    out: dict[str, Any] = {}
    finals = {}
    for name, extra in (("plain", {}), ("he", {"he": HE_SPEC})):
        final = workdir / f"inprocess-{name}-{seed}.npz"
        config = {**FEDAVG, **extra, "num-server-rounds": rounds, "min-nodes": DEVICES, "seed": seed,
                  "job-id": f"inprocess-{name}", "output-path": str(final)}  # fmt: skip
        outcome = run_in_process(shards, config, workdir / f"inprocess-{name}-{seed}")
        evaluate = {r.round: r for r in outcome.reports if r.kind == "evaluate"}
        train = {r.round: r for r in outcome.reports if r.kind == "train"}
        out[name] = {
            "per_round_accuracy": [round(evaluate[k].metrics["eval_accuracy"], 4) for k in sorted(evaluate)],
            "bytes_in_per_client_round": statistics.median(
                r.bytes_received / max(r.participants, 1) for r in train.values()
            ),
            "wall_s": round(outcome.seconds, 1),
        }
        out[name]["accuracy"] = out[name]["per_round_accuracy"][-1]
        with np.load(final) as npz:
            finals[name] = {k: npz[k] for k in npz.files}
    out["accuracy_diff"] = round(out["he"]["accuracy"] - out["plain"]["accuracy"], 4)
    out["model_max_rel_diff"] = max(
        float(np.max(np.abs(finals["he"][k] - finals["plain"][k])) / np.max(np.abs(finals["plain"][k])))
        for k in finals["plain"]
    )
    return out


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10 rounds, no eps-8 run, 3 deployment rounds")
    parser.add_argument("--seeds", default="0", help="comma-separated partition/initialisation seeds")
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds per run (default 20; 10 with --quick)"
    )
    parser.add_argument(
        "--deployment-rounds",
        type=int,
        default=None,
        help="deployment-mode rounds (default 5; 3 with --quick)",
    )
    parser.add_argument("--no-deployment", action="store_true", help="skip the deployment-mode section")
    args = parser.parse_args(argv)
    rounds = args.rounds or (10 if args.quick else 20)
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(1)
    runs = {
        "fedavg": FEDAVG,
        "fedavg_he": {**FEDAVG, "he": HE_SPEC},
        "dp_eps3": {**DP, "dp-target-epsilon": 3.0},
    }
    if not args.quick:
        runs["dp_eps8"] = {**DP, "dp-target-epsilon": 8.0}
    print(
        f"digits over {DEVICES} devices, Dirichlet alpha {ALPHA}, 20 % stratified test set; {rounds} rounds; "
        f"Flower simulation runtime (Ray, loopback); seeds {seeds}; torch {torch.__version__}",
        flush=True,
    )
    results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in runs}
    with tempfile.TemporaryDirectory(prefix="fedge-bench-fl-") as tmp:
        for seed in seeds:
            for name, config in runs.items():
                results[name][seed] = res = run(name, config, rounds, seed, Path(tmp))
                eps = f", max epsilon {res['epsilon']:.3f} (delta {DELTA:g})" if "epsilon" in res else ""
                print(
                    f"seed {seed} {name:8s}: accuracy {res['accuracy']:.4f}{eps}, {res['wall_s']:.0f} s",
                    flush=True,
                )
        ratio = epoch_ratio(rounds=5 if args.quick else 15)
        he_100k = he_round(HE_CLIENTS, reps=3 if args.quick else 7, seed=seeds[0])
        he_side = he_digits(rounds, seeds[0], Path(tmp))
        if args.no_deployment:
            dep: dict[str, Any] = {"skipped": "--no-deployment"}
        else:
            dep = deployment(args.deployment_rounds or (3 if args.quick else 5), seeds[0], Path(tmp))

    print()
    names = list(runs)
    header = f"{'round':>5}  " + "  ".join(f"{n + ' acc':>12} {n + ' s':>10}" for n in names)
    print(header)
    print("-" * len(header))
    last = seeds[-1]
    for k in range(rounds):
        cells = []
        for n in names:
            res = results[n][last]
            acc = res["per_round_accuracy"][k] if k < res["rounds"] else float("nan")
            sec = res["round_seconds"][k] if k < res["rounds"] else float("nan")
            cells.append(f"{acc:>12.4f} {sec:>10.2f}")
        print(f"{k + 1:>5}  " + "  ".join(cells))
    print(f"(seed {last}; seconds per round: train + evaluate phase as the ServerApp timed them)")
    print()
    summary_rows = []
    for n in names:
        accs = [results[n][s]["accuracy"] for s in seeds]
        mean, sd = _mean_sd(accs)
        eps = [results[n][s]["epsilon"] for s in seeds if "epsilon" in results[n][s]]
        med = statistics.median(x for s in seeds for x in results[n][s]["round_seconds"][1:])
        summary_rows.append((n, mean, sd, min(accs), max(accs), max(eps) if eps else None, med))
        print(
            f"{n:8s}: accuracy mean {mean:.4f} sd {sd:.4f} (min {min(accs):.4f}, max {max(accs):.4f}) over "
            f"{len(seeds)} seed(s)"
            + (f"; max epsilon {max(eps):.3f}" if eps else "")
            + f"; median round {med:.2f} s"
        )
    print(
        f"DP-SGD epoch / plain epoch (digits-mlp, batch 32, 1,437 examples): {ratio['dp_s'] * 1000:.1f} ms / "
        f"{ratio['plain_s'] * 1000:.1f} ms = {ratio['ratio']:.2f}x"
    )
    print()
    _print_deployment(dep)

    def summary(name: str) -> dict[str, Any]:
        per_seed = results[name]
        accs = [per_seed[s]["accuracy"] for s in seeds]
        mean, sd = _mean_sd(accs)
        out: dict[str, Any] = {"accuracy": round(mean, 4), "accuracy_sd": round(sd, 4), "per_seed": accs}
        if "epsilon" in per_seed[seeds[0]]:
            out.update(
                epsilon=round(max(per_seed[s]["epsilon"] for s in seeds), 4),
                delta=DELTA,
                target_epsilon=per_seed[seeds[0]]["target_epsilon"],
            )
        reached = [
            next((k + 1 for k, a in enumerate(per_seed[s]["per_round_accuracy"]) if a >= 0.95), None)
            for s in seeds
        ]
        out["rounds_to_95"] = reached  # first round at >= 95 % test accuracy, per seed (None: never)
        out["median_round_s"] = round(
            statistics.median(x for s in seeds for x in per_seed[s]["round_seconds"][1:]), 2
        )
        out["first_round_s"] = round(statistics.median(per_seed[s]["round_seconds"][0] for s in seeds), 2)
        return out

    result: dict[str, Any] = {
        "bench": "fl",
        "quick": args.quick,
        "runtime": "flwr.simulation",
        "devices": DEVICES,
        "alpha": ALPHA,
        "seeds": seeds,
        "rounds": rounds,
        "fedavg_accuracy": summary("fedavg")["accuracy"],
        "fedavg": summary("fedavg"),
        "dp": summary("dp_eps3"),
        "dp_epoch_ratio": round(ratio["ratio"], 3),
        "dp_epoch_ms": {"plain": round(ratio["plain_s"] * 1000, 2), "dp": round(ratio["dp_s"] * 1000, 2)},
    }
    if "dp_eps8" in runs:
        result["dp_eps8"] = summary("dp_eps8")
    he_sim, plain_sim = summary("fedavg_he"), summary("fedavg")
    result.update(
        he_time_ratio=he_100k["time_ratio"],
        he_bytes_ratio=he_100k["bytes_ratio"],
        he_accuracy_diff=he_side["accuracy_diff"],
        he={
            "digits_in_process": he_side,
            "simulation": he_sim,
            "simulation_round_ratio": round(he_sim["median_round_s"] / plain_sim["median_round_s"], 3),
            "round_100k": he_100k,
        },
    )
    h = he_100k
    print(
        f"HE (CKKS N={h['poly_modulus_degree']}, masking) at {h['parameters']:,} parameters x {HE_CLIENTS} "
        f"clients: round {h['he_round_ms']:.0f} ms vs plaintext {h['plain_round_ms']:.0f} ms = "
        f"{h['time_ratio']:.2f}x; bytes per client per round {h['bytes_ratio']:.2f}x the plaintext round; "
        f"max relative error {h['max_rel_error']:.1e}; digits accuracy HE - plain "
        f"{result['he_accuracy_diff']:+.4f}, simulated round {result['he']['simulation_round_ratio']:.2f}x"
    )
    ran = "round_s" in dep
    for key in ("engine_overhead", "round_s", "local_train_s", "bytes_ratio"):
        result[key] = dep[key] if ran else None
    result["deployment"] = dep
    print(json.dumps(result))
    return 0 if ran or "skipped" in dep else 1


if __name__ == "__main__":
    raise SystemExit(main())
