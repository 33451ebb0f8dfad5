"""Every key of a stage's config as a command-line option of the same name.

``rpm: 60`` in YAML is ``--rpm 60``; nested keys use dots: ``--teacher.rpm 60``; a mapping
takes ``NAME=VALUE`` pairs: ``adapters: {math: runs/math}`` is ``--adapters math=runs/math``."""

from __future__ import annotations

import argparse
import json
import types
import typing
from typing import Any

from pydantic import BaseModel

from selfee.config import C, StageConfig, is_config_model, load_config, warn_renamed

_DEST_PREFIX = "config:"


def leaf_fields(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, annotation, pydantic FieldInfo) for every non-model field."""
    leaves = []
    for name, info in cls.model_fields.items():
        if is_config_model(info.annotation):
            leaves += leaf_fields(info.annotation, f"{prefix}{name}.")
        else:
            leaves.append((prefix + name, info.annotation, info))
    return leaves


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def _is_dict(annotation: Any) -> bool:
    return typing.get_origin(annotation) is dict


def _is_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return bool in typing.get_args(annotation)
    return False


def _option_help(info: Any) -> str:
    """The key's description and its default, unless the description already says what an
    unset key means ("default: ...", "empty: ...")."""
    text = info.description or ""
    if info.is_required():
        return f"{text} (required)"
    value = info.get_default(call_default_factory=True)
    if "default" in text or (value is None and "empty" in text):
        return text
    return f"{text} (default: {'not set' if value is None else value})"


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[StageConfig]) -> None:
    """``--config FILE`` plus one option for every key of ``cls``, named as in the YAML."""
    parser.add_argument("--config", metavar="FILE", help="YAML config; options below override it")
    group = parser.add_argument_group("config keys (same names as in the YAML file)")
    for dotted, annotation, info in leaf_fields(cls):
        dashed = f"--{dotted.replace('_', '-')}"
        names = [dashed] if dashed == f"--{dotted}" else [dashed, f"--{dotted}"]
        kwargs: dict[str, Any] = {
            "dest": _DEST_PREFIX + dotted,
            "default": argparse.SUPPRESS,
            "metavar": dotted.rsplit(".", 1)[-1].upper(),
            "help": _option_help(info),
        }
        if _is_bool(annotation):
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs.pop("metavar")
        elif _is_list(annotation):
            kwargs["nargs"] = "+"
            kwargs["action"] = "extend"
        elif _is_dict(annotation):
            kwargs["nargs"] = "+"
            kwargs["action"] = _PairsOption
            kwargs["metavar"] = "NAME=VALUE"
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        names += [str(alias) for alias in extra.get("cli_aliases", [])]  # type: ignore[union-attr]
        group.add_argument(*names, **kwargs)
        old = _old_name(cls, dotted)
        if old is not None:  # the old name, for one release
            group.add_argument(f"--{old.replace('_', '-')}", **{**kwargs, "help": argparse.SUPPRESS,
                               "action": _RenamedOption, "new": dotted})  # fmt: skip


def _old_name(cls: type[BaseModel], dotted: str) -> str | None:
    """The dotted key's name before a rename (``teacher.context_tokens``), if it had one."""
    *path, leaf = dotted.split(".")
    owner: Any = cls
    for part in path:
        owner = owner.model_fields[part].annotation
    old = next((o for o, n in getattr(owner, "renamed", {}).items() if n == leaf), None)
    return ".".join([*path, old]) if old else None


class _RenamedOption(argparse.Action):
    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option: str | None = None) -> None:
        warn_renamed(str(option).lstrip("-").replace("-", "_"), self.new)
        setattr(namespace, self.dest, values)


class _PairsOption(argparse.Action):
    """``NAME=VALUE ...`` as a mapping (repeated options add to it; a name given twice is
    an error, not the last one silently)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: str | None = None) -> None:
        pairs = dict(getattr(namespace, self.dest, None) or {})
        for item in values:
            name, sep, value = str(item).partition("=")
            if not sep or not name.strip() or not value.strip():
                parser.error(f"{option}: {item!r} is not NAME=VALUE")
            if name.strip() in pairs:
                parser.error(f"{option}: {name.strip()!r} is given twice")
            pairs[name.strip()] = value.strip()
        setattr(namespace, self.dest, pairs)


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    overrides = {
        dest[len(_DEST_PREFIX) :]: _parse_cli_value(value)
        for dest, value in vars(args).items()
        if dest.startswith(_DEST_PREFIX)
    }
    return load_config(cls, getattr(args, "config", None), overrides)


def _parse_cli_value(value: Any) -> Any:
    """Leave scalars to pydantic's coercion; let ``null``/``none`` clear an optional key."""
    if isinstance(value, str) and value.lower() in ("null", "none"):
        return None
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
