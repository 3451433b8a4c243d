"""Every row of the translation table (docs/translation.md), one test each: a request or an
answer in one format, through the gateway's conversation, out in another."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from noroshi.errors import UpstreamError
from noroshi.wire import anthropic, chat, responses
from noroshi.wire.conversation import (
    Answer,
    BlockStart,
    BlockStop,
    Collector,
    Conversation,
    Delta,
    Event,
    Finish,
    RedactedThinking,
    Start,
    Text,
    Thinking,
    ToolCall,
    Usage,
    UsageUpdate,
    answer_events,
    budget_for,
    effort_for,
)
from noroshi.wire.openai import ChatRequest

USER = {"role": "user", "content": "Hi"}


def from_chat(**body: Any) -> Conversation:
    return chat.decode_request(msgspec.convert({"model": "m", **body}, ChatRequest))


def from_messages(**body: Any) -> Conversation:
    req = msgspec.convert({"model": "m", "max_tokens": 100, **body}, anthropic.MessagesRequest)
    return anthropic.decode_request(req)


def from_responses(**body: Any) -> Conversation:
    req = msgspec.convert({"model": "m", **body}, responses.ResponsesRequest)
    return responses.decode_request(req, [], responses.input_items(req))


def to_chat(conv: Conversation, **kw: Any) -> dict[str, Any]:
    return chat.encode_request(conv, "up", False, **kw)


def to_messages(conv: Conversation) -> dict[str, Any]:
    return anthropic.encode_request(conv, "up", False)


# --- requests ------------------------------------------------------------------------------


def test_system_text_from_each_format() -> None:
    chat_conv = from_chat(
        messages=[{"role": "system", "content": "A"}, {"role": "developer", "content": "B"}, USER]
    )
    assert to_messages(chat_conv)["system"] == "A\n\nB"
    blocks = [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]
    assert to_chat(from_messages(system=blocks, messages=[USER]))["messages"][0] == {
        "role": "system",
        "content": "A\n\nB",
    }
    conv = from_responses(
        instructions="A",
        input=[
            {"type": "message", "role": "developer", "content": "B"},
            {"role": "user", "content": "Hi"},
        ],
    )
    assert conv.system == "A\n\nB"


def test_user_text_and_images() -> None:
    content = [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}},
    ]
    sent = to_messages(from_chat(messages=[{"role": "user", "content": content}]))
    assert sent["messages"][0]["content"] == [
        {"type": "text", "text": "What is it?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.png"}},
    ]
    back = to_chat(
        from_messages(messages=[{"role": "user", "content": sent["messages"][0]["content"]}])
    )
    assert back["messages"][0]["content"] == [
        content[0],
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}},
    ]
    conv = from_responses(
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What?"},
                    {"type": "input_image", "image_url": "https://x.test/cat.png"},
                ],
            }
        ]
    )
    assert (
        to_chat(conv)["messages"][0]["content"][1]["image_url"]["url"] == "https://x.test/cat.png"
    )


def test_tool_definitions() -> None:
    params = {"type": "object", "properties": {"city": {"type": "string"}}}
    conv = from_chat(
        messages=[USER],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "w",
                    "description": "weather",
                    "parameters": params,
                    "strict": True,
                },
            }
        ],
    )
    assert to_messages(conv)["tools"] == [
        {"name": "w", "description": "weather", "input_schema": params}
    ]
    back = from_messages(messages=[USER], tools=[{"name": "w", "input_schema": params}])
    assert to_chat(back)["tools"] == [
        {"type": "function", "function": {"name": "w", "parameters": params}}
    ]
    conv = from_responses(
        input="Hi",
        tools=[{"type": "function", "name": "w", "parameters": params}, {"type": "web_search"}],
    )
    assert [t.name for t in conv.tools] == ["w"]
    assert conv.dropped == ["the 'web_search' tool"]


def test_tool_calls_and_results_in_history() -> None:
    conv = from_chat(
        messages=[
            USER,
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "w", "arguments": '{"c": 1}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        ]
    )
    sent = to_messages(conv)["messages"]
    assert sent[1]["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "t1", "name": "w", "input": {"c": 1}},
    ]
    assert sent[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}],
    }
    back = to_chat(from_messages(messages=sent))["messages"]
    assert back[1]["tool_calls"][0]["function"] == {"name": "w", "arguments": '{"c":1}'}
    assert back[2] == {"role": "tool", "tool_call_id": "t1", "content": "sunny"}
    conv = from_responses(
        input=[
            {"role": "user", "content": "Hi"},
            {"type": "function_call", "call_id": "t1", "name": "w", "arguments": '{"c": 1}'},
            {"type": "function_call_output", "call_id": "t1", "output": "sunny"},
        ]
    )
    assert to_messages(conv)["messages"][1:] == [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "w", "input": {"c": 1}}],
        },
        sent[2],
    ]


def test_an_error_result_stays_an_error() -> None:
    conv = from_messages(
        messages=[
            USER,
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": "failed",
                        "is_error": True,
                    }
                ],
            },
        ]
    )
    assert to_messages(conv)["messages"][0]["content"][0]["is_error"] is True


@pytest.mark.parametrize(
    ("chat_choice", "anthropic_choice"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "w"}}, {"type": "tool", "name": "w"}),
    ],
)
def test_tool_choice(chat_choice: Any, anthropic_choice: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "w"}}]
    sent = to_messages(from_chat(messages=[USER], tools=tools, tool_choice=chat_choice))
    assert sent["tool_choice"] == anthropic_choice
    back = from_messages(
        messages=[USER], tools=[{"name": "w", "input_schema": {}}], tool_choice=anthropic_choice
    )
    assert to_chat(back)["tool_choice"] == chat_choice
    none = to_messages(from_chat(messages=[USER], tools=tools, tool_choice="none"))
    assert "tools" not in none


def test_parallel_tool_calls_off() -> None:
    tools = [{"type": "function", "function": {"name": "w"}}]
    sent = to_messages(from_chat(messages=[USER], tools=tools, parallel_tool_calls=False))
    assert sent["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    back = from_messages(
        messages=[USER],
        tools=[{"name": "w", "input_schema": {}}],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    assert to_chat(back)["parallel_tool_calls"] is False


def test_output_limits() -> None:
    assert to_messages(from_chat(messages=[USER]))["max_tokens"] == anthropic.DEFAULT_MAX_TOKENS
    assert to_messages(from_chat(messages=[USER], max_completion_tokens=7))["max_tokens"] == 7
    assert to_chat(from_messages(messages=[USER], max_tokens=9))["max_tokens"] == 9
    assert to_chat(from_responses(input="Hi", max_output_tokens=5))["max_tokens"] == 5
    # reasoning models take only max_completion_tokens
    sent = to_chat(from_responses(input="Hi", max_output_tokens=5, reasoning={"effort": "low"}))
    assert sent["max_completion_tokens"] == 5 and "max_tokens" not in sent


def test_sampling_stop_seed_and_user() -> None:
    sent = to_messages(
        from_chat(messages=[USER], temperature=1.7, top_p=0.5, stop="END", seed=3, user="u1")
    )
    assert (sent["temperature"], sent["top_p"], sent["stop_sequences"]) == (1.0, 0.5, ["END"])
    assert sent["metadata"] == {"user_id": "u1"} and "seed" not in sent
    back = to_chat(
        from_messages(messages=[USER], top_k=5, stop_sequences=["X"], metadata={"user_id": "u2"})
    )
    assert (back["stop"], back["user"]) == (["X"], "u2") and "top_k" not in back
    assert to_chat(from_chat(messages=[USER], seed=3))["seed"] == 3


@pytest.mark.parametrize(("effort", "budget"), [("low", 1024), ("medium", 2048), ("high", 4096)])
def test_reasoning_effort_and_thinking_budgets(effort: str, budget: int) -> None:
    assert budget_for(effort) == budget and effort_for(budget) == effort  # type: ignore[arg-type]
    sent = to_messages(from_chat(messages=[USER], reasoning_effort=effort, max_tokens=100))
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert sent["max_tokens"] == budget + 100  # the budget leaves room for the answer
    back = from_messages(messages=[USER], thinking={"type": "enabled", "budget_tokens": budget})
    assert to_chat(back)["reasoning_effort"] == effort
    conv = from_responses(input="Hi", reasoning={"effort": effort})
    assert to_messages(conv)["thinking"]["budget_tokens"] == budget
    litellm = from_chat(messages=[USER], thinking={"type": "enabled", "budget_tokens": budget})
    assert to_messages(litellm)["thinking"]["budget_tokens"] == budget


def test_thinking_fixes_anthropics_sampling_and_tool_choice() -> None:
    conv = from_chat(
        messages=[USER],
        reasoning_effort="low",
        temperature=0.2,
        tools=[{"type": "function", "function": {"name": "w"}}],
        tool_choice="required",
    )
    sent = to_messages(conv)
    assert "temperature" not in sent and sent["tool_choice"] == {"type": "auto"}
    assert any("temperature" in d for d in conv.dropped)
    assert any("forced tool choice" in d for d in conv.dropped)


def test_thinking_in_history_keeps_its_signature() -> None:
    blocks = [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "redacted_thinking", "data": "enc"},
    ]
    history = [USER, {"role": "assistant", "content": [*blocks, {"type": "text", "text": "4"}]}]
    conv = from_messages(messages=history)
    assert to_messages(conv)["messages"][1]["content"][:2] == blocks
    # chat clients carry it as LiteLLM does; a noroshi core upstream gets it back
    chat_conv = from_chat(
        messages=[USER, {"role": "assistant", "content": "4", "thinking_blocks": blocks}]
    )
    assert to_messages(chat_conv)["messages"][1]["content"][:2] == blocks
    kept = to_chat(conv, keep_thinking=True)["messages"][1]
    assert kept["thinking_blocks"] == blocks and kept["reasoning_content"] == "hmm"
    # an OpenAI-compatible upstream cannot verify it: it does not get it
    assert "thinking_blocks" not in to_chat(conv)["messages"][1]
    # Responses: a reasoning item, the signature as its encrypted content
    conv = from_responses(
        input=[
            {"role": "user", "content": "Hi"},
            {
                "type": "reasoning",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": "hmm"}],
                "encrypted_content": "sig",
            },
            {"type": "reasoning", "summary": [], "encrypted_content": "enc"},
            {"role": "assistant", "content": "4"},
        ]
    )
    assert to_messages(conv)["messages"][1]["content"][:2] == blocks


def test_unsigned_thinking_is_not_sent_to_anthropic() -> None:
    conv = from_chat(
        messages=[
            USER,
            {"role": "assistant", "content": "4", "reasoning_content": "from another model"},
        ]
    )
    assert to_messages(conv)["messages"][1]["content"] == [{"type": "text", "text": "4"}]
    assert "thinking without a signature" in conv.dropped


def test_structured_output() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "A", "schema": schema, "strict": True}}
    sent = to_messages(from_chat(messages=[USER], response_format=fmt))
    assert sent["output_format"] == {"type": "json_schema", "schema": schema}
    back = to_chat(from_messages(messages=[USER], output_format=sent["output_format"]))
    assert back["response_format"]["json_schema"]["schema"] == schema
    conv = from_responses(
        input="Hi",
        text={"format": {"type": "json_schema", "name": "A", "schema": schema, "strict": True}},
    )
    assert to_chat(conv)["response_format"] == fmt
    assert to_messages(from_chat(messages=[USER], response_format={"type": "json_object"}))[
        "output_format"
    ] == {"type": "json_schema", "schema": {"type": "object"}}


def test_what_cannot_be_carried_is_named() -> None:
    conv = from_messages(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": {"type": "text", "data": "x"}},
                    {"type": "text", "text": "Summarise"},
                ],
            }
        ],
        tools=[{"type": "web_search_20250305", "name": "web_search"}],
    )
    assert conv.dropped == ["'document' blocks", "the server tool 'web_search_20250305'"]
    chat_conv = from_chat(messages=[USER], n=2)
    assert chat_conv.dropped == ["n > 1 (one choice is answered)"]


# --- answers -------------------------------------------------------------------------------

ANSWER = Answer(
    id="up1",
    model="up",
    parts=[
        Thinking("hmm", "sig"),
        RedactedThinking("enc"),
        Text("Checking."),
        ToolCall("t1", "w", '{"c":1}'),
        ToolCall("t2", "w", '{"c":2}'),
    ],
    stop="tool_use",
    usage=Usage(
        prompt_tokens=100,
        completion_tokens=20,
        cache_read_tokens=60,
        cache_write_tokens=10,
        reasoning_tokens=5,
    ),
)


def test_a_whole_answer_in_each_format() -> None:
    completion = json.loads(chat.encode_answer(ANSWER, "m"))
    message = completion["choices"][0]["message"]
    assert (
        message["content"] == "Checking."
        and completion["choices"][0]["finish_reason"] == "tool_calls"
    )
    assert [c["id"] for c in message["tool_calls"]] == ["t1", "t2"]
    assert message["reasoning_content"] == "hmm"
    assert message["thinking_blocks"] == [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "redacted_thinking", "data": "enc"},
    ]
    assert chat.decode_answer(completion).parts == ANSWER.parts
    message_body = json.loads(anthropic.encode_answer(ANSWER, "m"))
    assert [b["type"] for b in message_body["content"]] == [
        "thinking",
        "redacted_thinking",
        "text",
        "tool_use",
        "tool_use",
    ]
    assert anthropic.decode_answer(message_body).parts == ANSWER.parts
    wire = responses.ResponsesWire(
        msgspec.convert({"model": "m", "input": "x"}, responses.ResponsesRequest)
    )
    output = json.loads(wire.answer(ANSWER))["output"]
    assert [i["type"] for i in output] == [
        "reasoning",
        "reasoning",
        "message",
        "function_call",
        "function_call",
    ]
    assert output[0]["encrypted_content"] == "sig" and output[1]["encrypted_content"] == "enc"


@pytest.mark.parametrize(
    ("stop", "finish", "status"),
    [
        ("end_turn", "stop", "completed"),
        ("stop_sequence", "stop", "completed"),
        ("max_tokens", "length", "incomplete"),
        ("tool_use", "tool_calls", "completed"),
        ("refusal", "content_filter", "completed"),
        ("pause_turn", "stop", "completed"),
    ],
)
def test_stop_reasons(stop: Any, finish: str, status: str) -> None:
    answer = Answer(parts=[Text("x")], stop=stop)
    assert json.loads(chat.encode_answer(answer, "m"))["choices"][0]["finish_reason"] == finish
    assert json.loads(anthropic.encode_answer(answer, "m"))["stop_reason"] == stop
    wire = responses.ResponsesWire(msgspec.convert({"model": "m"}, responses.ResponsesRequest))
    assert json.loads(wire.answer(answer))["status"] == status
    body = {"choices": [{"message": {"content": "x"}, "finish_reason": finish}]}
    assert chat.decode_answer(body).stop == ("end_turn" if finish == "stop" else stop)


def test_usage_by_kind_in_each_format() -> None:
    usage = json.loads(chat.encode_answer(ANSWER, "m"))["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        100,
        20,
        120,
    )
    assert usage["prompt_tokens_details"] == {"cached_tokens": 60, "cache_creation_tokens": 10}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 5}
    assert chat.decode_answer({"choices": [{"message": {}}], "usage": usage}).usage == ANSWER.usage
    usage = json.loads(anthropic.encode_answer(ANSWER, "m"))["usage"]
    assert usage == {
        "input_tokens": 30,
        "cache_read_input_tokens": 60,
        "cache_creation_input_tokens": 10,
        "output_tokens": 20,
    }
    assert anthropic.usage_in(usage) == msgspec.structs.replace(ANSWER.usage, reasoning_tokens=0)
    assert responses.usage_out(ANSWER.usage) == {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 60},
        "output_tokens": 20,
        "output_tokens_details": {"reasoning_tokens": 5},
        "total_tokens": 120,
    }


# --- streams -------------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    return json.dumps(
        {
            "id": "c1",
            "model": "up",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
    ).encode()


def test_chat_chunks_become_blocks() -> None:
    decoder = chat.StreamDecoder()
    events: list[Event] = []
    for data in [
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "hm"}),
        chunk({"thinking_blocks": [{"type": "thinking", "thinking": "", "signature": "s"}]}),
        chunk({"content": "Hi"}),
        chunk(
            {"tool_calls": [{"index": 0, "id": "t1", "function": {"name": "w", "arguments": ""}}]}
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"c"'}}]}),
        chunk(
            {"tool_calls": [{"index": 1, "id": "t2", "function": {"name": "w", "arguments": "{}"}}]}
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
        chunk({}, "tool_calls"),
        json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode(),
    ]:
        events += decoder.feed(data)
    collector = Collector()
    collector.feed(events)
    assert collector.answer.parts == [
        Thinking("hm", "s"),
        Text("Hi"),
        ToolCall("t1", "w", '{"c":1}'),
        ToolCall("t2", "w", "{}"),
    ]
    assert collector.answer.stop == "tool_use"
    assert collector.answer.usage == Usage(prompt_tokens=3, completion_tokens=2)


def test_a_chat_error_chunk_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError, match="overloaded"):
        chat.StreamDecoder().feed(json.dumps({"error": {"message": "overloaded"}}).encode())


def test_anthropic_events_become_events_and_server_tool_blocks_are_skipped() -> None:
    decoder = anthropic.StreamDecoder()
    stream = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "m1",
                    "model": "up",
                    "usage": {"input_tokens": 5, "cache_read_input_tokens": 2},
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "server_tool_use", "id": "s"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": "{}"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "thinking", "thinking": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "thinking_delta", "thinking": "hm"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "signature_delta", "signature": "s"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 4},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    events = [e for name, data in stream for e in decoder.feed(name, json.dumps(data).encode())]
    assert events == [
        Start("m1", "up"),
        UsageUpdate(Usage(prompt_tokens=7, cache_read_tokens=2)),
        BlockStart(0, Thinking("")),
        Delta(0, "thinking", "hm"),
        Delta(0, "signature", "s"),
        BlockStop(0),
        Finish("end_turn"),
        UsageUpdate(Usage(prompt_tokens=7, completion_tokens=4, cache_read_tokens=2)),
    ]
    assert decoder.done


def test_an_answer_streams_the_same_in_each_format() -> None:
    events = answer_events(ANSWER)
    chat_encoder = chat.StreamEncoder("m", include_usage=True)
    frames = (chat_encoder.feed(events) + chat_encoder.end()).decode()
    decoder = chat.StreamDecoder()
    collector = Collector()
    for line in frames.split("\n\n"):
        if line:
            collector.feed(decoder.feed(line.removeprefix("data: ").encode()))
    assert collector.answer.parts == ANSWER.parts and collector.answer.usage == ANSWER.usage
    encoder = anthropic.StreamEncoder("m")
    frames = (encoder.feed(events) + encoder.end()).decode()
    decoder2 = anthropic.StreamDecoder()
    collector = Collector()
    for block in frames.strip().split("\n\n"):
        name, data = block.split("\n", 1)
        collector.feed(decoder2.feed(name[7:], data[6:].encode()))
    assert collector.answer.parts == ANSWER.parts
    assert collector.answer.usage == msgspec.structs.replace(ANSWER.usage, reasoning_tokens=0)
    wire = responses.ResponsesWire(msgspec.convert({"model": "m"}, responses.ResponsesRequest))
    encoder3 = wire.encoder()
    frames = (encoder3.feed(events) + encoder3.end()).decode()
    kinds = [b.split("\n", 1)[0][7:] for b in frames.strip().split("\n\n")]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert (
        kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 5
    )
    assert "response.reasoning_text.delta" in kinds
    assert "response.function_call_arguments.done" in kinds


def test_an_error_mid_stream_in_each_format() -> None:
    error = UpstreamError("cut")
    assert chat.ChatWire("m", False).error(error) == b"data: " + error.body() + b"\n\n"
    assert anthropic.MessagesWire("m").error(error).startswith(b"event: error\n")
    wire = responses.ResponsesWire(msgspec.convert({"model": "m"}, responses.ResponsesRequest))
    wire.encoder().feed([Start()])
    frames = wire.error(error).decode()
    assert frames.startswith("event: error\n") and "event: response.failed\n" in frames
    assert '"sequence_number":3' in frames  # after created, in_progress and the error
