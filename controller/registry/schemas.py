"""Request and response bodies of the registry (validated at the boundary)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any, Generic, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

_ID = Field(min_length=1, max_length=200)
T = TypeVar("T")


class DatasetMetadata(BaseModel):
    """The ``metadata`` JSON of a dataset upload (the seed's fields plus name/description)."""

    model_config = ConfigDict(extra="allow")

    organization_id: str = _ID
    samples_dimension: str = Field(min_length=1, max_length=200, description='e.g. "(1,32,32)"')
    name: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=10_000)

    @field_validator("samples_dimension", mode="before")
    @classmethod
    def _dims(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and all(isinstance(v, int) and v > 0 for v in value):
            return "(" + ",".join(str(v) for v in value) + ")"
        return value


class ModelParams(BaseModel):
    """Who developed the model (seed: model_params)."""

    developer_id: str = _ID
    organization_id: str = _ID


class DataParams(BaseModel):
    """What it is trained on (seed: data_params)."""

    dataset_id: str = Field(min_length=36, max_length=36)


class TrainingSpec(BaseModel):
    """How to train the model: a container image, or a Python entrypoint in an uploaded package."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["container", "python"]
    image: str | None = Field(default=None, max_length=500, description="container image reference")
    entrypoint: str | None = Field(default=None, max_length=300, description="module:function")
    package_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    framework: str | None = Field(default=None, max_length=50, description="pytorch, sklearn, ...")
    hyperparameters: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _complete(self) -> TrainingSpec:
        if self.kind == "container" and not self.image:
            raise ValueError("a container training spec needs 'image'")
        if self.kind == "python" and not self.entrypoint:
            raise ValueError("a python training spec needs 'entrypoint'")
        return self

    def digest(self) -> str:
        """The training image hash recorded on chain: the image's sha256 digest when pinned
        (``repo@sha256:...``), the package's SHA-256 for python specs, else SHA-256 of the canonical spec."""
        if self.kind == "container" and self.image and "@sha256:" in self.image:
            return self.image.rsplit("@sha256:", 1)[1][:64]
        if self.kind == "python" and self.package_sha256:
            return self.package_sha256
        return self.digest_of(self.model_dump())

    @staticmethod
    def digest_of(spec: dict[str, Any]) -> str:
        """SHA-256 of a spec's canonical JSON (sorted keys, no spaces)."""
        canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class ModelMetadata(BaseModel):
    """The ``metadata`` of a model registration (seed's form, or a JSON body)."""

    model_config = ConfigDict(populate_by_name=True)

    name: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=10_000)
    model_params: ModelParams = Field(validation_alias=AliasChoices("model_params", "model params"))
    data_params: DataParams = Field(validation_alias=AliasChoices("data_params", "data params"))
    training: TrainingSpec | None = None


class Page(BaseModel, Generic[T]):
    """One page of a listing."""

    items: list[T]
    total: int
    limit: int
    offset: int


class DatasetCreated(BaseModel):
    dataset_id: str
    sha256: str
    md5: str
    size_bytes: int


class DatasetOut(BaseModel):
    """A dataset's metadata as the API shows it."""

    dataset_id: str
    name: str | None
    description: str | None
    organization_id: str | None
    samples_dimension: str | None
    extra: dict[str, Any]
    filename: str | None
    content_type: str | None
    size_bytes: int | None
    sha256: str | None
    md5: str | None
    bucket: str
    object_key: str
    chain_address: str | None
    created_by: str | None
    created_at: dt.datetime


class ModelCreated(BaseModel):
    model_id: str
    status: str
    training_digest: str


class VersionOut(BaseModel):
    """One model version (artifact)."""

    version: int
    kind: str
    format: str | None
    filename: str | None
    content_type: str | None
    size_bytes: int | None
    sha256: str | None
    md5: str | None
    object_key: str
    source_version: int | None
    created_by: str | None
    created_at: dt.datetime


class ModelOut(BaseModel):
    """A model's metadata and its versions."""

    model_id: str
    status: str
    name: str | None
    description: str | None
    model_params: ModelParams
    data_params: DataParams
    training: dict[str, Any]
    training_digest: str
    chain_address: str | None
    created_by: str | None
    created_at: dt.datetime
    versions: list[VersionOut]
    chain: dict[str, Any] | None = Field(default=None, description="the on-chain record (metadata route)")


class Provenance(BaseModel):
    """Stored object vs SQL vs chain: ``verified`` only when all three SHA-256 agree."""

    subject: str
    sha256_recorded: str | None = Field(description="what the registry recorded at upload")
    sha256_recomputed: str | None = Field(description="the stored object's hash, recomputed now")
    sha256_chain: str | None = Field(description="the hash in the chain record")
    verified: bool
    chain: dict[str, Any] | None = None
    record: str | None = Field(default=None, description="which chain record holds the hash")


class ModelProvenance(BaseModel):
    """A model's chain record and the check of every version."""

    model_id: str
    chain: dict[str, Any] | None
    verified: bool = Field(description="every version matches its chain record")
    versions: list[Provenance]


class ArtifactStored(BaseModel):
    model_id: str
    version: int
    kind: str
    sha256: str
    md5: str
    size_bytes: int
    status: str
