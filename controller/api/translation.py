"""Translation: a trained model version -> a validated ONNX version (optionally an int8 variant)."""

from __future__ import annotations

from fastapi import APIRouter

from controller.api.deps import Developer, RegistryDep, SettingsDep
from controller.schemas.translation import TranslateRequest, TranslateResult

router = APIRouter(tags=["translation"])


@router.post("/v1/models/{model_id}/translate", status_code=201, response_model=TranslateResult)
def translate_model(
    model_id: str,
    registry: RegistryDep,
    settings: SettingsDep,
    caller: Developer,
    body: TranslateRequest | None = None,
) -> TranslateResult:
    """Translate a trained version to ONNX, run source and ONNX Runtime side by side on held-out samples
    and refuse (422) if the largest output difference exceeds the tolerance. The ONNX hash is recorded
    on chain, linked to its source version."""
    from controller.translation.service import translate_version

    return translate_version(registry, settings, model_id, body or TranslateRequest(), caller.subject)
