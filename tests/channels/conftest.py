"""The channel tests: the user-written `memo` plugin is installed (its folder on sys.path),
as a user would install their own."""

from __future__ import annotations

from pathlib import Path

import pytest

USER_PLUGINS = Path(__file__).parent / "userplugin"


@pytest.fixture(autouse=True)
def user_plugin(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(USER_PLUGINS))
    return USER_PLUGINS
