"""Stage configurations: YAML files validated by pydantic, overridable from the CLI.

The shared base every stage's config builds on (``StageConfig``, ``RayConfig``) and
loading: read YAML, apply dotted overrides, validate, and say which key is wrong and where
it came from. Each stage's own config lives with the stage (``selfee/<stage>/config.py``)."""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from selfee.errors import ConfigError

C = TypeVar("C", bound="StageConfig")


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)
    # keys renamed in this release: old name -> new name, still accepted (with a warning)
    renamed: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not cls.renamed.keys() & data.keys():
            return data
        data = dict(data)
        for old, new in cls.renamed.items():
            if old in data:
                if new in data:
                    raise ValueError(f"{old} is the old name of {new}: give {new} only")
                warn_renamed(old, new)
                data[new] = data.pop(old)
        return data

    def missing(self) -> str | None:
        """What a run still lacks that has no default — one line naming the options — or
        None. The CLI asks before anything starts (no log, no Ray, no teacher); jobs call
        ``require`` for callers that skip the CLI."""
        return None

    def require(self) -> None:
        if (missing := self.missing()) is not None:
            raise ConfigError(missing)


def with_new_names(saved: dict[str, Any], renamed: dict[str, str]) -> dict[str, Any]:
    """Settings an earlier run saved, under today's key names (a rename alone never blocks
    ``--resume``)."""
    return {renamed.get(key, key): value for key, value in saved.items()}


def warn_renamed(old: str, new: str) -> None:
    warnings.warn(f"'{old}' is now '{new}'; the old name goes in the next release",
                  FutureWarning, stacklevel=2)  # fmt: skip


# A Ray Serve deployment that holds each request while it waits elsewhere (an ingress that
# relays to the model deployment, an API with added latency, a page held open by a
# browser) takes every request at once: Serve's default, 5, would queue the rest at the
# proxy. Load is limited where the work is done.
TAKE_EVERY_REQUEST = 1000


class RayConfig(StageConfig):
    address: str | None = Field(
        None,
        description="Ray cluster address; empty: $RAY_ADDRESS (as `ray job submit` sets it), "
        "else an embedded Ray of the job's own",
    )
    num_cpus: int | None = Field(None, gt=0, description="CPUs for an embedded Ray")
    dashboard: bool = Field(
        True, description="start the Ray dashboard with an embedded Ray (127.0.0.1:8265 or next)"
    )


def is_config_model(annotation: Any) -> bool:
    """Whether a field holds a nested config (its keys are dotted: ``teacher.rpm``)."""
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> C:
    """Read ``path`` (YAML), apply dotted ``overrides`` and validate as ``cls``."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of keys to values")
        data = loaded
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, cls, source, set(overrides or {}))) from None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[leaf] = value


def describe_validation_error(
    err: ValidationError, cls: type[BaseModel], source: str, cli_keys: set[str]
) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"])
        cli_key = next((k for k in cli_keys if key == k or key.startswith(k + ".")), None)
        if cli_key is not None:
            origin = f"option --{cli_key.replace('_', '-')}"
        else:
            origin = f"key '{key}' in {source}"
        if item["type"] == "extra_forbidden":
            hint = _suggest(cls, [str(p) for p in item["loc"]])
            lines.append(f"unknown {origin}{hint}")
        elif item["type"] == "missing":
            lines.append(f"missing --{key.replace('_', '-')} (or '{key}' in a --config file)")
        else:
            lines.append(f"invalid {origin}: {item['msg']} (got {item.get('input')!r})")
    return "; ".join(lines)


def _suggest(cls: type[BaseModel], loc: list[str]) -> str:
    model: Any = cls
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None or not is_config_model(field.annotation):
            return ""
        model = field.annotation
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return (
        f" (did you mean '{close[0]}'?)"
        if close
        else f" (known keys: {', '.join(model.model_fields)})"
    )


def dump_config(config: StageConfig) -> dict[str, Any]:
    """The config as plain data for manifests and logs."""
    return config.model_dump(mode="json")
