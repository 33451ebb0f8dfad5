"""``selfee collect`` settings: which sources, how much of each, where the rows go."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from selfee.collect.sources import SOURCES
from selfee.config import RayConfig, StageConfig

SourceName = Literal[tuple(SOURCES)]  # type: ignore[valid-type]  # one list: collect.sources


class SourceSpec(StageConfig):
    name: SourceName = Field(description="which dataset format the files are in")
    path: Path = Field(description="a file, or a folder of .json/.jsonl/.parquet files")
    cap: int | None = Field(None, ge=0, description="keep at most this many rows")
    fraction: float = Field(1.0, gt=0, le=1, description="keep this sampled fraction")


class CollectConfig(StageConfig):
    """Collection: every SelFee source through Ray Data into Instruction rows."""

    sources: list[SourceSpec] = Field(
        default_factory=list,
        description="NAME=PATH per source (YAML: name, path, cap, fraction)",
        json_schema_extra={"cli_aliases": ["--source"]},
    )
    output: Path = Field(Path("outputs/collect"), description="output folder")
    jsonl: bool = Field(False, description="also write instructions.jsonl")
    seed: int = Field(0, description="seed for sampling and per-task caps")
    flan_per_task: int = Field(10, ge=1, description="FLAN rows kept per task")
    dedup: bool = Field(True, description="drop repeats of the same normalised instruction")
    skip_bad_rows: bool = Field(
        False, description="count and report malformed rows instead of stopping at the first"
    )
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("sources", mode="before")
    @classmethod
    def _name_equals_path(cls, value: Any) -> Any:
        """``--source gsm8k=train.jsonl`` on the command line."""
        if not isinstance(value, list):
            return value
        specs = []
        for item in value:
            if isinstance(item, str):
                name, sep, path = item.partition("=")
                if not sep or not path:
                    raise ValueError(f"a source is NAME=PATH, got {item!r}")
                item = {"name": name.strip(), "path": path.strip()}
            specs.append(item)
        return specs

    def missing(self) -> str | None:
        if not self.sources:
            return "no sources: give --source NAME=PATH (or 'sources' in the config)"
        return None
