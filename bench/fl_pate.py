"""FedPATE on digits: the student's accuracy against the labels' epsilon, for several noise levels and
teacher counts.

Mode: **in process** (no Flower runtime): the controller's FedPATE ServerApp code
(``controller.federation.pate.run_fedpate``) runs over a ``LocalGrid`` whose nodes are the agent's real
ClientApp (``edge_agent.learning.clientapp.make_client_app``: the query handler, the teachers, the noise
shares, each device's privacy ledger), called one after the other in this process. It is the code a
deployment runs, without the SuperLink's transport (whose cost ``bench/fl.py`` measures).

Data: the controller's digits split (``controller.federation.pate.digits_split``): 1,200 private examples
dealt IID to 3 devices (400 each), 300 public unlabeled examples (the queries), 297 held-out test examples
(the student's accuracy). Each row's ``epsilon`` is what the job reports (the data-dependent bound computed
from the noisy aggregate, see docs/fl-pate.md), at delta 1e-5; ``epsilon_data_independent`` the worst case;
``device_epsilon`` what each device's ledger paid against the controller (its own noise share).
``label_accuracy``: the answered labels against the ground truth the controller holds for evaluation.

    python bench/fl_pate.py [--quick] [--devices 3]

``--quick``: 3 configurations instead of 9. The last line of stdout is one JSON object with ``pate_curve``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from controller.federation.pate import LocalGrid, PateSpec, digits_split, run_fedpate
from controller.federation.serverapp import FederationConfig, ListReporter
from edge_agent.learning.clientapp import DevicePolicy, make_client_app
from edge_agent.learning.data import LocalData

DELTA = 1e-5
# (teachers per device, sigma, sigma1, threshold as a fraction of all teachers, epsilon target)
FULL = [
    (80, 4.0, 0.0, 0.0, None),
    (80, 8.0, 0.0, 0.0, None),
    (80, 8.0, 0.0, 0.0, 8.0),
    (80, 12.0, 0.0, 0.0, 8.0),
    (80, 16.0, 0.0, 0.0, None),
    (80, 8.0, 16.0, 0.35, 8.0),
    (40, 8.0, 0.0, 0.0, 8.0),
    (130, 8.0, 0.0, 0.0, 8.0),
    (20, 8.0, 0.0, 0.0, 8.0),
]
QUICK = [FULL[2], FULL[6], FULL[8]]


def _constant(value: Any) -> Any:
    return lambda _context: value


def devices(n: int, state: Path) -> dict[int, tuple[Any, Any]]:
    """``n`` devices with IID shards of the private pool, each with its own ledger (budget 1000)."""
    from flwr.app import Context, RecordDict

    split = digits_split()
    policy = DevicePolicy("digits", budget_epsilon=1000.0)
    apps: dict[int, tuple[Any, Any]] = {}
    for d in range(n):
        part = np.array_split(np.arange(len(split.private_y)), n)[d]
        data = LocalData(split.private_x[part], split.private_y[part], split.test_x, split.test_y)
        app = make_client_app(_constant(data), _constant(state / f"device-{d}"), _constant(policy))
        apps[100 + d] = (
            app,
            Context(run_id=1, node_id=100 + d, node_config={}, state=RecordDict(), run_config={}),
        )
    return apps


def one(config: tuple[int, float, float, float, float | None], n: int, workdir: Path) -> dict[str, Any]:
    teachers, sigma, sigma1, fraction, target = config
    spec = PateSpec(
        num_teachers=teachers,
        sigma=sigma,
        sigma1=sigma1,
        threshold=fraction * teachers * n if sigma1 > 0 else 0.0,
        epsilon=target,
        delta=DELTA,
        num_queries=300,
    )
    run_config = FederationConfig.from_run_config(
        {"algorithm": "fedpate", "pate": spec.to_json(), "model": "digits-linear", "min-nodes": n,
         "job-id": f"bench-{teachers}-{sigma}-{sigma1}-{target}"}
    )  # fmt: skip
    reporter = ListReporter()
    began = time.perf_counter()
    run_fedpate(LocalGrid(devices(n, workdir)), run_config, reporter)
    seconds = time.perf_counter() - began
    assert reporter.summary is not None
    final = reporter.summary.final_metrics
    clients = [c for r in reporter.rounds if r.kind == "train" for c in r.clients]
    return {
        "teachers": int(final["pate-teachers"]),
        "teachers_per_device": teachers,
        "sigma": sigma,
        "sigma1": sigma1,
        "threshold": spec.threshold,
        "epsilon_target": target,
        "queries": int(final["pate-queries"]),
        "queries_answered": int(final["pate-answered"]),
        "epsilon": round(final["pate-epsilon"], 3),
        "epsilon_data_independent": round(final["pate-epsilon-data-independent"], 3),
        "label_accuracy": round(final["pate-label-accuracy"], 4),
        "student_accuracy": round(final["pate-student-accuracy"], 4),
        "device_epsilon": round(max(c["metrics"]["dp-epsilon"] for c in clients), 3),
        "teacher_accuracy": round(
            float(np.mean([c["metrics"]["pate-teacher-accuracy"] for c in clients])), 4
        ),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 configurations instead of 9")
    parser.add_argument("--devices", type=int, default=3)
    args = parser.parse_args()
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # what a ServerApp process has
    curve = []
    with tempfile.TemporaryDirectory(prefix="fedge-pate-") as tmp:
        for i, config in enumerate(QUICK if args.quick else FULL):
            row = one(config, args.devices, Path(tmp) / str(i))
            print(
                f"teachers {row['teachers']:4d} sigma {row['sigma']:5.1f} sigma1 {row['sigma1']:5.1f} "
                f"target {row['epsilon_target']}: answered {row['queries_answered']:3d}/{row['queries']:3d} "
                f"eps {row['epsilon']:6.2f} (data-ind. {row['epsilon_data_independent']:6.2f}) labels "
                f"{row['label_accuracy']:.3f} student {row['student_accuracy']:.3f} device eps "
                f"{row['device_epsilon']:.1f} ({row['seconds']:.0f} s)",
                file=sys.stderr,
            )
            curve.append(row)
    good = [r for r in curve if r["epsilon"] <= 8.0]
    best = max(good, key=lambda r: r["student_accuracy"]) if good else None
    print(
        json.dumps(
            {
                "bench": "fl_pate",
                "mode": "in-process (run_fedpate over the agent's ClientApp, no Flower transport)",
                "quick": args.quick,
                "devices": args.devices,
                "delta": DELTA,
                "pate_curve": curve,
                "best_student_accuracy_at_eps_le_8": best["student_accuracy"] if best else None,
            }
        )
    )


if __name__ == "__main__":
    main()
