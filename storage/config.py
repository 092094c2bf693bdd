"""Storage settings: where a run lives and how its arrays are laid out."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ActivationDtype = Literal["float32", "float16", "bfloat16"]


class StorageConfig(BaseModel):
    """The storage root and array layout shared by every stage.

    `storage_options` go to fsspec (an S3 `endpoint_url`, say). Credentials are deliberately not a field:
    they come from the standard AWS environment and profile so they never land in `suite.json`.
    """

    model_config = ConfigDict(extra="forbid")

    root: str = "runs/tiny"
    storage_options: dict[str, Any] = Field(default_factory=dict)
    activation_dtype: ActivationDtype = "bfloat16"
    chunk_rows: int = Field(4096, gt=0, description="rows per activation chunk (MBs, not KBs, at real width)")
