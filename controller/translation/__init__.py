"""Translate trained artifacts to ONNX, validated against the source model, optionally quantized to int8.

    from controller.translation import translate, translate_in_subprocess
    result = translate_in_subprocess(Path("out/model.pt2"), model_json, x_holdout, labels=y_holdout,
                                     out_dir=Path("onnx/"), quantize=True)

Frameworks: ``pytorch`` (``model.pt2`` from ``torch.export``, or TorchScript ``model.pt``), ``sklearn``
(``model.skops``; ``model.pkl`` only with ``allow_pickle``) and ``onnx`` (checked and cross-checked with the
ONNX reference evaluator). Importing this package is cheap: torch, skl2onnx, skops and ONNX Runtime are
imported when a translation runs. Errors: see ``controller.translation.errors``.
"""

from controller.translation._quantize import make_session, quantize_int8
from controller.translation._result import QuantizedResult, TranslationResult
from controller.translation._sources import SUPPORTED_FRAMEWORKS, SourceModel, load_source
from controller.translation._subprocess import translate_in_subprocess, worker_command
from controller.translation._translate import DEFAULT_OPSET, DEFAULT_TOLERANCE, check_equivalence, translate
from controller.translation.errors import (
    InvalidInput,
    TranslationError,
    TranslationFailed,
    TranslationRejected,
    TranslationTimeout,
    UnsupportedFramework,
)

__all__ = [
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
]
