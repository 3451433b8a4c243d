"""The page at `/` and its assets: served from the package, same-origin only, cacheable."""

from __future__ import annotations

from pathlib import Path

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
