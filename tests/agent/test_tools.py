"""Function tools, `run_tool` and `Toolbox`: schemas from real signatures, real calls."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import pytest

from noroshi.agent import FunctionTool, Tool, Toolbox, ToolError, ToolResult, load_tool, run_tool
from noroshi.agent import tool as tool_decorator
from tests.agent import sample_tools
from tests.agent.sample_tools import (
    STOPPED,
    add_all,
    blocking,
    broken,
    get_weather,
    locate,
    positional,
    returns_nothing,
    slow,
    tree_sum,
)


def attached(fn: Any) -> FunctionTool:
    found = fn.__noroshi_tool__
    assert isinstance(found, FunctionTool)
    return found


# --- schemas ---------------------------------------------------------------------------------


def test_schema_from_hints_and_docstring() -> None:
    weather = attached(get_weather)
    assert weather.name == "get_weather"
    assert weather.timeout_s == 30.0
    assert weather.description == "Get the weather forecast for a city."
    assert weather.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The city's name, in English."},
            "unit": {"enum": ["c", "f"], "default": "c", "description": "Celsius or Fahrenheit."},
            "days": {
                "anyOf": [{"type": "integer"}, {"type": "null"}],
                "default": None,
                "description": "How many days ahead.",
            },
        },
        "required": ["city"],
        "additionalProperties": False,
    }
    assert weather.spec() == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather forecast for a city.",
            "parameters": weather.parameters,
        },
    }


def test_decorator_returns_the_function_unchanged() -> None:
    assert get_weather("Oslo") == "Oslo: 21C"
    assert asyncio.run(add_all([1, 2])) == {"total": 3.0}
    numbers = attached(add_all)
    assert (numbers.name, numbers.timeout_s, numbers.description) == (
        "sum-numbers",
        5,
        "Add numbers.",
    )
    assert numbers.parameters["properties"] == {
        "numbers": {"type": "array", "items": {"type": "integer"}},
        "scale": {"type": "number", "default": 1.0},
    }
    assert numbers.parameters["required"] == ["numbers"]


def test_struct_enum_and_annotated_are_inlined() -> None:
    pin = FunctionTool(locate)
    assert pin.description == "Put a pin on the map. The description goes on over two lines."
    assert "$defs" not in pin.parameters
    props = pin.parameters["properties"]
    assert props["where"] == {
        "type": "object",
        "description": "A place on the map.",
        "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
        "required": ["lat", "lon"],
    }
    # the Annotated description wins over the docstring's
    assert props["label"] == {
        "type": "string",
        "description": "A short label.",
        "maxLength": 20,
        "default": "",
    }
    assert props["unit"] == {"enum": ["celsius", "fahrenheit"], "default": "celsius"}
    assert props["tags"]["description"] == "Labels to attach."
    assert props["tags"]["items"] == {"type": "string"}


def test_recursive_types_keep_their_defs() -> None:
    schema = FunctionTool(tree_sum).parameters
    assert schema["properties"]["root"] == {"$ref": "#/$defs/Node"}
    assert schema["$defs"]["Node"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}
    assert "title" not in schema


def test_function_without_docstring_or_hints() -> None:
    def bare(x, y=1):  # type: ignore[no-untyped-def]
        return x

    bare_tool = FunctionTool(bare, description="Custom.")
    assert bare_tool.description == "Custom."
    assert bare_tool.parameters["properties"] == {"x": {}, "y": {"default": 1}}
    assert bare_tool.parameters["required"] == ["x"]


class Opaque:
    pass


def test_signatures_that_cannot_be_tools() -> None:
    def star(*args: int) -> None: ...
    def double_star(**kwargs: int) -> None: ...
    def unresolvable(x: NoSuchType) -> None: ...  # type: ignore[name-defined]  # noqa: F821
    def opaque(x: Opaque) -> None: ...

    for fn in (star, double_star, unresolvable, opaque):
        with pytest.raises(ValueError, match="tool"):
            FunctionTool(fn)
    with pytest.raises(ValueError, match="must be 1-64"):
        FunctionTool(lambda: None)
    with pytest.raises(ValueError, match="must be 1-64"):
        tool_decorator(name="has space")(get_weather)


# --- calls -----------------------------------------------------------------------------------


async def test_sync_and_async_calls() -> None:
    weather = attached(get_weather)
    assert await run_tool(weather, '{"city": "Oslo", "unit": "f", "days": 3}') == ToolResult(
        "Oslo: 21F for 3 days"
    )
    # lax: a number sent as a string still counts
    assert (
        await run_tool(weather, {"city": "Oslo", "days": "2"})
    ).content == "Oslo: 21C for 2 days"
    assert await run_tool(attached(add_all), '{"numbers": [1, 2, 3], "scale": 2}') == ToolResult(
        '{"total":12.0}'
    )
    assert (await run_tool(FunctionTool(positional), '{"a": 1}')).content == "12"
    assert (await run_tool(FunctionTool(returns_nothing), "")).content == "null"


async def test_struct_and_enum_arguments_are_converted() -> None:
    pin = FunctionTool(locate)
    args = '{"where": {"lat": 1.5, "lon": 2}, "label": "home", "unit": "fahrenheit"}'
    first = await run_tool(pin, args)
    second = await run_tool(pin, args)
    # each call gets its own copy of the mutable default
    assert first == second == ToolResult("1.5,2.0 home fahrenheit ['a', 'b', 'seen']")


async def test_sync_tool_runs_off_the_loop() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    result = await run_tool(FunctionTool(blocking), {"seconds": 0.3})
    during = ticks - before
    task.cancel()
    assert result == ToolResult("slept")
    # had the sleep blocked the loop, the ticker could not have run while it slept
    assert during >= 2


# --- failures become results -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"city": ', "error: invalid arguments: they are not valid JSON"),
        ("[1, 2]", "error: invalid arguments: expected a JSON object, got array"),
        ("{}", "error: invalid arguments: missing required argument `city`"),
        ('{"city": "Oslo", "days": "many"}', "error: invalid arguments: argument `days`: "),
        ('{"city": "Oslo", "unit": "k"}', "error: invalid arguments: argument `unit`: "),
        ('{"city": "Oslo", "zzz": 1}', "error: invalid arguments: unknown argument `zzz`"),
    ],
)
async def test_bad_arguments_are_error_results(arguments: str, expected: str) -> None:
    result = await run_tool(attached(get_weather), arguments)
    assert result.is_error
    assert result.content.startswith(expected)


async def test_nested_argument_errors_name_the_path() -> None:
    pin = FunctionTool(locate)
    result = await run_tool(pin, {"where": {"lat": 1}})
    assert result == ToolResult(
        "error: invalid arguments: missing required argument `where.lon`", is_error=True
    )
    result = await run_tool(pin, {"where": {"lat": 1, "lon": 2}, "tags": ["a", 3]})
    assert result.content.startswith("error: invalid arguments: argument `tags[1]`: ")


async def test_exceptions_are_error_results(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="noroshi.agent"):
        result = await run_tool(FunctionTool(broken), "{}")
    assert result == ToolResult("error: RuntimeError: the disk is on fire", is_error=True)
    record = next(r for r in caplog.records if r.name == "noroshi.agent")
    assert record.levelno == logging.INFO
    assert "broken" in record.getMessage()
    assert record.exc_info is not None

    async def explains() -> str:
        raise ToolError("the city is not in the database")

    result = await run_tool(FunctionTool(explains), "{}")
    assert result == ToolResult("error: the city is not in the database", is_error=True)


async def test_timeouts_are_error_results_and_stop_the_tool() -> None:
    STOPPED.clear()
    result = await run_tool(FunctionTool(slow, timeout_s=0.05), {"seconds": 10})
    assert result == ToolResult("error: the tool slow timed out after 0.05s", is_error=True)
    assert STOPPED == ["slow"]
    # a sync tool cannot be stopped, but the caller is not kept waiting
    result = await run_tool(FunctionTool(blocking, timeout_s=0.05), {"seconds": 0.3})
    assert result == ToolResult("error: the tool blocking timed out after 0.05s", is_error=True)


async def test_cancellation_propagates_and_stops_the_tool() -> None:
    STOPPED.clear()
    started = asyncio.Event()

    async def run() -> ToolResult:
        started.set()
        return await run_tool(FunctionTool(slow), {"seconds": 10})

    task = asyncio.create_task(run())
    await started.wait()
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert STOPPED == ["slow"]


async def test_a_cancellation_escaping_the_tool_is_an_error_result() -> None:
    async def leaky() -> str:
        inner = asyncio.create_task(asyncio.sleep(10))
        inner.cancel()
        await inner
        return "not reached"

    result = await run_tool(FunctionTool(leaky), "{}")
    assert result == ToolResult("error: the tool leaky was cancelled", is_error=True)


async def test_long_error_messages_are_cut() -> None:
    async def verbose() -> str:
        raise ToolError("x" * 10_000)

    result = await run_tool(FunctionTool(verbose), "{}")
    assert result.is_error
    assert len(result.content) < 2100


# --- load_tool -------------------------------------------------------------------------------


def test_load_tool() -> None:
    loaded = load_tool("tests.agent.sample_tools:get_weather")
    assert isinstance(loaded, FunctionTool)
    assert loaded.parameters == attached(get_weather).parameters
    # a copy: one agent lowering its timeout does not change another's
    loaded.timeout_s = 1
    assert attached(get_weather).timeout_s == 30.0
    plain = load_tool("tests.agent.sample_tools:broken")
    assert isinstance(plain, FunctionTool)
    assert plain.name == "broken"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.agent.sample_tools", "expected 'package.module:function'"),
        (":get_weather", "expected 'package.module:function'"),
        ("tests.agent.no_such_module:f", "cannot import"),
        ("tests.agent.sample_tools:missing", "has no attribute"),
        ("tests.agent.sample_tools:NOT_A_TOOL", "is not a function or a Tool"),
        ("tests.agent.sample_tools:Point", "is not a function or a Tool"),
    ],
)
def test_load_tool_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_tool(spec)


# --- Toolbox ---------------------------------------------------------------------------------


class Echo(Tool):
    """A hand-written Tool, as the MCP and HTTP tools are."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.description = "Echo the text."
        self.parameters = {"type": "object", "properties": {"text": {"type": "string"}}}

    async def call(self, arguments: dict[str, Any]) -> str:
        return str(arguments.get("text", ""))


async def test_toolbox() -> None:
    weather = attached(get_weather)
    box = Toolbox([weather, Echo("echo")])
    assert len(box) == 2
    assert [t.name for t in box] == ["get_weather", "echo"]
    assert "echo" in box and "nope" not in box
    assert box.get("get_weather") is weather and box.get("nope") is None
    assert box.specs() == [weather.spec(), Echo("echo").spec()]
    assert await box.run("echo", '{"text": "hi"}') == ToolResult("hi")
    assert await box.run("get_weather", '{"city": "Oslo"}') == ToolResult("Oslo: 21C")
    result = await box.run("nope", "{}")
    assert result == ToolResult(
        "error: there is no tool named 'nope'; the tools are: get_weather, echo", is_error=True
    )
    assert (await Toolbox([]).run("x", "{}")).content.endswith("the tools are: none")


def test_toolbox_refuses_duplicates_and_bad_names() -> None:
    with pytest.raises(ValueError) as caught:
        Toolbox([attached(get_weather), FunctionTool(sample_tools.broken, name="get_weather")])
    message = str(caught.value)
    assert "get_weather" in message
    assert "sample_tools.get_weather" in message and "sample_tools.broken" in message
    with pytest.raises(ValueError, match="must be 1-64"):
        Toolbox([Echo("no spaces allowed")])


def test_tool_result_encodes() -> None:
    assert msgspec.json.encode(ToolResult("x")) == b'{"content":"x","is_error":false,"sources":[]}'
