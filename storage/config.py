"""Storage settings: where a run lives, how its arrays are laid out, and how much of it may exist at once."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ActivationDtype = Literal["float32", "float16", "bfloat16"]

# fsspec/s3fs option names that carry a secret; they belong in the AWS environment or profile, not a config
# that is copied to suite.json, Prefect's parameters and every worker's logs.
_CREDENTIAL_OPTIONS = {"key", "secret", "token", "session_token", "password", "aws_access_key_id",
                       "aws_secret_access_key", "aws_session_token", "access_key", "secret_key"}


class StorageConfig(BaseModel):
    """The storage root and array layout shared by every stage.

    `storage_options` go to fsspec (an S3 `endpoint_url`, say). Credentials are deliberately not accepted
    there: they come from the standard AWS environment and profile so they never land in `suite.json`.
    """

    model_config = ConfigDict(extra="forbid")

    root: str = "runs/tiny"
    storage_options: dict[str, Any] = Field(default_factory=dict)
    activation_dtype: ActivationDtype = "bfloat16"
    chunk_rows: int = Field(4096, gt=0, description="rows per activation chunk (MBs, not KBs, at real width)")
    shard_chunks: int = Field(16, ge=1, description="chunks per storage object (zarr sharding); 1 = one object "
                                                    "per chunk. An extract unit buffers one shard per (site, layer)")
    budget_bytes: int | None = Field(None, gt=0, description="most bytes of activations (extracted + shuffled) "
                                                             "on storage at once; the suite then runs in waves")
    keep_activations: bool = Field(False, description="with budget_bytes: keep each wave's activations after its "
                                                      "SAEs are evaluated (default: free them)")

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, v: dict[str, Any]) -> dict[str, Any]:
        def walk(d: dict, where: str):
            for k, val in d.items():
                if k.lower() in _CREDENTIAL_OPTIONS:
                    raise ValueError(f"{where}{k}: credentials are not read from the config; set "
                                     "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE instead")
                if isinstance(val, dict):
                    walk(val, f"{where}{k}.")
        walk(v, "")
        return v
