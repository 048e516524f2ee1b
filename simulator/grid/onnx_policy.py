"""A grid policy exported to ONNX, self-describing: the network and its ``policy.json`` in one file.

The export writes the policy description (:class:`~simulator.grid.rl.PolicyInfo` as JSON) into the ONNX
model's ``metadata_props`` under :data:`METADATA_KEY`, so one SHA-256 (the one recorded on chain when the
file is registered) covers both the network and the environment settings it must run with. The runner here
needs only numpy and onnxruntime (what a device has): no torch, no Stable-Baselines3. Embedding needs the
``onnx`` package (the ``grid`` extra).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedge_common.files import atomic_writer
from simulator.grid.env import LoadShiftEnv
from simulator.grid.errors import MissingExtraError, PolicyError
from simulator.grid.policies import Policy
from simulator.grid.policy_info import PolicyInfo

METADATA_KEY = "fedge.grid.policy"
"""``metadata_props`` key of the embedded policy description (JSON of :class:`PolicyInfo`)."""


def parse_policy_info(text: str, source: str) -> PolicyInfo:
    """A :class:`PolicyInfo` from its JSON; :class:`PolicyError` naming ``source`` when invalid."""
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        return PolicyInfo(**raw)
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"{source} holds no valid policy description: {exc}") from exc


def embed_policy_info(path: Path, info: PolicyInfo) -> None:
    """Write ``info`` into the ONNX file's ``metadata_props`` (replacing an earlier copy), in place."""
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise MissingExtraError("onnx") from exc
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    with atomic_writer(path, mode=None) as fh:
        onnx.save(model, fh)


def _session(path: Path) -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise MissingExtraError("onnxruntime") from exc
    if not path.is_file():
        raise PolicyError(f"{path} does not exist")
    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable models
        raise PolicyError(f"{path} is not a loadable ONNX model: {exc}") from exc


def embedded_policy_info(path: Path) -> PolicyInfo | None:
    """The policy description embedded in an ONNX file, or None when it has none."""
    meta = _session(path).get_modelmeta().custom_metadata_map
    text = meta.get(METADATA_KEY)
    return None if text is None else parse_policy_info(text, f"{path} ({METADATA_KEY})")


class OnnxPolicy(Policy):
    """A policy exported to ONNX, run with onnxruntime (what a device runs).

    ``info`` defaults to the description embedded in the file; a file without one needs ``info``."""

    def __init__(self, path: Path | str, info: PolicyInfo | None = None) -> None:
        path = Path(path)
        self._session = _session(path)
        text = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        embedded = None if text is None else parse_policy_info(text, f"{path} ({METADATA_KEY})")
        if info is None:
            if embedded is None:
                raise PolicyError(
                    f"{path} carries no policy description ({METADATA_KEY}); re-export it with "
                    "'fedge grid export' or give the policy.json"
                )
            info = embedded
        self.info = info
        self.embedded = embedded
        self.name = f"onnx-{info.algorithm}"
        names = [i.name for i in self._session.get_inputs()]
        if names != ["obs"]:
            raise PolicyError(f"{path} must take one input 'obs', it takes {names}")

    def predict(self, obs: NDArray[np.float32]) -> NDArray[np.int64]:
        out = self._session.run(["action"], {"obs": np.asarray(obs, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.int64)

    def act(self, obs: NDArray[np.float32], env: LoadShiftEnv) -> Any:
        action = self.predict(np.asarray(obs, dtype=np.float32)[np.newaxis, :])[0]
        return int(action) if self.info.action_kind == "flat" else action
