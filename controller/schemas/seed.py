"""Bodies of the seed's routes (:mod:`controller.api.seed_compat`), in the seed's shapes (D3.4 section 4.3
and tables 10-17): exactly the fields the seed's answers show, nothing more."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SeedDatasetCreated(BaseModel):
    """``POST /dataset`` (seed 4.3: ``{"dataset_id": ...}``)."""

    dataset_id: str


class SeedModelCreated(BaseModel):
    """``POST /model`` (seed 4.3: ``{"model_id": ...}``); the training job it started is in the
    ``X-Fedge-Job-Id`` header."""

    model_id: str


class SeedDatasetContract(BaseModel):
    """``GET /contract/{address}`` of a dataset (seed 4.3, table 11)."""

    organization_id: str
    samples_dimension: str
    size_bytes: int
    hash: str = Field(description="MD5 of the dataset (the seed's field); fedge checks its SHA-256 too")


class SeedModelParams(BaseModel):
    developer_id: str
    organization_id: str
    train_image_hash: str
    res_hash: str | None = Field(description="SHA-256 of the trained artifact once verified, else null")


class SeedDataParams(BaseModel):
    dataset_id: str


class SeedModelContract(BaseModel):
    """``GET /contract/{address}`` of a model, and ``GET /model/{id}/metadata`` (seed 4.3, table 13)."""

    model_params: SeedModelParams
    data_params: SeedDataParams
