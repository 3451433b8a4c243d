"""OpenAI requests to Anthropic Messages requests, and Messages answers back: through the
gateway's conversation, one decoder and one encoder per format."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from noroshi.wire import anthropic, chat
from noroshi.wire.openai import ChatCompletion, ChatRequest, chat_request_decoder

decode = chat_request_decoder().decode


def to_anthropic(req: ChatRequest, model: str, stream: bool) -> dict[str, Any]:
    return anthropic.encode_request(chat.decode_request(req), model, stream)


def from_anthropic(body: dict[str, Any]) -> tuple[ChatCompletion, Any]:
    answer = anthropic.decode_answer(body)
    return msgspec.json.decode(chat.encode_answer(answer, "m"), type=ChatCompletion), answer.usage


def request(**fields: object) -> bytes:
    return msgspec.json.encode({"model": "smart", **fields})


def test_system_messages_become_system_and_turns_alternate() -> None:
    req = decode(
        request(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": "Use metric units."},
                {"role": "user", "content": "Hi"},
                {"role": "user", "content": [{"type": "text", "text": "again"}]},
            ],
            max_tokens=50,
            temperature=1.5,
            stop="END",
        )
    )
    body = to_anthropic(req, "claude-x", stream=True)
    assert body["system"] == "Be brief.\n\nUse metric units."
    assert body["model"] == "claude-x"
    assert body["stream"] is True
    assert body["max_tokens"] == 50
    assert body["temperature"] == 1.0  # Anthropic's range ends at 1
    assert body["stop_sequences"] == ["END"]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "again"}],
        }
    ]


def test_tool_calls_and_results_translate() -> None:
    req = decode(
        request(
            messages=[
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "t1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "t1", "content": "-3 C"},
            ],
            tools=[
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": "w",
                        "parameters": {"type": "object"},
                    },
                }
            ],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False,
        )
    )
    body = to_anthropic(req, "claude-x", stream=False)
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "-3 C"},
        ],
    }
    assert body["tools"] == [
        {"name": "get_weather", "description": "w", "input_schema": {"type": "object"}}
    ]
    assert body["tool_choice"] == {
        "type": "tool",
        "name": "get_weather",
        "disable_parallel_tool_use": True,
    }
    assert body["max_tokens"] == 4096


def test_tool_choice_mapping() -> None:
    base = {
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    assert to_anthropic(decode(request(**base, tool_choice="required")), "m", False)[
        "tool_choice"
    ] == {"type": "any"}
    none = to_anthropic(decode(request(**base, tool_choice="none")), "m", False)
    assert "tools" not in none and "tool_choice" not in none


def test_answer_with_text_and_tool_use() -> None:
    completion, usage = from_anthropic(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-x",
            "content": [
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "tu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 12, "output_tokens": 5, "cache_read_input_tokens": 3},
        }
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name) == ("tu_1", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert (usage.prompt_tokens, usage.completion_tokens) == (15, 5)
    assert completion.usage is not None and completion.usage.total_tokens == 20


def test_stop_reasons() -> None:
    for stop, finish in [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("tool_use", "tool_calls"),
    ]:
        completion, _ = from_anthropic(
            {
                "id": "m",
                "model": "x",
                "stop_reason": stop,
                "content": [{"type": "text", "text": "hi"}],
                "usage": {},
            }
        )
        assert completion.choices[0].finish_reason == finish
