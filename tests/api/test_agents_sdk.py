"""The OpenAI Agents SDK runs an agent with a function tool through noroshi's Responses API,
in front of a fake OpenAI-compatible upstream."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

from tests.conftest import Serve, openai_config, write_config
from tests.fakes.upstream import FakeOpenAI, Reply

asked: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    asked.append(city)
    return f"-3 C and snowing in {city}"


@pytest.fixture(autouse=True)
def no_tracing() -> None:
    set_tracing_disabled(True)  # the SDK would otherwise send traces to OpenAI


async def test_an_agent_calls_its_tool_and_answers(
    serve: Serve, tmp_path: Path, upstream: FakeOpenAI
) -> None:
    base = await serve(write_config(tmp_path, openai_config(upstream.base_url)))
    call = {"id": "call_w1", "name": "get_weather", "arguments": '{"city": "Oslo"}'}
    upstream.script(Reply(tool_calls=[call]), Reply(text="It is -3 C and snowing in Oslo."))
    asked.clear()
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as client:
        agent = Agent(
            name="weather",
            instructions="Answer with the weather tool.",
            tools=[get_weather],
            model=OpenAIResponsesModel(model="fast", openai_client=client),
        )
        result = await Runner.run(agent, "What is the weather in Oslo?")
    assert result.final_output == "It is -3 C and snowing in Oslo."
    assert asked == ["Oslo"]
    chats = upstream.chats()
    assert chats[0][0] == {"role": "system", "content": "Answer with the weather tool."}
    assert chats[1][-1] == {
        "role": "tool",
        "tool_call_id": "call_w1",
        "content": "-3 C and snowing in Oslo",
    }
