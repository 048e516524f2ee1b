"""Source models: a trained artifact loaded so that it can both predict and export itself to ONNX.

One class per framework behind ``SourceModel``; ``load_source`` picks it from model.json's ``framework``
and the artifact's file name. Heavy libraries (torch, skl2onnx, skops, onnx) are imported inside methods.
"""

from __future__ import annotations

import importlib
import math
import shutil
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from controller.translation.errors import InvalidInput, TranslationFailed, UnsupportedFramework

PREDICT_BATCH = 256
# artifact suffix -> (framework, format) ; one artifact per training job, see TRAINING_CONTRACT
FORMATS: dict[str, tuple[str, str]] = {
    ".pt2": ("pytorch", "torch.export"),
    ".pt": ("pytorch", "torchscript"),
    ".skops": ("sklearn", "skops"),
    ".pkl": ("sklearn", "pickle"),
    ".onnx": ("onnx", "onnx"),
}
SUPPORTED_FRAMEWORKS: tuple[str, ...] = ("pytorch", "sklearn", "onnx")
_DTYPES = {"float32": np.float32, "float64": np.float64}


@dataclass(frozen=True)
class ModelMeta:
    """The parts of model.json that translation needs."""

    framework: str
    input_name: str
    input_shape: tuple[int | None, ...]
    input_dtype: str
    output_name: str | None = None
    classes: tuple[Any, ...] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelMeta:
        """Parse and check model.json (``UnsupportedFramework`` / ``InvalidInput`` when unusable)."""
        if not isinstance(data, dict):
            raise InvalidInput("model.json must be a JSON object")
        framework = str(data.get("framework", ""))
        if framework not in SUPPORTED_FRAMEWORKS:
            raise UnsupportedFramework(framework, SUPPORTED_FRAMEWORKS)
        shape = data.get("input_shape")
        if (
            not isinstance(shape, list)
            or not shape
            or not all(d is None or isinstance(d, int) for d in shape)
        ):
            raise InvalidInput(f"model.json input_shape must be a list like [null, 1, 8, 8], got {shape!r}")
        dtype = str(data.get("input_dtype", "float32"))
        if dtype not in _DTYPES:
            raise InvalidInput(f"model.json input_dtype {dtype!r} is not one of {sorted(_DTYPES)}")
        classes = data.get("classes")
        return cls(
            framework=framework,
            input_name=str(data.get("input_name") or "x"),
            input_shape=tuple(shape),
            input_dtype=dtype,
            output_name=str(data["output_name"]) if data.get("output_name") else None,
            classes=tuple(classes) if isinstance(classes, list) and classes else None,
        )

    @property
    def dtype(self) -> type[np.floating[Any]]:
        return _DTYPES[self.input_dtype]  # type: ignore[return-value]


def prepare_samples(samples: Any, meta: ModelMeta) -> NDArray[Any]:
    """The samples as a contiguous array of the model's input dtype and shape.

    An array whose per-sample size matches but whose layout differs (digits as ``[N, 1, 8, 8]`` for a model
    that takes ``[N, 64]``) is reshaped; anything else is ``InvalidInput``.
    """
    x = np.asarray(samples)
    if x.dtype.kind not in "fiu" or x.ndim < 1 or len(x) == 0:
        raise InvalidInput(f"samples must be a non-empty numeric array, got dtype {x.dtype} shape {x.shape}")
    want = meta.input_shape[1:]
    if any(d is None for d in want):  # free dimensions other than the batch: take the samples as they are
        if x.ndim != len(meta.input_shape):
            raise InvalidInput(f"samples of shape {x.shape} do not fit input_shape {list(meta.input_shape)}")
    elif x.shape[1:] != want:
        per_sample = math.prod(d for d in want if d is not None)
        if x[0].size != per_sample:
            raise InvalidInput(f"samples of shape {x.shape} do not fit input_shape {list(meta.input_shape)}")
        x = x.reshape((len(x), *[int(d) for d in want if d is not None]))
    return np.ascontiguousarray(x, dtype=meta.dtype)


def _quietly(call: Callable[[], Any]) -> Any:
    """Run a third-party call with its warnings silenced (they go nowhere useful from a worker)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call()


def _batched(predict: Callable[[NDArray[Any]], NDArray[Any]], x: NDArray[Any]) -> NDArray[Any]:
    parts = [np.asarray(predict(x[i : i + PREDICT_BATCH])) for i in range(0, len(x), PREDICT_BATCH)]
    return np.concatenate(parts, axis=0)


class SourceModel(ABC):
    """A loaded artifact: predicts on samples and writes itself as ONNX."""

    framework: ClassVar[str]

    def __init__(self, artifact: Path, meta: ModelMeta, source_format: str) -> None:
        self.artifact = artifact
        self.meta = meta
        self.source_format = source_format

    @property
    def classes(self) -> tuple[Any, ...] | None:
        """Class labels in output-column order, when known."""
        return self.meta.classes

    @abstractmethod
    def predict(self, x: NDArray[Any]) -> NDArray[Any] | None:
        """The model's outputs (probabilities or raw outputs) on ``x``; None if it cannot be run here."""

    @abstractmethod
    def to_onnx(self, path: Path, opset: int) -> str:
        """Write the model as ONNX to ``path`` (one self-contained file); return the output to compare."""


class TorchSource(SourceModel):
    """A ``torch.export`` program (``.pt2``) or a TorchScript module (``.pt``)."""

    framework = "pytorch"

    def __init__(self, artifact: Path, meta: ModelMeta, source_format: str) -> None:
        super().__init__(artifact, meta, source_format)
        import torch

        try:
            if source_format == "torch.export":
                self.program: Any = _quietly(lambda: torch.export.load(str(artifact)))
                self.module: Any = self.program.module()
            else:
                self.program = None
                jit_load: Any = torch.jit.load
                self.module = _quietly(lambda: jit_load(str(artifact), map_location="cpu"))
                self.module.eval()
        except Exception as exc:
            raise TranslationFailed(f"cannot load {source_format} artifact {artifact.name}: {exc}") from exc

    def predict(self, x: NDArray[Any]) -> NDArray[Any]:
        import torch

        def run(batch: NDArray[Any]) -> NDArray[Any]:
            with torch.no_grad():
                out = self.module(torch.from_numpy(batch))
            if isinstance(out, tuple | list):
                out = out[0]
            return out.detach().cpu().numpy()  # type: ignore[no-any-return]

        try:
            return _quietly(lambda: _batched(run, x))  # type: ignore[no-any-return]
        except Exception as exc:
            raise TranslationFailed(f"the source model failed on the samples: {exc}") from exc

    def to_onnx(self, path: Path, opset: int) -> str:
        import torch

        output_name = self.meta.output_name or "output"
        example = (torch.zeros((2, *[d or 1 for d in self.meta.input_shape[1:]]), dtype=torch.float32),)
        if self.meta.dtype is np.float64:
            example = (example[0].double(),)
        common: dict[str, Any] = {
            "opset_version": opset,
            "input_names": [self.meta.input_name],
            "output_names": [output_name],
            "verbose": False,
        }
        try:
            if self.program is not None:  # the dynamo exporter; the program keeps its dynamic batch size
                _quietly(
                    lambda: torch.onnx.export(
                        self.program, example, str(path), dynamo=True, external_data=False, **common
                    )
                )
            else:  # TorchScript can only go through the legacy exporter
                _quietly(
                    lambda: torch.onnx.export(
                        self.module,
                        example,
                        str(path),
                        dynamo=False,
                        dynamic_axes={self.meta.input_name: {0: "batch"}},
                        **common,
                    )
                )
        except Exception as exc:
            raise TranslationFailed(f"torch.onnx.export failed for {self.artifact.name}: {exc}") from exc
        return output_name


class SklearnSource(SourceModel):
    """A scikit-learn estimator saved with skops (``.skops``) or, if explicitly allowed, pickle (``.pkl``)."""

    framework = "sklearn"

    def __init__(self, artifact: Path, meta: ModelMeta, source_format: str, *, allow_pickle: bool) -> None:
        super().__init__(artifact, meta, source_format)
        if source_format == "skops":
            skops_io: Any = importlib.import_module("skops.io")  # no type information shipped
            try:
                self.model: Any = _quietly(lambda: skops_io.load(artifact, trusted=None))
            except Exception as exc:  # skops refuses types it does not trust before building anything
                untrusted = self._untrusted(artifact)
                why = f"it contains types skops does not trust: {untrusted}" if untrusted else str(exc)
                raise TranslationFailed(f"cannot load {artifact.name}: {why}") from exc
        else:
            if not allow_pickle:
                raise TranslationFailed(
                    f"{artifact.name} is a pickle, which runs code when loaded; pass allow_pickle=True "
                    "(only in an isolated worker) or ship the model as .skops"
                )
            joblib: Any = importlib.import_module("joblib")
            try:
                self.model = _quietly(lambda: joblib.load(artifact))
            except Exception as exc:
                raise TranslationFailed(f"cannot unpickle {artifact.name}: {exc}") from exc
        if not hasattr(self.model, "predict"):
            raise TranslationFailed(f"{artifact.name} does not hold a scikit-learn estimator")

    @staticmethod
    def _untrusted(artifact: Path) -> list[str]:
        skops_io: Any = importlib.import_module("skops.io")
        try:
            return list(skops_io.get_untrusted_types(file=artifact))
        except Exception:
            return []

    @property
    def is_classifier(self) -> bool:
        return hasattr(self.model, "predict_proba") and hasattr(self.model, "classes_")

    @property
    def classes(self) -> tuple[Any, ...] | None:
        if self.is_classifier:
            return tuple(c.item() if hasattr(c, "item") else c for c in self.model.classes_)
        return self.meta.classes

    def predict(self, x: NDArray[Any]) -> NDArray[Any]:
        method = self.model.predict_proba if self.is_classifier else self.model.predict
        try:
            return _quietly(lambda: _batched(method, x))  # type: ignore[no-any-return]
        except Exception as exc:
            raise TranslationFailed(f"the source model failed on the samples: {exc}") from exc

    def to_onnx(self, path: Path, opset: int) -> str:
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

        tensor_type = DoubleTensorType if self.meta.dtype is np.float64 else FloatTensorType
        initial_types = [(self.meta.input_name, tensor_type([None, *self.meta.input_shape[1:]]))]
        options = {id(self.model): {"zipmap": False}} if self.is_classifier else None
        try:
            onx = _quietly(
                lambda: to_onnx(
                    self.model,
                    initial_types=initial_types,
                    options=options,
                    target_opset={"": opset, "ai.onnx.ml": 3},
                )
            )
        except Exception as exc:
            raise TranslationFailed(f"skl2onnx cannot convert {type(self.model).__name__}: {exc}") from exc
        path.write_bytes(onx.SerializeToString())
        outputs = [o.name for o in onx.graph.output]
        if self.is_classifier:
            return "probabilities" if "probabilities" in outputs else outputs[-1]
        return str(outputs[0])


class OnnxSource(SourceModel):
    """An artifact that is ONNX already: checked, copied, and compared with the ONNX reference evaluator."""

    framework = "onnx"

    def __init__(self, artifact: Path, meta: ModelMeta, source_format: str) -> None:
        super().__init__(artifact, meta, source_format)
        import onnx

        try:
            self.model: Any = onnx.load(str(artifact))
            onnx.checker.check_model(self.model)
        except Exception as exc:
            raise TranslationFailed(f"{artifact.name} is not a valid ONNX model: {exc}") from exc
        inputs = [i.name for i in self.model.graph.input]
        if meta.input_name not in inputs:
            raise InvalidInput(
                f"model.json input_name {meta.input_name!r} is not an input of the model: {inputs}"
            )
        self.output_name = meta.output_name or self._first_float_output()

    def _first_float_output(self) -> str:
        from onnx import TensorProto

        floats = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16}
        for output in self.model.graph.output:
            if output.type.tensor_type.elem_type in floats:
                return str(output.name)
        raise InvalidInput("the ONNX model has no floating-point output; name one as model.json output_name")

    def predict(self, x: NDArray[Any]) -> NDArray[Any] | None:
        from onnx.reference import ReferenceEvaluator

        try:
            evaluator: Any = ReferenceEvaluator(self.model)

            def run(batch: NDArray[Any]) -> NDArray[Any]:
                return evaluator.run([self.output_name], {self.meta.input_name: batch})[0]  # type: ignore[no-any-return]

            return _quietly(lambda: _batched(run, x))  # type: ignore[no-any-return]
        except Exception:  # an operator the reference evaluator lacks: nothing to compare with
            return None

    def to_onnx(self, path: Path, opset: int) -> str:
        if path.resolve() != self.artifact.resolve():
            shutil.copyfile(self.artifact, path)
        return self.output_name


def load_source(artifact: Path, model_json: dict[str, Any], *, allow_pickle: bool = False) -> SourceModel:
    """Load ``artifact`` as described by ``model_json``.

    Raises ``UnsupportedFramework`` (framework or file format we do not translate), ``InvalidInput``
    (model.json unusable, or naming another framework than the file) or ``TranslationFailed``.
    """
    meta = ModelMeta.from_json(model_json)
    if not artifact.is_file():
        raise TranslationFailed(f"artifact not found: {artifact}")
    known = FORMATS.get(artifact.suffix.lower())
    if known is None:
        formats = ", ".join(f"{suffix} ({fw})" for suffix, (fw, _) in FORMATS.items())
        raise UnsupportedFramework(
            meta.framework,
            SUPPORTED_FRAMEWORKS,
            f"unknown artifact format {artifact.name!r}; supported: {formats}",
        )
    framework, source_format = known
    if framework != meta.framework:
        raise InvalidInput(f"model.json says framework {meta.framework!r} but {artifact.name} is {framework}")
    if framework == "pytorch":
        return TorchSource(artifact, meta, source_format)
    if framework == "sklearn":
        return SklearnSource(artifact, meta, source_format, allow_pickle=allow_pickle)
    return OnnxSource(artifact, meta, source_format)
