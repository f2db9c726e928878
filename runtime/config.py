"""The one configuration loader: a service's YAML section converted into its msgspec structs,
whose annotations carry every bound (``Meta(ge=..., le=...)``), with checks across fields in
``__post_init__``. Loaded and validated once, at start; any error is a ``ConfigError`` that
names the field by its path and the value's problem, and nothing is half loaded.

Unit placement in every name: the noun, then its unit, then its qualifier (``timeout_ms``,
``wait_us_max``, ``body_size_bytes_max``), as STYLE.md asks. A key renamed to follow it is
still read under its old name, with a warning, for a release (RENAMED, docs/decisions/0008)."""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import yaml

from wire.errors import ConfigError

T = TypeVar("T")
log = logging.getLogger("regiongate.config")

RENAMED = {
    ("batch", "wait_max_us"): ("batch", "wait_us_max"),
    ("body_size_max_bytes",): ("body_size_bytes_max",),
}
"""Old key path -> new key path: read under either name for one release."""
_UNKNOWN = re.compile(r"unknown field `([^`]*)`(?: - at `\$\.?([^`]*)`)?")


def check_metrics_port(metrics_port: int | None, workers: int) -> None:
    """Worker i serves metrics on metrics_port + i: every one of them must be a port."""
    if metrics_port is not None and not 1 <= metrics_port <= 65535 - workers:
        raise ConfigError(f"metrics_port must be in [1, {65535 - workers}], got {metrics_port}")


def config_from_dict(raw: Any, cls: type[T], section: str) -> T:
    """``raw`` as a ``cls``, or ConfigError naming the field (``batch.size_max``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{section} config must be a mapping, got {type(raw).__name__}")
    raw, old_names = _renamed(raw, section)
    try:
        return msgspec.convert(raw, cls, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        for new, old in old_names.items():
            message = message.replace(f"$.{new}`", f"$.{new}` (written as {old})")
        unknown = _UNKNOWN.search(message)
        if unknown is not None:
            where = unknown[2] or section
            raise ConfigError(f"{where}: unknown keys [{unknown[1]!r}]") from exc
        raise ConfigError(f"{section}: {message.replace('$.', '')}") from exc


def _renamed(raw: dict, section: str) -> tuple[dict, dict[str, str]]:
    """raw with every old key moved to its new name; and new name -> old, for messages."""
    old_names: dict[str, str] = {}
    for old, new in RENAMED.items():
        parent = raw
        for part in old[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or old[-1] not in parent:
            continue
        if new[-1] in parent:
            raise ConfigError(f"{section}: both {'.'.join(old)} and {'.'.join(new)} are set")
        log.warning("config key %s is now %s", ".".join(old), ".".join(new))
        raw = copy.deepcopy(raw) if not old_names else raw
        parent = raw
        for part in old[:-1]:
            parent = parent[part]
        parent[new[-1]] = parent.pop(old[-1])
        old_names[".".join(new)] = ".".join(old)
    return raw, old_names


def load_config(path: str | Path, section: str, cls: type[T]) -> T:
    """Read a YAML file and convert its ``section`` (or the whole file) into ``cls``."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {section} config {path}: {exc}") from exc
    if isinstance(raw, dict) and section in raw:
        raw = raw[section]
    return config_from_dict(raw, cls, section)
