"""Real-browser fixtures: Debian's Chromium driven through Playwright, against a gateway served
for real with a fake upstream, a master key and an agent that has a tool.

Chromium is the machine's own (`/usr/bin/chromium`, installed by `scripts/browser.sh`);
Playwright never downloads one. Without it (or without the `playwright` package) the tests
skip with the reason; under `CI=true` they fail, as for a missing service (tests/services.py).

Each test gets its own browser (Playwright's driver and a launch cost under a second): the
suite's event loops are per test, and a browser belongs to the loop that started it. Each page leaves a screenshot in
`test-artifacts/browser/<test name>.png`, taken at teardown, so failures leave one too. Every
request a page makes is recorded, for the test that no request leaves the server.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page, Request

try:
    from playwright.async_api import async_playwright
except ImportError as exc:  # the test extra is not installed
    async_playwright = None
    NO_PLAYWRIGHT: str | None = (
        f"the playwright package is not installed ({exc}): pip install -e '.[test]'"
    )
else:
    NO_PLAYWRIGHT = None

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

CHROMIUM = os.environ.get("NOROSHI_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
MASTER_KEY = "nrs-master-browser-test-key"
TIMEOUT_MS = 10_000  # any single browser action; the page is local and the upstream a fake

AGENTS = """
[[agents]]
name = "helper"
model = "fast"
system = "You help."
tools = ["tests.agent.loop_tools:lookup_city"]
max_steps = 3

[[agents]]
name = "teller"
model = "fast"
tools = ["tests.agent.durable_tools:transfer"]

[[agents]]
name = "librarian"
model = "fast"
knowledge = ["handbook"]

[[models]]
name = "embed"
deployments = [{ provider = "up", model = "fake-embedding" }]

[defaults]
embedding_model = "embed"
"""


def unavailable(reason: str) -> None:
    """Skip, or fail under `CI=true`: the project's rule for a missing service."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true needs it)", pytrace=False)
    pytest.skip(reason)


@dataclass
class Gateway:
    """A running gateway: its base URL, the master key, and the fake upstream behind it."""

    url: str
    master_key: str
    upstream: FakeOpenAI

    @property
    def origin(self) -> str:
        return origin(self.url)

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.master_key}"}


@dataclass
class Seen:
    """One request a page made: for the test that no request leaves the server."""

    test: str
    allowed: str  # the origin of that test's server
    url: str
    method: str


@dataclass
class Recorder:
    """The requests of one test's pages."""

    requests: list[Request] = field(default_factory=list)

    def made(self, method: str, pattern: str) -> list[Request]:
        """The requests with `method` whose URL path matches the regular expression."""
        return [
            r
            for r in self.requests
            if r.method == method and re.fullmatch(pattern, urlsplit(r.url).path)
        ]


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def artifact_name(nodeid_name: str) -> str:
    """`test_chat[noroshi]` -> `test_chat-noroshi`: a file name with no brackets."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", nodeid_name).strip("-")


@pytest.fixture(scope="session")
def all_requests() -> list[Seen]:
    """Every request any page made in this session, across the tests."""
    return []


@pytest.fixture
async def gateway(serve: Serve, tmp_path: Path, upstream: FakeOpenAI) -> Gateway:
    """The gateway on noroshi's own server, with model `fast`, agent `helper` (tool `lookup_city`) and a
    master key."""
    config = openai_config(
        upstream.base_url, extra=f'{AGENTS}\n[auth]\nmaster_key = "{MASTER_KEY}"\n'
    )
    url = await serve(write_config(tmp_path, config))
    return Gateway(url, MASTER_KEY, upstream)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if NO_PLAYWRIGHT is not None or async_playwright is None:
        unavailable(NO_PLAYWRIGHT or "no playwright")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"Chromium is not installed at {CHROMIUM}: run scripts/browser.sh")
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def open_page(
    browser: Browser,
    gateway: Gateway,
    request: pytest.FixtureRequest,
    recorder: Recorder,
    all_requests: list[Seen],
) -> Any:
    """`async with open_page(**context_options) as page`: a page in a fresh context (its own
    localStorage), every request recorded, and a screenshot at the end whatever happened."""
    name = artifact_name(request.node.name)
    opened_before = 0

    @asynccontextmanager
    async def opened(**options: Any) -> AsyncIterator[Page]:
        nonlocal opened_before
        opened_before += 1
        shot = name if opened_before == 1 else f"{name}-{opened_before}"
        options.setdefault("viewport", {"width": 1280, "height": 800})
        context: BrowserContext = await browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)

        def record(req: Request) -> None:
            recorder.requests.append(req)
            all_requests.append(Seen(name, gateway.origin, req.url, req.method))

        context.on("request", record)
        page = await context.new_page()
        try:
            yield page
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            try:
                await page.screenshot(
                    path=str(ARTIFACTS / f"{shot}.png"), full_page=True, timeout=5_000
                )
            finally:
                await context.close()

    return opened


@pytest.fixture
async def page(open_page: Any) -> AsyncIterator[Page]:
    """A desktop-sized page (1280x800), not yet at the server."""
    async with open_page() as p:
        yield p
