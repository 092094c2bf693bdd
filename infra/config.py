"""How units are scheduled: Ray resources per unit, retries, and the Prefect server."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class OrchestrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ray_address: str | None = Field(None, description="existing Ray cluster ('auto' inside it); None: local")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray instance (default: all)")
    cpus_per_unit: dict[str, float] = Field(default_factory=dict, description="per stage, over the stage "
                                                                              "registry's default of 1")
    gpus_per_unit: dict[str, float] = Field(default_factory=dict, description="e.g. {extract: 1, train: 1}")
    task_retries: int = Field(1, ge=0, description="Prefect retries of a unit that raised")
    retry_delay_seconds: list[float] = Field(default_factory=lambda: [2.0, 10.0])
    worker_retries: int = Field(2, ge=0, description="Ray retries of a unit whose worker died (OOM, SIGKILL)")
    prefect_home: str = Field("runs/.prefect", description="where the local Prefect server keeps its database")
