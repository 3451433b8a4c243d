"""The web page at `/` in a real browser (Chromium, headless), against a real gateway whose
upstream is a fake that scripts every answer: what the user sees as a chat streams, as an
agent calls a tool, when they press stop or reopen a session, as they make and revoke a key
or watch the live counters, and on a phone; and that the page asks nothing of any other host.

The page is driven only through its `data-testid` contract (top bar, chat, console)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.agent import durable_tools, loop_tools
from tests.browser.conftest import NO_PLAYWRIGHT, Gateway, Recorder, Seen
from tests.fakes.upstream import Reply

if NO_PLAYWRIGHT is None:
    from playwright.async_api import Dialog, Page, expect

    expect.set_options(timeout=10_000)
elif os.environ.get("CI") != "true":
    pytest.skip(NO_PLAYWRIGHT, allow_module_level=True)
# else (CI=true): each test fails in the `browser` fixture, and the rest of the suite runs

pytestmark = pytest.mark.parametrize("serve", ["noroshi"], indirect=True)

# a stream slow enough to stop: 60 words, 0.1 s apart (the fake's idle timeout is 0.5 s)
LONG = " ".join(f"word{i}" for i in range(60))

# records each text the newest assistant message shows, as it changes
WATCH_ASSISTANT = """() => {
  window.__assistantTexts = [];
  const note = () => {
    const all = document.querySelectorAll('[data-testid=message-assistant]');
    if (!all.length) return;
    const text = all[all.length - 1].textContent;
    const seen = window.__assistantTexts;
    if (seen[seen.length - 1] !== text) seen.push(text);
  };
  new MutationObserver(note).observe(document.body,
    {subtree: true, childList: true, characterData: true});
}"""


def squash(text: str | None) -> str:
    """Text with its runs of white space made one space, as a reader sees it."""
    return " ".join((text or "").split())


def path_of(url: str) -> str:
    return urlsplit(url).path


async def sign_in(page: Page, gateway: Gateway) -> None:
    """Open `/` and enter the master key in the top bar."""
    answer = await page.goto(f"{gateway.url}/")
    assert answer is not None and answer.ok, f"GET / answered {answer and answer.status}"
    key = page.get_by_test_id("api-key")
    await expect(key).to_have_attribute("type", "password")
    await key.fill(gateway.master_key)
    await key.blur()  # whether the page saves on `input` or on `change`
    local, _ = await storage(page)
    assert gateway.master_key not in local, "the key went to localStorage unasked"


async def storage(page: Page) -> tuple[str, str]:
    """What the page keeps in localStorage and in sessionStorage, as JSON text."""
    local, session = await page.evaluate(
        "() => [JSON.stringify({...localStorage}), JSON.stringify({...sessionStorage})]"
    )
    return str(local), str(session)


async def send(page: Page, target: str, prompt: str) -> None:
    """Pick the target (`model:<id>` or `agent:<name>`), type the prompt and press send."""
    chat = page.get_by_test_id("chat")
    await chat.get_by_test_id("target").select_option(target)
    await chat.get_by_test_id("prompt").fill(prompt)
    await chat.get_by_test_id("send").click()


def assistant(page: Page) -> Any:
    return page.get_by_test_id("message-assistant").last


def sent_key(gateway: Gateway, headers: dict[str, str]) -> bool:
    """Whether a request carried the master key, as a bearer token or as `x-api-key`."""
    return (
        headers.get("authorization") == f"Bearer {gateway.master_key}"
        or headers.get("x-api-key") == gateway.master_key
    )


async def api(gateway: Gateway, method: str, path: str, key: str | None = None) -> Any:
    """Call the gateway directly (not through the page): its status and JSON body."""
    headers = {"authorization": f"Bearer {key or gateway.master_key}"}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"{gateway.url}{path}", headers=headers) as r,
    ):
        return r.status, await r.json(content_type=None)


# what sticks out of a page held to the screen's width: the deepest such elements, named
WIDE_ELEMENTS = """(width) => {
  const root = document.documentElement, before = root.style.width;
  root.style.width = width + 'px';
  const wide = [...document.querySelectorAll('body *')].filter(e =>
    e.getBoundingClientRect().right > width + 0.5 ||
    (getComputedStyle(e).overflowX === 'visible' && e.scrollWidth > e.clientWidth + 1));
  const deepest = wide.filter(e => !wide.some(o => o !== e && e.contains(o)));
  const named = deepest.slice(0, 5).map(e => {
    const id = e.dataset.testid ? `[data-testid=${e.dataset.testid}]` : '';
    const cls = typeof e.className === 'string' && e.className ? '.' + e.className.split(' ')[0] : '';
    return `${e.tagName.toLowerCase()}${id}${cls} (${Math.round(e.getBoundingClientRect().right)}px)`;
  });
  root.style.width = before;
  return named;
}"""


async def no_horizontal_overflow(page: Page, width: int = 375) -> None:
    """Nothing scrolls sideways. On a phone Chromium widens the layout viewport to fit what is
    too wide, so `innerWidth` must stay the screen's width as well."""
    scroll, inner = await page.evaluate(
        "() => [document.documentElement.scrollWidth, window.innerWidth]"
    )
    if scroll <= inner == width:
        return
    wide = await page.evaluate(WIDE_ELEMENTS, width)
    raise AssertionError(
        f"on a {width}px screen the page lays out {inner}px wide and scrolls to {scroll}px "
        f"(no width=device-width meta viewport, or content too wide); too wide at {width}px: {wide}"
    )


# --- chat -----------------------------------------------------------------------------------


async def test_model_chat_streams(gateway: Gateway, page: Page, recorder: Recorder) -> None:
    text = "The quick brown fox jumps over the lazy dog while the gateway streams each word."
    gateway.upstream.script(Reply(text=text, token_delay=0.05))
    await sign_in(page, gateway)
    await page.evaluate(WATCH_ASSISTANT)
    await send(page, "model:fast", "Tell me about the fox")

    await expect(page.get_by_test_id("message-user").last).to_have_text("Tell me about the fox")
    await expect(assistant(page)).to_have_text(text)
    await expect(page.get_by_test_id("message-assistant")).to_have_count(1)

    # the text grew word by word, each step a beginning of the answer
    shown = [squash(t) for t in await page.evaluate("window.__assistantTexts")]
    shown = [t for t in shown if t]
    assert shown[-1] == text
    assert len(set(shown)) >= 4, f"the answer did not stream in: {shown}"
    assert all(text.startswith(t) for t in shown), shown

    # through the OpenAI-compatible endpoint, streaming, with the key from the top bar
    (req,) = recorder.made("POST", "/v1/chat/completions")
    body = json.loads(req.post_data or "{}")
    assert body["model"] == "fast" and body["stream"] is True
    assert body["messages"][-1]["role"] == "user"
    assert "Tell me about the fox" in json.dumps(body["messages"][-1]["content"])
    assert sent_key(gateway, await req.all_headers())
    assert gateway.upstream.requests[-1].body["model"] == "m1"


async def test_agent_run_shows_its_tool_step(
    gateway: Gateway, page: Page, recorder: Recorder
) -> None:
    gateway.upstream.script(
        Reply(tool_calls=[{"name": "lookup_city", "arguments": {"city": "Lyon"}}]),
        Reply(text="Lyon has 1000 people."),
    )
    await sign_in(page, gateway)
    await send(page, "agent:helper", "How big is Lyon?")

    await expect(assistant(page)).to_contain_text("Lyon has 1000 people.")
    step = page.locator("details[data-testid=tool-step]")
    await expect(step).to_have_count(1)
    summary = step.locator("summary")
    await expect(summary).to_contain_text("lookup_city")
    result = step.get_by_text("Lyon: 1000 people").first
    if not await step.evaluate("d => d.open"):
        await expect(result).to_be_hidden()  # folded until asked for
        await summary.click()
    await expect(step).to_have_js_property("open", True)
    await expect(result).to_be_visible()
    await expect(step).to_contain_text("city")  # the arguments
    assert loop_tools.CALLS[-1] == "Lyon"  # the tool really ran

    # a background run, then its stream
    (start,) = recorder.made("POST", "/api/v1/runs")
    body = json.loads(start.post_data or "{}")
    assert body["agent"] == "helper" and body["background"] is True
    assert body["prompt"] == "How big is Lyon?"
    run_id = (await (await start.response()).json())["run_id"]
    assert recorder.made("GET", f"/api/v1/runs/{run_id}/stream")
    assert sent_key(gateway, await start.all_headers())


@pytest.mark.parametrize("button", ["approve", "deny"])
async def test_a_tool_call_waits_for_approve_or_deny(
    gateway: Gateway, page: Page, button: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DURABLE_CALLS", str(tmp_path / "calls"))
    gateway.upstream.script(
        Reply(tool_calls=[{"id": "t1", "name": "transfer", "arguments": {"amount": 5}}]),
        Reply(text="All settled."),
    )
    await sign_in(page, gateway)
    await send(page, "agent:teller", "Send 5")
    step = page.locator("details[data-testid=tool-step]")
    await expect(step).to_contain_text("waiting for approval")
    await expect(page.get_by_test_id("message-status")).to_contain_text("Waiting for your approval")
    assert durable_tools.calls(tmp_path / "calls") == []  # nothing ran before the click
    await step.get_by_test_id(button).click()
    await expect(assistant(page)).to_contain_text("All settled.")
    await expect(step.get_by_test_id("approval")).to_have_count(0)
    if button == "approve":
        await expect(step).to_contain_text("sent 5")
        assert durable_tools.calls(tmp_path / "calls") == ["transfer"]
    else:
        await expect(step).to_contain_text("did not approve")
        assert durable_tools.calls(tmp_path / "calls") == []


async def test_sessions_list_new_chat_and_reopen(
    gateway: Gateway, page: Page, recorder: Recorder
) -> None:
    gateway.upstream.script(Reply(text="First answer."), Reply(text="Second answer."))
    await sign_in(page, gateway)
    await send(page, "agent:helper", "First question")
    await expect(assistant(page)).to_contain_text("First answer.")
    (start,) = recorder.made("POST", "/api/v1/runs")
    session_id = (await (await start.response()).json())["session_id"]

    sessions = page.get_by_test_id("sessions").get_by_test_id("session")
    await expect(sessions).to_have_count(1)
    # when, from the session's updated_at (ISO 8601): "now", "3 seconds ago"
    meta = sessions.first.locator(".session-meta")
    await expect(meta).to_have_text(re.compile(r"helper · (now|\d+ seconds? ago)"))

    await page.get_by_test_id("new-chat").click()
    await expect(page.get_by_test_id("message-user")).to_have_count(0)
    await expect(page.get_by_test_id("message-assistant")).to_have_count(0)

    await sessions.first.click()  # the stored session comes back
    await expect(page.get_by_test_id("message-user")).to_have_text(["First question"])
    await expect(assistant(page)).to_contain_text("First answer.")

    # and goes on: the next turn is in the same session
    await send(page, "agent:helper", "Second question")
    await expect(assistant(page)).to_contain_text("Second answer.")
    second = recorder.made("POST", "/api/v1/runs")[-1]
    assert json.loads(second.post_data or "{}").get("session_id") == session_id
    await expect(sessions).to_have_count(1)


async def test_the_empty_page_says_what_to_try_and_offers_no_embedding_model(
    gateway: Gateway, page: Page
) -> None:
    await sign_in(page, gateway)
    welcome = page.get_by_test_id("welcome")
    await expect(welcome).to_be_visible()
    await expect(welcome).to_contain_text("send a message")
    targets = page.get_by_test_id("target").locator("option")
    await expect(targets.first).to_be_attached()
    values = await targets.evaluate_all("os => os.map(o => o.value)")
    assert "model:embed" not in values, values  # defaults.embedding_model: no chat answers
    assert "model:fast" in values, values
    await send(page, "model:fast", "Hello")
    await expect(welcome).to_be_hidden()


async def test_a_reopened_session_keeps_its_labels_and_token_line(
    gateway: Gateway, page: Page
) -> None:
    gateway.upstream.script(Reply(text="Stored answer."))
    await sign_in(page, gateway)
    await send(page, "agent:helper", "A question")
    await expect(assistant(page)).to_contain_text("Stored answer.")
    await expect(page.get_by_test_id("message-status")).to_contain_text("tokens")
    live = await assistant(page).get_attribute("data-who")
    assert live and live.startswith("helper"), live

    await page.reload()
    await page.get_by_test_id("sessions").get_by_test_id("session").first.click()
    await expect(assistant(page)).to_contain_text("Stored answer.")
    assert await assistant(page).get_attribute("data-who") == live
    await expect(page.get_by_test_id("message-status")).to_contain_text("tokens")


# --- stop -----------------------------------------------------------------------------------


async def stopped_early(page: Page) -> str:
    """The assistant's text once it stands still after stop: it must stop growing."""
    before = squash(await assistant(page).text_content())
    await page.wait_for_timeout(600)  # six of the fake's token gaps
    after = squash(await assistant(page).text_content())
    assert after == before, "the answer kept growing after stop"
    assert "word2" in after and "word59" not in after, after
    assert len(after) < len(LONG)
    return after


async def test_stop_ends_a_model_stream(gateway: Gateway, page: Page) -> None:
    gateway.upstream.script(Reply(text=LONG, token_delay=0.1))
    await sign_in(page, gateway)
    await send(page, "model:fast", "Count slowly")
    await expect(assistant(page)).to_contain_text("word2")
    await page.get_by_test_id("stop").click()
    await gateway.upstream.wait_disconnect(5)  # the gateway let go of the upstream too
    await stopped_early(page)


async def test_stop_cancels_an_agent_run(gateway: Gateway, page: Page) -> None:
    gateway.upstream.script(Reply(text=LONG, token_delay=0.1))
    await sign_in(page, gateway)
    async with page.expect_response(
        lambda r: r.request.method == "POST" and path_of(r.url) == "/api/v1/runs"
    ) as started:
        await send(page, "agent:helper", "Count slowly")
    run_id = (await (await started.value).json())["run_id"]
    await expect(assistant(page)).to_contain_text("word2")

    async with page.expect_request(
        lambda r: r.method == "POST" and path_of(r.url) == f"/api/v1/runs/{run_id}/cancel"
    ):
        await page.get_by_test_id("stop").click()
    await gateway.upstream.wait_disconnect(5)
    await stopped_early(page)

    deadline = time.monotonic() + 5
    while True:
        status, run = await api(gateway, "GET", f"/api/v1/runs/{run_id}")
        assert status == 200, run
        if run["status"] != "running" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert run["status"] == "cancelled"


async def test_reload_resumes_a_running_agent_run(gateway: Gateway, page: Page) -> None:
    """A reload in the middle of a run rejoins it (Last-Event-ID) and shows the whole answer,
    each word once."""
    words = " ".join(f"w{i}" for i in range(30))
    gateway.upstream.script(Reply(text=words, token_delay=0.08))
    await sign_in(page, gateway)
    async with page.expect_response(
        lambda r: r.request.method == "POST" and path_of(r.url) == "/api/v1/runs"
    ) as started:
        await send(page, "agent:helper", "Count")
    run_id = (await (await started.value).json())["run_id"]
    await expect(assistant(page)).to_contain_text("w3")

    async with page.expect_request(
        lambda r: path_of(r.url) == f"/api/v1/runs/{run_id}/stream" and "last-event-id" in r.headers
    ) as rejoined:
        await page.reload()
    assert int((await rejoined.value).headers["last-event-id"]) > 0
    await expect(assistant(page).last).to_have_text(words, timeout=15_000)
    assert squash(await assistant(page).last.text_content()) == words
    status, run = await api(gateway, "GET", f"/api/v1/runs/{run_id}")
    assert status == 200 and run["status"] == "completed"


async def test_agent_answer_lists_its_sources(gateway: Gateway, page: Page) -> None:
    async with aiohttp.ClientSession(headers=gateway.auth) as http:
        async with http.post(f"{gateway.url}/api/v1/kb", json={"name": "handbook"}) as r:
            assert r.status == 201, await r.text()
        doc = {
            "source": "handbook.md",
            "format": "markdown",
            "text": "# Handbook\n\n## Holidays\n\nTwenty-five days of paid holiday.",
        }
        async with http.post(f"{gateway.url}/api/v1/kb/handbook/documents", json=doc) as r:
            assert r.status == 200, await r.text()
    gateway.upstream.script(
        Reply(tool_calls=[{"name": "search_knowledge", "arguments": {"query": "holiday"}}]),
        Reply(),  # the search embeds its query
        Reply(text="Twenty-five days [1]."),
    )
    await sign_in(page, gateway)
    await send(page, "agent:librarian", "How much holiday?")
    await expect(assistant(page)).to_contain_text("Twenty-five days [1].")
    source = page.get_by_test_id("source").first
    await expect(source).to_contain_text("handbook.md")
    await expect(source).to_contain_text("Holidays")
    step = page.locator("details[data-testid=tool-step]").first
    await expect(step.locator("summary")).to_contain_text("search_knowledge")


# --- console --------------------------------------------------------------------------------


async def test_api_key_is_remembered(gateway: Gateway, page: Page) -> None:
    await sign_in(page, gateway)
    await page.reload()
    await expect(page.get_by_test_id("api-key")).to_have_value(gateway.master_key)


async def test_the_key_stays_with_the_tab_unless_remembered(gateway: Gateway, page: Page) -> None:
    await sign_in(page, gateway)
    assert gateway.master_key in (await storage(page))[1]
    remember = page.get_by_test_id("key-remember")
    await expect(remember).not_to_be_checked()
    other = await page.context.new_page()  # another tab of the same browser
    await other.goto(f"{gateway.url}/")
    await expect(other.get_by_test_id("api-key")).to_have_value("")

    await remember.check()
    assert gateway.master_key in (await storage(page))[0]
    await other.reload()
    await expect(other.get_by_test_id("api-key")).to_have_value(gateway.master_key)
    await expect(other.get_by_test_id("key-remember")).to_be_checked()

    await other.get_by_test_id("key-remember").uncheck()  # forgotten by the browser at once
    assert gateway.master_key not in (await storage(other))[0]
    await other.close()


async def shown_secret(page: Page) -> str:
    """The text of `key-secret`: an input's value, or an element's text."""
    box = page.get_by_test_id("key-secret")
    await expect(box).to_be_visible()
    if await box.evaluate("e => e instanceof HTMLInputElement || e instanceof HTMLTextAreaElement"):
        await expect(box).to_have_value(re.compile("nrs-"))
        return (await box.input_value()).strip()
    await expect(box).to_contain_text("nrs-")
    return (await box.inner_text()).strip()


async def test_console_creates_and_revokes_a_key(gateway: Gateway, page: Page) -> None:
    await sign_in(page, gateway)
    await page.get_by_test_id("tab-console").click()
    console = page.get_by_test_id("console")
    await expect(console).to_be_visible()
    await expect(page.get_by_test_id("chat")).to_be_hidden()
    await expect(console.get_by_test_id("usage-chart")).to_be_visible()
    for counter in ("counter-active-streams", "counter-errors"):
        await expect(console.get_by_test_id(counter)).to_have_text(re.compile(r"^\s*\d+\s*$"))
    await expect(console.get_by_test_id("counter-rps")).to_be_visible()  # a rate needs 2 polls

    await console.get_by_test_id("key-name").fill("browser-bot")
    await console.get_by_test_id("key-rpm").fill("60")
    await console.get_by_test_id("key-create").click()
    secret = await shown_secret(page)
    assert secret.startswith("nrs-"), f"key-secret shows {secret!r}, not the key alone"
    rows = console.get_by_test_id("key-row").filter(has_text="browser-bot")
    await expect(rows).to_have_count(1)

    # the key is real: made as asked, and it works
    status, keys = await api(gateway, "GET", "/admin/keys")
    (made,) = [k for k in keys["data"] if k["name"] == "browser-bot"]
    assert made["rpm"] == 60 and made["revoked_at"] is None
    status, _ = await api(gateway, "GET", "/v1/models", key=secret)
    assert status == 200

    # shown once: not after a reload, and never kept in the browser
    await page.reload()
    await page.get_by_test_id("tab-console").click()
    await expect(rows).to_have_count(1)
    assert secret not in await page.content()
    assert secret not in await page.evaluate("() => JSON.stringify({...localStorage})")

    dialogs: list[Dialog] = []

    async def confirm(dialog: Dialog) -> None:
        dialogs.append(dialog)
        await dialog.accept()

    page.once("dialog", confirm)
    await rows.get_by_test_id("key-revoke").click()
    # the row goes, or stays marked revoked
    await expect(rows.filter(has_not_text=re.compile("revoked", re.I))).to_have_count(0)
    assert [d.type for d in dialogs] == ["confirm"]

    status, key = await api(gateway, "GET", f"/admin/keys/{made['id']}")
    assert key["revoked_at"] is not None
    status, _ = await api(gateway, "GET", "/v1/models", key=secret)
    assert status == 401


async def test_console_counts_a_live_stream_and_charts_usage(gateway: Gateway, page: Page) -> None:
    gateway.upstream.script(Reply(text=LONG, token_delay=0.1))
    await sign_in(page, gateway)
    await send(page, "model:fast", "Count slowly")
    await expect(assistant(page)).to_contain_text("word2")

    console = page.get_by_test_id("console")
    await page.get_by_test_id("tab-console").click()
    await expect(console.get_by_test_id("counter-active-streams")).to_have_text(
        re.compile(r"^\s*1\s*$")
    )
    await page.get_by_test_id("tab-chat").click()
    await page.get_by_test_id("stop").click()
    await gateway.upstream.wait_disconnect(5)

    # once the gateway has written the (cut) request down, the console shows it
    deadline = time.monotonic() + 5
    while not (await api(gateway, "GET", "/admin/usage"))[1]["data"]:
        assert time.monotonic() < deadline, "no usage recorded"
        await asyncio.sleep(0.05)
    await page.get_by_test_id("tab-console").click()
    await expect(console.get_by_test_id("counter-active-streams")).to_have_text(
        re.compile(r"^\s*0\s*$")
    )
    await expect(console.get_by_test_id("usage-chart").locator("svg").first).to_be_visible()


# --- phone ----------------------------------------------------------------------------------


async def test_phone_viewport_has_no_horizontal_overflow(gateway: Gateway, open_page: Any) -> None:
    # a token with no break opportunity, wider than the screen: the answer must wrap it
    text = "The digest is sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 here."
    gateway.upstream.script(Reply(text=text))
    phone = {"width": 375, "height": 667}
    async with open_page(
        viewport=phone, screen=phone, device_scale_factor=2, is_mobile=True, has_touch=True
    ) as page:
        await sign_in(page, gateway)
        await no_horizontal_overflow(page)
        await send(page, "model:fast", "Where is the page?")
        await expect(assistant(page)).to_have_text(text)
        await no_horizontal_overflow(page)
        await page.get_by_test_id("tab-console").click()
        await expect(page.get_by_test_id("console")).to_be_visible()
        await no_horizontal_overflow(page)


# --- last: what every test's pages asked for ------------------------------------------------


async def test_no_request_leaves_the_server(
    gateway: Gateway, page: Page, all_requests: list[Seen]
) -> None:
    """Every request any page made in this session (this test's own included, which visits
    both tabs) went to that test's server: no CDN, font or analytics host."""
    await sign_in(page, gateway)
    await page.get_by_test_id("tab-console").click()
    await expect(page.get_by_test_id("console")).to_be_visible()
    await page.get_by_test_id("tab-chat").click()
    await expect(page.get_by_test_id("chat")).to_be_visible()
    await page.wait_for_load_state("networkidle")

    mine = [s for s in all_requests if s.allowed == gateway.origin]
    assert any(path_of(s.url) == "/" and s.method == "GET" for s in mine)
    elsewhere = [
        f"{s.test}: {s.method} {s.url}"
        for s in all_requests
        if urlsplit(s.url).scheme not in ("data", "blob") and not s.url.startswith(s.allowed + "/")
    ]
    assert not elsewhere, "requests beyond the server:\n" + "\n".join(elsewhere)
