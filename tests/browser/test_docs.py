"""The API reference at `/docs` in a real browser: its content security policy allows the
page's own inline script and style (by hash) and nothing else, and the page still renders."""

from __future__ import annotations

import os

import pytest

from tests.browser.conftest import NO_PLAYWRIGHT, Gateway

if NO_PLAYWRIGHT is None:
    from playwright.async_api import ConsoleMessage, Page, expect
elif os.environ.get("CI") != "true":
    pytest.skip(NO_PLAYWRIGHT, allow_module_level=True)

pytestmark = pytest.mark.parametrize("serve", ["noroshi"], indirect=True)


async def test_docs_render_under_their_policy(gateway: Gateway, page: Page) -> None:
    refused: list[str] = []

    def note(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            refused.append(message.text)

    page.on("console", note)
    answer = await page.goto(f"{gateway.url}/docs")
    assert answer is not None and answer.ok
    assert "script-src 'sha256-" in answer.headers["content-security-policy"]
    await expect(page.get_by_text("/v1/chat/completions", exact=True)).to_be_visible()
    # the inline style applied: operations are boxes with a border
    border = await page.locator("details.op").first.evaluate(
        "e => getComputedStyle(e).borderTopStyle"
    )
    assert border == "solid"
    assert not refused


async def test_docs_headings_and_markdown(gateway: Gateway, page: Page) -> None:
    """Tags were shown as raw names ("Openai") and descriptions with their backticks."""
    await page.goto(f"{gateway.url}/docs")
    headings = page.locator("#reference h2")
    await expect(headings.first).to_be_visible()
    names = await headings.all_text_contents()
    assert "OpenAI-compatible API" in names and "Openai" not in names, names
    prose = await page.locator("#reference p, #reference li, .summary").all_text_contents()
    assert not [t for t in prose if "`" in t], "a Markdown backtick was shown as it is"
    assert await page.locator("#reference p code").count() > 0
