"""Self-describing ONNX policies: policy.json embedded in metadata_props, read back by the ONNX runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from simulator.grid.errors import PolicyError
from simulator.grid.model import GridModel
from simulator.grid.onnx_policy import METADATA_KEY, OnnxPolicy, embed_policy_info, embedded_policy_info
from simulator.grid.policy_info import ONNX_FILE, PolicyInfo
from simulator.grid.publish import self_describing_onnx
from simulator.grid.rl import TrainedPolicy, make_env
from tests.simulator.grid.tiny import tiny_policy


@pytest.fixture(scope="module")
def trained(model: GridModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainedPolicy, Path]:
    folder = tmp_path_factory.mktemp("tiny-policy")
    return tiny_policy(model, folder), folder


def test_export_embeds_policy_json_and_the_runner_reads_it(
    trained: tuple[TrainedPolicy, Path], model: GridModel
) -> None:
    policy, folder = trained
    path = folder / ONNX_FILE

    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert PolicyInfo(**json.loads(props[METADATA_KEY])) == policy.info
    assert embedded_policy_info(path) == policy.info

    runner = OnnxPolicy(path)  # no policy.json needed
    assert runner.info == policy.info
    env = make_env(model, runner.info, days="test")
    obs, _ = env.reset(seed=0)
    probe = np.vstack([obs, np.random.default_rng(1).normal(size=(16, policy.info.obs_dim))]).astype(
        np.float32
    )
    assert np.array_equal(runner.predict(probe), policy.predict(probe))
    assert env.action_space.contains(runner.act(obs, env))


def test_onnx_runner_imports_without_torch_or_stable_baselines3() -> None:
    code = (
        "import sys\n"
        "for name in ('torch', 'stable_baselines3'):\n"
        "    sys.modules[name] = None\n"
        "from simulator.grid.onnx_policy import OnnxPolicy\n"
        "assert OnnxPolicy.__module__ == 'simulator.grid.onnx_policy'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_file_without_the_description_needs_it_and_registering_embeds_it(
    trained: tuple[TrainedPolicy, Path], tmp_path: Path
) -> None:
    policy, folder = trained
    bare = onnx.load(str(folder / ONNX_FILE))
    del bare.metadata_props[:]
    target = tmp_path / "p"
    target.mkdir()
    onnx.save(bare, str(target / ONNX_FILE))
    (target / "policy.json").write_text(policy.info.to_json())

    with pytest.raises(PolicyError, match=METADATA_KEY):
        OnnxPolicy(target / ONNX_FILE)
    assert OnnxPolicy(target / ONNX_FILE, policy.info).info == policy.info  # explicit settings still work

    path, info = self_describing_onnx(target)
    assert info == policy.info and embedded_policy_info(path) == policy.info


def test_registering_refuses_an_onnx_from_another_policy(
    trained: tuple[TrainedPolicy, Path], tmp_path: Path
) -> None:
    policy, folder = trained
    target = tmp_path / "p"
    target.mkdir()
    (target / ONNX_FILE).write_bytes((folder / ONNX_FILE).read_bytes())
    other = PolicyInfo(**{**json.loads(policy.info.to_json()), "seed": 99})
    (target / "policy.json").write_text(other.to_json())

    with pytest.raises(PolicyError, match="different policy description"):
        self_describing_onnx(target)


def test_embedding_replaces_an_earlier_description(
    trained: tuple[TrainedPolicy, Path], tmp_path: Path
) -> None:
    policy, folder = trained
    path = tmp_path / ONNX_FILE
    path.write_bytes((folder / ONNX_FILE).read_bytes())
    other = PolicyInfo(**{**json.loads(policy.info.to_json()), "seed": 7})

    embed_policy_info(path, other)

    keys = [p.key for p in onnx.load(str(path)).metadata_props]
    assert keys.count(METADATA_KEY) == 1
    assert embedded_policy_info(path) == other


def test_a_broken_onnx_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / ONNX_FILE
    path.write_bytes(b"not an onnx model")
    with pytest.raises(PolicyError, match="not a loadable ONNX model"):
        OnnxPolicy(path)
