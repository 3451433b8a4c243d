"""Channel plugins by name: the entry points of the group `noroshi.channels`, so a package
that declares one adds a channel without any change here."""

from __future__ import annotations

from importlib.metadata import entry_points

from noroshi.channels.base import Channel

__all__ = ["GROUP", "available", "plugin"]

GROUP = "noroshi.channels"


def available() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def plugin(name: str) -> type[Channel]:  # type: ignore[type-arg]
    """The plugin class `name` names; LookupError (with what there is) when none does, or
    when what it names is not a `Channel`."""
    for ep in entry_points(group=GROUP, name=name):
        kind = ep.load()
        if not (isinstance(kind, type) and issubclass(kind, Channel)):
            raise LookupError(f"'{name}' ({ep.value}) is not a noroshi Channel subclass")
        return kind
    raise LookupError(f"no channel plugin '{name}' (installed: {', '.join(available()) or 'none'})")
