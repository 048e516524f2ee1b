"""Run one translation in this process and print its outcome as ONE JSON line on stdout.

    python -m controller.translation.worker --artifact model.pt2 --model-json model.json \\
        --samples samples.npz --out-dir out/ [--quantize] [--tolerance 1e-4] [--opset 18] \\
        [--threads 1] [--allow-pickle]

``samples.npz`` holds ``x`` and optionally ``y`` (labels). The line is ``{"ok": true, "result": {...}}``
(``TranslationResult.to_dict``) or ``{"ok": false, "error": {...}}`` (``TranslationError.to_json``).
Exit status: 0 translated, 3 translation error, 2 bad arguments. Everything else the libraries print
goes to stderr. Meant to be started by ``translate_in_subprocess``, so that loading an untrusted artifact
(a pickle, a TorchScript archive) happens in a process that can be killed and thrown away.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_BAD_ARGS, EXIT_TRANSLATION_ERROR = 0, 2, 3


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m controller.translation.worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--model-json", type=Path, required=True, help="path to the artifact's model.json")
    parser.add_argument("--samples", type=Path, required=True, help=".npz with 'x' and optional 'y'")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quantize", action="store_true")
    parser.add_argument("--allow-pickle", action="store_true")
    return parser.parse_args(argv)


def _work(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from controller.translation import translate
    from controller.translation.errors import InvalidInput, TranslationError, TranslationFailed

    try:
        try:
            model_json = json.loads(args.model_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"cannot read model.json {args.model_json}: {exc}") from None
        try:
            with np.load(args.samples, allow_pickle=False) as data:
                x = data["x"]
                y = data["y"] if "y" in data.files else None
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidInput(f"cannot read samples {args.samples} (an .npz with 'x'): {exc}") from None
        try:
            result = translate(
                args.artifact,
                model_json,
                x,
                labels=y,
                tolerance=args.tolerance,
                quantize=args.quantize,
                out_dir=args.out_dir,
                opset=args.opset,
                allow_pickle=args.allow_pickle,
                threads=max(args.threads, 1),
            )
        except TranslationError:
            raise
        except Exception as exc:  # a library failing in a way we did not foresee: still one JSON line
            raise TranslationFailed(f"unexpected {type(exc).__name__}: {exc}") from exc
    except TranslationError as exc:
        return {"ok": False, "error": exc.to_json()}
    return {"ok": True, "result": result.to_dict()}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.threads > 0:  # torch reads it when imported (lazily, by the translation)
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    # Libraries print progress to stdout; keep it for our one line by pointing fd 1 at stderr meanwhile.
    sys.stdout.flush()
    saved_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        outcome = _work(args)
    finally:
        sys.stdout.flush()
        os.dup2(saved_stdout, 1)
        os.close(saved_stdout)
    print(json.dumps(outcome), flush=True)
    return EXIT_OK if outcome["ok"] else EXIT_TRANSLATION_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
