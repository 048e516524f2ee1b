"""Translation of trained artifacts to ONNX, validated against the source model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.translation import (
    SUPPORTED_FRAMEWORKS,
    InvalidInput,
    TranslationFailed,
    TranslationRejected,
    TranslationResult,
    TranslationTimeout,
    UnsupportedFramework,
    check_equivalence,
    load_source,
    translate,
    translate_in_subprocess,
)
from tests.examples.helpers import Job, digits

N_SAMPLES = 1000


@pytest.fixture(scope="module")
def samples() -> tuple[Any, Any]:
    """The last 1,000 digits and their labels."""
    x, y = digits()
    return x[-N_SAMPLES:], y[-N_SAMPLES:]


@pytest.fixture(scope="module")
def cnn_translation(
    cnn_job: Job, samples: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory
) -> TranslationResult:
    """The CNN translated in the isolated worker, with int8 quantization tried."""
    x, y = samples
    return translate_in_subprocess(
        cnn_job.output / "model.pt2",
        cnn_job.model_json,
        x,
        labels=y,
        quantize=True,
        out_dir=tmp_path_factory.mktemp("cnn-onnx"),
        timeout_s=300,
    )


def _perturbed_copy(onnx_path: Path, target: Path) -> Path:
    """The ONNX model with noise added to its largest weight tensor: same inputs and outputs, other model."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    biggest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weights = numpy_helper.to_array(biggest)
    noise = np.random.default_rng(0).normal(0, 0.05, weights.shape).astype(weights.dtype)
    biggest.CopyFrom(numpy_helper.from_array(weights + noise, biggest.name))
    onnx.save(model, str(target))
    return target


def test_cnn_onnx_matches_the_source_within_1e_5_on_1000_samples(cnn_translation: TranslationResult) -> None:
    assert cnn_translation.framework == "pytorch"
    assert cnn_translation.source_format == "torch.export"
    assert cnn_translation.n_samples == N_SAMPLES
    assert cnn_translation.max_abs_diff is not None
    assert cnn_translation.max_abs_diff <= 1e-5
    assert cnn_translation.onnx_path.is_file()
    assert cnn_translation.opset == 18


def test_cnn_onnx_accuracy_equals_the_source_accuracy(cnn_translation: TranslationResult) -> None:
    assert cnn_translation.source_accuracy is not None
    assert cnn_translation.onnx_accuracy == cnn_translation.source_accuracy
    assert cnn_translation.source_accuracy > 0.9


def test_cnn_quantization_is_reported_kept_or_dropped_with_a_reason(
    cnn_translation: TranslationResult,
) -> None:
    quantized = cnn_translation.quantized

    assert quantized is not None
    assert quantized.reference == "labels"
    assert quantized.accuracy is not None and quantized.accuracy_loss_points is not None
    assert quantized.fp32_latency_ms is not None and quantized.int8_latency_ms is not None
    assert quantized.reason
    if quantized.kept:
        assert quantized.path is not None and quantized.path.is_file()
        assert quantized.accuracy_loss_points <= 1.0
        assert quantized.int8_latency_ms <= quantized.fp32_latency_ms * 1.05
    else:
        assert quantized.path is None
        assert "slower" in quantized.reason or "accuracy loss" in quantized.reason


def test_result_is_written_beside_the_onnx_file(cnn_translation: TranslationResult) -> None:
    saved = json.loads((cnn_translation.onnx_path.parent / "translation.json").read_text())

    assert TranslationResult.from_dict(saved) == cnn_translation


def test_sklearn_model_translates(sklearn_job: Job, samples: tuple[Any, Any], tmp_path: Path) -> None:
    x, y = samples

    result = translate(
        sklearn_job.output / "model.skops",
        sklearn_job.model_json,
        x,
        labels=y,
        quantize=True,
        out_dir=tmp_path,
    )

    assert result.framework == "sklearn" and result.source_format == "skops"
    assert result.output_name == "probabilities"
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-5
    assert result.onnx_accuracy == result.source_accuracy
    assert result.source_accuracy is not None and result.source_accuracy > 0.9
    assert result.quantized is not None and not result.quantized.kept
    assert "nothing to quantize" in result.quantized.reason


def test_onnx_artifact_is_checked_against_the_reference_evaluator(
    cnn_translation: TranslationResult, samples: tuple[Any, Any], tmp_path: Path
) -> None:
    x, y = samples
    model_json = {
        "framework": "onnx",
        "input_name": "x",
        "input_shape": [None, 1, 8, 8],
        "input_dtype": "float32",
    }

    result = translate(cnn_translation.onnx_path, model_json, x[:200], labels=y[:200], out_dir=tmp_path)

    assert result.framework == "onnx"
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-5
    assert (tmp_path / "model.onnx").is_file()


def test_unsupported_framework_names_the_supported_ones(
    cnn_job: Job, samples: tuple[Any, Any], tmp_path: Path
) -> None:
    model_json = {**cnn_job.model_json, "framework": "tensorflow"}

    with pytest.raises(UnsupportedFramework) as caught:
        translate(cnn_job.output / "model.pt2", model_json, samples[0], out_dir=tmp_path)

    assert caught.value.framework == "tensorflow"
    assert caught.value.supported == SUPPORTED_FRAMEWORKS
    assert all(name in str(caught.value) for name in ("pytorch", "sklearn", "onnx"))


def test_unknown_artifact_format_is_unsupported(samples: tuple[Any, Any], tmp_path: Path) -> None:
    artifact = tmp_path / "model.h5"
    artifact.write_bytes(b"not a model")
    model_json = {"framework": "pytorch", "input_shape": [None, 1, 8, 8]}

    with pytest.raises(UnsupportedFramework, match=r"model\.h5"):
        translate(artifact, model_json, samples[0], out_dir=tmp_path / "out")


def test_worker_errors_are_raised_as_the_same_class(
    cnn_job: Job, samples: tuple[Any, Any], tmp_path: Path
) -> None:
    model_json = {**cnn_job.model_json, "framework": "tensorflow"}

    with pytest.raises(UnsupportedFramework) as caught:
        translate_in_subprocess(cnn_job.output / "model.pt2", model_json, samples[0][:10], out_dir=tmp_path)

    assert caught.value.supported == SUPPORTED_FRAMEWORKS


def test_perturbed_onnx_is_rejected(
    cnn_job: Job, cnn_translation: TranslationResult, samples: tuple[Any, Any], tmp_path: Path
) -> None:
    wrong = _perturbed_copy(cnn_translation.onnx_path, tmp_path / "wrong.onnx")
    source = load_source(cnn_job.output / "model.pt2", cnn_job.model_json)

    with pytest.raises(TranslationRejected) as caught:
        check_equivalence(source, wrong, samples[0], tolerance=1e-4)

    assert caught.value.max_abs_diff > caught.value.tolerance == 1e-4


def test_rejected_translation_leaves_no_onnx_file(
    cnn_job: Job,
    cnn_translation: TranslationResult,
    samples: tuple[Any, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from controller.translation._sources import TorchSource

    def faulty_export(self: TorchSource, path: Path, opset: int) -> str:  # an exporter bug
        _perturbed_copy(cnn_translation.onnx_path, path)
        return cnn_translation.output_name

    monkeypatch.setattr(TorchSource, "to_onnx", faulty_export)

    with pytest.raises(TranslationRejected):
        translate(cnn_job.output / "model.pt2", cnn_job.model_json, samples[0], out_dir=tmp_path)

    assert not (tmp_path / "model.onnx").exists()


def test_pickle_is_refused_unless_allowed(sklearn_job: Job, samples: tuple[Any, Any], tmp_path: Path) -> None:
    import joblib
    import skops.io

    pickled = tmp_path / "model.pkl"
    joblib.dump(skops.io.load(sklearn_job.output / "model.skops"), pickled)

    with pytest.raises(TranslationFailed, match="pickle"):
        translate(pickled, sklearn_job.model_json, samples[0], out_dir=tmp_path / "refused")
    result = translate(
        pickled, sklearn_job.model_json, samples[0], out_dir=tmp_path / "allowed", allow_pickle=True
    )

    assert result.source_format == "pickle"
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-5


def test_samples_that_do_not_fit_the_input_shape_are_invalid(cnn_job: Job, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="input_shape"):
        translate(cnn_job.output / "model.pt2", cnn_job.model_json, np.zeros((4, 3, 3)), out_dir=tmp_path)


def test_worker_that_runs_out_of_time_is_killed(
    cnn_job: Job, samples: tuple[Any, Any], tmp_path: Path
) -> None:
    with pytest.raises(TranslationTimeout):
        translate_in_subprocess(
            cnn_job.output / "model.pt2", cnn_job.model_json, samples[0], out_dir=tmp_path, timeout_s=0.5
        )


def test_worker_prints_one_json_line_for_an_error(tmp_path: Path) -> None:
    model_json = tmp_path / "model.json"
    model_json.write_text(json.dumps({"framework": "sklearn", "input_shape": [None, 64]}))
    argv = [
        sys.executable,
        "-m",
        "controller.translation.worker",
        "--artifact",
        str(tmp_path / "m.skops"),
        "--model-json",
        str(model_json),
        "--samples",
        str(tmp_path / "missing.npz"),
        "--out-dir",
        str(tmp_path),
    ]

    process = subprocess.run(argv, capture_output=True, text=True, timeout=60)

    assert process.returncode == 3
    (line,) = process.stdout.splitlines()
    outcome = json.loads(line)
    assert outcome["ok"] is False and outcome["error"]["error"] == "InvalidInput"


def test_importing_the_package_stays_cheap() -> None:
    code = "import sys, controller.translation; print(sorted({'torch', 'onnx', 'onnxruntime', 'skl2onnx', 'sklearn', 'skops'} & set(sys.modules)))"

    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert process.stdout.strip() == "[]", process.stderr


def test_public_names() -> None:
    import controller.translation as package

    assert set(package.__all__) == {
        "DEFAULT_OPSET",
        "DEFAULT_TOLERANCE",
        "SUPPORTED_FRAMEWORKS",
        "InvalidInput",
        "QuantizedResult",
        "SourceModel",
        "TranslationError",
        "TranslationFailed",
        "TranslationRejected",
        "TranslationResult",
        "TranslationTimeout",
        "UnsupportedFramework",
        "check_equivalence",
        "load_source",
        "make_session",
        "quantize_int8",
        "translate",
        "translate_in_subprocess",
        "worker_command",
    }
    assert all(hasattr(package, name) for name in package.__all__)


@pytest.mark.parametrize(
    "error",
    [
        TranslationRejected(0.5, 1e-4),
        TranslationRejected(float("inf"), 1e-4, "shapes differ"),
        UnsupportedFramework("tensorflow", SUPPORTED_FRAMEWORKS),
        TranslationTimeout(2.0),
        TranslationFailed("export failed"),
        InvalidInput("bad samples"),
    ],
)
def test_errors_round_trip_through_json(error: Exception) -> None:
    from controller.translation.errors import TranslationError, error_from_json

    assert isinstance(error, TranslationError)
    back = error_from_json(json.loads(json.dumps(error.to_json())))

    assert type(back) is type(error)
    assert vars(back) == vars(error)
