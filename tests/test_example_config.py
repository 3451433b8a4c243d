"""noroshi.example.toml is the config reference: it names every key there is (that it loads is
tests/test_config.py's test)."""

from __future__ import annotations

import tomllib
import typing
from pathlib import Path
from typing import Any

import msgspec

from noroshi.config import Config

EXAMPLE = Path(__file__).parent.parent / "noroshi.example.toml"
NOT_KEYS = {"source", "channels[].settings"}  # set by the loader, not written in a file


def _section(kind: Any) -> type[msgspec.Struct] | None:
    return kind if isinstance(kind, type) and issubclass(kind, msgspec.Struct) else None


def keys_of(struct: type[msgspec.Struct], prefix: str = "") -> set[str]:
    """Every key path of a config section: `providers.*.model_path`, `agents[].tools`."""
    found: set[str] = set()
    for name, kind in typing.get_type_hints(struct, include_extras=True).items():
        if name.startswith("_"):
            continue
        path = f"{prefix}{name}"
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if (inner := _section(kind)) is not None:
            found |= keys_of(inner, f"{path}.")
        elif origin is list and args and (inner := _section(args[0])) is not None:
            found |= keys_of(inner, f"{path}[].")
        elif origin is dict and len(args) == 2 and (inner := _section(args[1])) is not None:
            found |= keys_of(inner, f"{path}.*.")
        else:
            found.add(path)
    return found


def keys_in(struct: type[msgspec.Struct], raw: dict[str, Any], prefix: str = "") -> set[str]:
    """The key paths that `raw` (a parsed TOML table) sets, in the same notation."""
    found: set[str] = set()
    hints = typing.get_type_hints(struct, include_extras=True)
    for name, value in raw.items():
        if name not in hints:
            continue  # a channel plugin's own keys (its token), which become `settings`
        kind, path = hints[name], f"{prefix}{name}"
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if (inner := _section(kind)) is not None:
            found |= keys_in(inner, value, f"{path}.")
        elif origin is list and args and (inner := _section(args[0])) is not None:
            for item in value:
                found |= keys_in(inner, item, f"{path}[].")
        elif origin is dict and len(args) == 2 and (inner := _section(args[1])) is not None:
            for item in value.values():
                found |= keys_in(inner, item, f"{path}.*.")
        else:
            found.add(path)
    return found


def test_every_key_is_in_the_example() -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    missing = keys_of(Config) - keys_in(Config, raw) - NOT_KEYS
    assert not missing, f"noroshi.example.toml lacks {sorted(missing)}"
