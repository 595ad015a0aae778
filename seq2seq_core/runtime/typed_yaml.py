"""Frozen dataclass sections from YAML mappings: each value checked against its field's
type, unknown keys named with the valid ones, ``section.key=value`` overrides parsed as
YAML. Generic on purpose: ``seq2seq_core/config.py`` declares the sections, this reads them.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

import yaml


class ConfigError(ValueError):
    """A parameter file or override is invalid; the message names the key."""


def check_choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(options)}")


def check_positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value!r}")


def coerce(key: str, value: Any, hint: Any) -> Any:
    """Check a YAML value against the dataclass field's type (ints pass as floats)."""
    allowed = set(get_args(hint)) if get_args(hint) else {hint}
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{key} must not be null")
    if bool in allowed:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if int in allowed:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if float in allowed:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if isinstance(value, str):
        return value
    raise ConfigError(f"{key} must be a string, got {value!r}")


def build_section(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{name}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}"
        )
    values = {k: coerce(f"{name}.{k}", v, hints[k]) for k, v in raw.items()}
    section = cls(**values)
    section.validate()
    return section


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse `section.key=value`; the value is read as YAML so `true`, `3`, `null` work."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw_value = text.split("=", 1)
    section, key = dotted.split(".", 1)
    return section.strip(), key.strip(), yaml.safe_load(raw_value) if raw_value else ""


def read_mapping(path: Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (a parameter file), safely loaded."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: parameter file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw
