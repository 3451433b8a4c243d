"""Tools an agent can call: the interface, Python functions as tools, and running one safely.

The model picks the tool and writes its arguments, so everything here assumes the arguments are
wrong until checked, and a failing tool is an answer for the model, not a crash: `run_tool`
turns invalid JSON, bad arguments, timeouts and exceptions into an error `ToolResult` it can
read and correct. Only cancellation passes through, so that a cancelled run stops its tools.
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import copy
import functools
import importlib
import inspect
import logging
import re
import typing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar, overload

import msgspec

__all__ = [
    "CALL_KEY",
    "Approval",
    "FunctionTool",
    "Tool",
    "ToolArgumentError",
    "ToolError",
    "ToolResult",
    "Toolbox",
    "load_approval",
    "load_tool",
    "run_tool",
    "tool",
]

log = logging.getLogger("noroshi.agent")

F = TypeVar("F", bound=Callable[..., Any])
Approval = Literal["always", "never"] | Callable[[dict[str, Any]], bool] | None
# the run and tool call a tool runs for: the key an HTTP tool safe to repeat sends, so the
# service it calls can tell a repeat after a restart from a new request
CALL_KEY: contextvars.ContextVar[str] = contextvars.ContextVar("noroshi_tool_call", default="")

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's rule for function names
MAX_ERROR_CHARS = 2000  # an error message is for the model to read, not a traceback dump
# Sync tools run here, not in the loop's default executor: one that hangs past its timeout keeps
# its thread, and it must not starve DNS lookups and other `to_thread` users of the server.
MAX_TOOL_THREADS = 32


class ToolError(Exception):
    """A failure the tool explains itself: its message goes to the model as is."""


class ToolArgumentError(ToolError):
    """The arguments do not fit the tool's parameters; the message names the parameter."""


class ToolResult(msgspec.Struct):
    """What goes back to the model (and to the client as an event)."""

    content: str
    is_error: bool = False
    sources: list[dict[str, Any]] = []  # what it drew on (knowledge search), sent as events


class Tool(abc.ABC):
    """One function the model may call. `parameters` is a JSON schema of type "object".

    `idempotent`: running it twice with the same arguments does no more than once, so a run
    resumed after its process died may run it again when it was cut off mid-call. `approval`:
    whether a person must approve a call first, "always" or a predicate over the arguments.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    timeout_s: float = 30.0
    idempotent: bool = False
    approval: Approval = None

    @abc.abstractmethod
    async def call(self, arguments: dict[str, Any]) -> str | ToolResult:
        """Run with arguments as the model sent them; the result as text (or a result with
        its sources). May raise."""

    def spec(self) -> dict[str, Any]:
        """The tool as OpenAI's chat API declares it."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class FunctionTool(Tool):
    """A Python function, sync or async, as a tool.

    The schema comes from the type hints (through a msgspec Struct made from the signature, so
    anything msgspec understands works), the description from the docstring's first paragraph,
    and parameter descriptions from its Google-style "Args:" section.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float = 30.0,
        idempotent: bool = False,
        approval: Approval = None,
    ) -> None:
        self.fn = fn
        self.name = _checked_name(name or str(getattr(fn, "__name__", "")), fn)
        self.timeout_s = timeout_s
        self.idempotent = idempotent
        self.approval = approval
        summary, arg_docs = _parse_docstring(inspect.getdoc(fn))
        self.description = summary if description is None else description
        self._struct, self._positional = _arguments_struct(fn, self.name)
        self.parameters = _schema(self._struct, arg_docs)
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            type(fn).__call__  # an object with an async __call__
        )

    async def call(self, arguments: dict[str, Any]) -> str:
        try:
            # lax: models often send "3" for 3 or "true" for true
            values = msgspec.convert(arguments, self._struct, strict=False)
        except msgspec.ValidationError as exc:
            raise ToolArgumentError(_explain(str(exc))) from None
        fields = self._struct.__struct_fields__
        args = [getattr(values, f) for f in fields[: self._positional]]
        kwargs = {f: getattr(values, f) for f in fields[self._positional :]}
        if self._is_async:
            result = await self.fn(*args, **kwargs)
        else:
            result = await _in_thread(functools.partial(self.fn, *args, **kwargs))
            if inspect.isawaitable(result):
                result = await result
        return _as_text(result)

    def __repr__(self) -> str:
        where = f"{getattr(self.fn, '__module__', '?')}.{getattr(self.fn, '__qualname__', '?')}"
        return f"FunctionTool({self.name!r}, {where})"


@overload
def tool(fn: F, /) -> F: ...
@overload
def tool(
    *,
    name: str | None = None,
    timeout_s: float = 30.0,
    idempotent: bool = False,
    approval: Approval = None,
) -> Callable[[F], F]: ...
def tool(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    timeout_s: float = 30.0,
    idempotent: bool = False,
    approval: Approval = None,
) -> F | Callable[[F], F]:
    """Mark a function as a tool: `@tool`, or `@tool(name=..., timeout_s=..., idempotent=True,
    approval="always")` (`approval` may also be a predicate over the call's arguments).

    The function is returned unchanged, still callable as before; its `FunctionTool` is made
    now (so a bad signature fails at import) and attached as `fn.__noroshi_tool__`.
    """

    def mark(f: F) -> F:
        f.__noroshi_tool__ = FunctionTool(  # type: ignore[attr-defined]
            f, name=name, timeout_s=timeout_s, idempotent=idempotent, approval=approval
        )
        return f

    return mark if fn is None else mark(fn)


def load_approval(spec: str) -> Approval:
    """An approval rule as the config writes it: "always", "never", or "module:function", a
    predicate over the call's arguments."""
    if spec in ("always", "never"):
        return spec  # type: ignore[return-value]
    module_name, sep, attr = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attr) if sep else None
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load {spec!r}: {exc}") from None
    if not callable(found):
        raise ValueError(f"expected 'always', 'never' or 'module:function', got {spec!r}")
    return found  # type: ignore[no-any-return]


def load_tool(spec: str) -> Tool:
    """The tool at "package.module:function": a `@tool` function, a plain function (wrapped
    with default settings) or a `Tool` instance (returned as is). A function tool is a fresh
    copy each time, so that one agent's settings (its timeout) do not leak into another's."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'package.module:function', got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{module_name!r} has no attribute {attr!r}") from None
    attached = getattr(obj, "__noroshi_tool__", None)
    if isinstance(attached, FunctionTool):
        return copy.copy(attached)
    if isinstance(obj, Tool):
        return obj
    if callable(obj) and not inspect.isclass(obj):
        return FunctionTool(obj)
    raise ValueError(f"{spec!r} is not a function or a Tool: {type(obj).__name__}")


async def run_tool(tool: Tool, arguments: str | dict[str, Any]) -> ToolResult:
    """Run `tool` with the arguments as the model sent them, within `tool.timeout_s`.

    Never raises for a failure of the tool or of its arguments: those become an error result
    whose text tells the model what went wrong. `asyncio.CancelledError` propagates.
    """
    timeout = asyncio.timeout(tool.timeout_s)
    try:
        parsed = _parse_arguments(arguments)
        async with timeout:
            content = await tool.call(parsed)
    except ToolArgumentError as exc:
        return _failure(tool, f"invalid arguments: {exc}")
    except ToolError as exc:
        return _failure(tool, str(exc))
    except TimeoutError as exc:
        if timeout.expired():
            return _failure(tool, f"the tool {tool.name} timed out after {tool.timeout_s:g}s")
        return _failure(tool, _describe(exc), exc)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise  # the run itself was cancelled: stop here
        # the tool let an inner cancellation escape; the run goes on
        return _failure(tool, f"the tool {tool.name} was cancelled")
    except Exception as exc:
        return _failure(tool, _describe(exc), exc)
    return content if isinstance(content, ToolResult) else ToolResult(content)


class Toolbox:
    """The tools of one agent, by name."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            _checked_name(t.name, t)
            if t.name in self._tools:
                raise ValueError(f"two tools are named {t.name!r}: {self._tools[t.name]!r}, {t!r}")
            self._tools[t.name] = t
        self._specs = [t.spec() for t in self._tools.values()]

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def specs(self) -> list[dict[str, Any]]:
        """Every tool as OpenAI declares it, for the `tools` of a chat request."""
        return list(self._specs)

    def __len__(self) -> int:
        return len(self._tools)

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def needs_approval(self, name: str, arguments: str) -> bool:
        """Whether a person must approve this call first. A predicate that fails, or
        arguments it cannot read, ask for approval: a check that breaks must not let a call
        through."""
        found = self._tools.get(name)
        if found is None or found.approval in (None, "never"):
            return False
        if found.approval == "always" or not callable(found.approval):
            return True
        try:
            return bool(found.approval(_parse_arguments(arguments)))
        except Exception:
            log.warning("tool %s: the approval check failed; asking", name, exc_info=True)
            return True

    async def run(self, name: str, arguments: str | dict[str, Any]) -> ToolResult:
        """Run the named tool; an unknown name is an error result naming the known tools."""
        found = self._tools.get(name)
        if found is None:
            known = ", ".join(self._tools) or "none"
            return ToolResult(
                f"error: there is no tool named {name[:100]!r}; the tools are: {known}",
                is_error=True,
            )
        return await run_tool(found, arguments)


# --- running ---------------------------------------------------------------------------------

_threads: ThreadPoolExecutor | None = None


async def _in_thread(fn: Callable[[], Any]) -> Any:
    """`asyncio.to_thread` on the tools' own pool, context variables included."""
    global _threads
    if _threads is None:
        _threads = ThreadPoolExecutor(MAX_TOOL_THREADS, thread_name_prefix="noroshi-tool")
    ctx = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_threads, ctx.run, fn)


def _parse_arguments(arguments: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if not arguments.strip():
        return {}  # models send "" for a tool without parameters
    try:
        parsed = msgspec.json.decode(arguments)
    except msgspec.DecodeError as exc:
        raise ToolArgumentError(f"they are not valid JSON ({exc}); send one JSON object") from None
    if not isinstance(parsed, dict):
        raise ToolArgumentError(f"expected a JSON object, got {_json_type(parsed)}")
    return parsed


def _failure(tool: Tool, message: str, exc: BaseException | None = None) -> ToolResult:
    log.info("tool %s failed: %s", tool.name, message, exc_info=exc)
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + "…"
    return ToolResult(f"error: {message}", is_error=True)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value, enc_hook=str).decode()


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


_AT = re.compile(r"(?s)(.*) - at `\$\.?(.*)`")
_MISSING = re.compile(r"Object missing required field `(.*)`")
_UNKNOWN = re.compile(r"Object contains unknown field `(.*)`")


def _explain(message: str) -> str:
    """msgspec's validation message, reworded around the argument it is about."""
    at = _AT.fullmatch(message)
    detail, path = (at[1], at[2]) if at else (message, "")
    for pattern, what in ((_MISSING, "missing required argument"), (_UNKNOWN, "unknown argument")):
        m = pattern.fullmatch(detail)
        if m:
            return f"{what} `{f'{path}.{m[1]}' if path else m[1]}`"
    return f"argument `{path}`: {detail}" if path else detail


# --- schema ----------------------------------------------------------------------------------


def _checked_name(name: str, what: object) -> str:
    if not NAME.match(name):
        raise ValueError(f"tool name {name!r} of {what!r} must be 1-64 letters, digits, '_' or '-'")
    return name


def _arguments_struct(fn: Callable[..., Any], name: str) -> tuple[type[msgspec.Struct], int]:
    """A Struct with one field per parameter, and how many of them are positional-only."""
    try:
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise ValueError(f"cannot read the signature of tool {name!r}: {exc}") from exc
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    positional = 0
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ValueError(f"tool {name!r} cannot take *{param.name} or **{param.name}")
        if param.kind is param.POSITIONAL_ONLY:
            positional += 1
        hint = hints.get(param.name, Any)
        if param.default is param.empty:
            fields.append((param.name, hint))
        elif isinstance(param.default, list | dict | set) and param.default:
            # msgspec refuses shared mutable defaults; give each call its own copy
            factory = functools.partial(copy.deepcopy, param.default)
            fields.append((param.name, hint, msgspec.field(default_factory=factory)))
        else:
            fields.append((param.name, hint, param.default))
    try:
        struct = msgspec.defstruct(f"{name}_arguments", fields, forbid_unknown_fields=True)
        msgspec.json.schema(struct)  # fail now, not on the first call, on a type msgspec lacks
    except (TypeError, ValueError) as exc:
        raise ValueError(f"tool {name!r} has a parameter type msgspec cannot use: {exc}") from exc
    return struct, positional


def _schema(struct: type[msgspec.Struct], arg_docs: dict[str, str]) -> dict[str, Any]:
    """The JSON schema of the arguments: an object at the top, nested types inlined (some
    providers do not follow `$ref`), `$defs` kept only for recursive types."""
    _, defs = msgspec.json.schema_components([struct], ref_template="#/$defs/{name}")
    root: dict[str, Any] = defs.pop(struct.__name__)
    root.pop("title", None)
    for prop_name, prop in root.get("properties", {}).items():
        if prop_name in arg_docs and "description" not in prop:
            prop["description"] = arg_docs[prop_name]
    try:
        inlined: dict[str, Any] = _inline(root, defs, ())
    except _Recursive:
        if defs:
            root["$defs"] = defs
        return root
    return inlined


class _Recursive(Exception):
    """A type refers to itself: it cannot be inlined."""


def _inline(node: Any, defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _inline(v, defs, seen) for k, v in node.items() if k != "$ref"}
    if "$ref" in node:
        ref = node["$ref"].rsplit("/", 1)[-1]
        if ref in seen:
            raise _Recursive(ref)
        target = _inline(defs[ref], defs, (*seen, ref))
        target.pop("title", None)
        out = {**target, **out}  # what sits beside the $ref (a description) wins
    return out


_SECTION = re.compile(
    r"(Args|Arguments|Parameters|Params|Keyword Args|Returns?|Yields?|Raises|Examples?|Notes?"
    r"|Attributes|See Also|Warnings?|Todo)\s*:",
    re.IGNORECASE,
)
_ARGS_SECTION = re.compile(r"(Args|Arguments|Parameters|Params|Keyword Args)\s*:", re.IGNORECASE)
_ARG = re.compile(r"\*{0,2}(?P<name>\w+)\s*(?:\([^)]*\))?\s*:\s*(?P<text>.*)")


def _parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The first paragraph, and each argument's text from a Google-style "Args:" section."""
    if not doc:
        return "", {}
    lines = doc.splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION.fullmatch(line.strip()):
            break
        summary.append(line.strip())
    args: dict[str, str] = {}
    for i, line in enumerate(lines):
        if _ARGS_SECTION.fullmatch(line.strip()):
            _parse_args_section(lines[i + 1 :], _indent(line), args)
    return " ".join(summary), args


def _parse_args_section(lines: list[str], header_indent: int, into: dict[str, str]) -> None:
    entry_indent: int | None = None
    current: str | None = None
    for line in lines:
        if not line.strip():
            continue
        indent = _indent(line)
        if indent <= header_indent:
            return
        if entry_indent is None:
            entry_indent = indent
        m = _ARG.fullmatch(line.strip()) if indent <= entry_indent else None
        if m:
            current = m["name"]
            into[current] = m["text"].strip()
        elif current is not None:
            into[current] = f"{into[current]} {line.strip()}".strip()


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())
