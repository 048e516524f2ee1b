"""An FL job's parameters as registry artifacts: the final global ``.npz`` -> a ``torch.export`` program
(``model.pt2``, what the translator turns into ONNX), and a ``.pt2``'s weights back to arrays (to start a
job from an earlier version) **without unpickling anything**: only raw, contiguous tensors listed in the
archive's weights config are read; a program whose weights are pickled is refused.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["ArtifactError", "check_params", "export_program", "load_npz", "read_program_params"]

# torch._export.serde.schema.ScalarType -> numpy
_DTYPES: dict[int, Any] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float16,
    7: np.float32,
    8: np.float64,
    12: np.bool_,
}
MAX_PARAMS_BYTES = 2 * 1024**3


class ArtifactError(ValueError):
    """Parameters that do not fit the network, or an artifact that cannot be read safely."""


def load_npz(path: Path) -> dict[str, NDArray[Any]]:
    """Arrays of an ``.npz`` (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: np.asarray(npz[name]) for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{path.name} is not a readable .npz: {exc}") from exc


def check_params(network: str, seed: int, params: Mapping[str, NDArray[Any]]) -> None:
    """ArtifactError unless ``params`` has exactly the network's parameter names and shapes."""
    from edge_agent.learning.models import build_model

    expected = {k: tuple(v.shape) for k, v in build_model(network, seed).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in params.items()}
    if set(expected) != set(got):
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        raise ArtifactError(
            f"the parameters do not fit network {network!r}: missing {missing}, unexpected {extra}"
        )
    wrong = [f"{k}: {got[k]} != {expected[k]}" for k in sorted(expected) if got[k] != expected[k]]
    if wrong:
        raise ArtifactError(f"the parameters do not fit network {network!r}: {'; '.join(wrong)}")


def export_program(
    network: str, seed: int, params: Mapping[str, NDArray[Any]], input_shape: list[int | None], path: Path
) -> None:
    """Build the network, load ``params`` and save it as a ``torch.export`` program with a dynamic batch
    dimension (float32 input of ``input_shape``)."""
    import torch

    from edge_agent.learning.models import build_model

    check_params(network, seed, params)
    model = build_model(network, seed)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params.items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    example = (torch.zeros((2, *[d or 1 for d in input_shape[1:]]), dtype=torch.float32),)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
        except Exception as exc:  # torch's export errors are many and varied
            raise ArtifactError(f"torch.export of network {network!r} failed: {exc}") from exc
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, str(path))


def read_program_params(path: Path) -> dict[str, NDArray[Any]]:
    """The weights of a ``torch.export`` archive (``.pt2``) as arrays, read from the archive's raw tensor
    payloads only (pickled weights are refused: loading them would run code)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            configs = [n for n in names if n.endswith("/data/weights/model_weights_config.json")]
            if len(configs) != 1:
                raise ArtifactError(f"{path.name} is not a torch.export archive (no weights config)")
            base = configs[0].rsplit("/", 1)[0]
            config = json.loads(archive.read(configs[0]))["config"]
            out: dict[str, NDArray[Any]] = {}
            total = 0
            for fqn, meta in config.items():
                if meta.get("use_pickle"):
                    raise ArtifactError(f"{path.name}: weight {fqn!r} is pickled; refusing to load it")
                tensor = meta["tensor_meta"]
                dtype = _DTYPES.get(int(tensor["dtype"]))
                if dtype is None:
                    raise ArtifactError(f"{path.name}: weight {fqn!r} has an unsupported dtype")
                shape = tuple(int(s["as_int"]) for s in tensor["sizes"])
                strides = tuple(int(s["as_int"]) for s in tensor["strides"])
                offset = int(tensor["storage_offset"]["as_int"])
                if strides != _contiguous(shape) or offset != 0:
                    raise ArtifactError(f"{path.name}: weight {fqn!r} is not stored contiguously")
                raw = archive.read(f"{base}/{meta['path_name']}")
                count = int(np.prod(shape, dtype=np.int64)) if shape else 1
                total += len(raw)
                if total > MAX_PARAMS_BYTES:
                    raise ArtifactError(f"{path.name}: weights larger than {MAX_PARAMS_BYTES} bytes")
                array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"), count=count)
                out[fqn] = array.reshape(shape).astype(np.dtype(dtype).newbyteorder("="))
            return out
    except (zipfile.BadZipFile, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ArtifactError):
            raise
        raise ArtifactError(f"{path.name} is not a readable torch.export archive: {exc}") from exc


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= max(dim, 1)
    return tuple(reversed(strides))
