"""The page at `/` and its assets: served from the package, same-origin only, cacheable."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI

pytestmark = pytest.mark.parametrize("serve", ["noroshi"], indirect=True)


async def test_page_and_assets(serve: Serve, tmp_path: Path, upstream: FakeOpenAI) -> None:
    base = await serve(write_config(tmp_path, openai_config(upstream.base_url)))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/") as r:
            assert r.status == 200 and r.headers["content-type"].startswith("text/html")
            page = await r.text()
            etag = r.headers["etag"]
            assert "connect-src 'self'" in r.headers["content-security-policy"]
        assert "playground/app.js" in page and "http://" not in page and "https://" not in page
        async with http.get(f"{base}/", headers={"if-none-match": etag}) as r:
            assert r.status == 304 and await r.read() == b""
        async with http.get(f"{base}/playground/app.js") as r:
            assert r.status == 200 and "javascript" in r.headers["content-type"]
            assert "import" in await r.text()
        async with http.get(f"{base}/playground/style.css") as r:
            assert r.status == 200 and r.headers["content-type"].startswith("text/css")
        for name in ("index.html", "secret.txt", "..%2Fapi%2Fplayground.py"):
            async with http.get(f"{base}/playground/{name}") as r:
                assert r.status == 404, name
                assert (await r.json())["error"]["code"] == "not_found"


# The page's key handling, run by Node (Playwright's own, else the machine's) against storage
# stand-ins: which storage the key the user typed ends up in, with no browser needed.
KEY_STORAGE = """
const [module, legacyKey] = process.argv.slice(2);
const areas = {};
for (const name of ["localStorage", "sessionStorage"]) {
  const items = areas[name] = new Map();
  Object.defineProperty(globalThis, name, { configurable: true, value: {
    getItem: (k) => items.get(k) ?? null,
    setItem: (k, v) => { items.set(k, String(v)); },
    removeItem: (k) => { items.delete(k); },
  } });
}
if (legacyKey) areas.localStorage.set("noroshi.apiKey", legacyKey);
const api = await import(module);
const seen = () => ({ local: [...areas.localStorage.values()],
                      session: [...areas.sessionStorage.values()], key: api.getKey() });
const out = { loaded: seen() };
api.setKey("sk-typed");
out.typed = seen();
api.rememberKey?.(true); // absent from a page that has no choice
out.remembered = seen();
api.rememberKey?.(false);
out.forgotten = seen();
console.log(JSON.stringify(out));
"""


def node() -> str:
    try:
        from playwright._impl._driver import compute_driver_executable
    except ImportError:
        found = shutil.which("node")
    else:
        found = str(compute_driver_executable()[0])
    if not found or not os.access(found, os.X_OK):
        pytest.skip("no Node to run the page's modules with")
    return found


async def key_storage(base: str, tmp_path: Path, legacy_key: str = "") -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/playground/api.js") as r:
        (tmp_path / "api.mjs").write_bytes(await r.read())
    (tmp_path / "harness.mjs").write_text(KEY_STORAGE)
    run = await asyncio.create_subprocess_exec(
        node(),
        str(tmp_path / "harness.mjs"),
        (tmp_path / "api.mjs").as_uri(),
        legacy_key,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await run.communicate()
    assert run.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


async def test_a_typed_key_is_kept_by_the_tab_not_the_browser(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI
) -> None:
    base = await serve(write_config(tmp_path, openai_config(upstream.base_url)))
    seen = await key_storage(base, tmp_path)
    assert seen["typed"] == {"local": [], "session": ["sk-typed"], "key": "sk-typed"}
    assert "sk-typed" in seen["remembered"]["local"]
    assert "sk-typed" not in seen["forgotten"]["local"]
    assert seen["forgotten"]["session"] == ["sk-typed"]


async def test_a_key_an_older_page_kept_moves_to_the_tab(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI
) -> None:
    base = await serve(write_config(tmp_path, openai_config(upstream.base_url)))
    seen = await key_storage(base, tmp_path, legacy_key="sk-old")
    assert seen["loaded"] == {"local": [], "session": ["sk-old"], "key": "sk-old"}
