"""Agents from the config: their tools imported, HTTP tools made, MCP servers connected.

An agent's `tools` entries name, in order of lookup: an `[[http_tools]]` entry, `mcp:<server>`
(all of a server's tools), `<server>__<tool>` (one of them), or `module:function`.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from noroshi.agent.runs import Agent
from noroshi.agent.tools import Tool, Toolbox, load_approval, load_tool
from noroshi.config import AgentConfig, Config, ConfigError, tool_ref
from noroshi.errors import NoroshiError, StartupError
from noroshi.retrieval.tool import KnowledgeTool

if TYPE_CHECKING:
    from noroshi.agent.http_tools import HTTPTool
    from noroshi.agent.mcp import MCPServer
    from noroshi.retrieval.service import Knowledge

__all__ = ["build_agents"]

log = logging.getLogger("noroshi.agent")

Closer = Callable[[], Awaitable[None]]


async def build_agents(
    config: Config, default_model: Callable[[], str], knowledge: Knowledge | None = None
) -> tuple[dict[str, Agent], list[Closer]]:
    closers: list[Closer] = []
    http: dict[str, HTTPTool] = {}
    if config.http_tools:  # httpx2, which they use, takes a while to import: only then
        from noroshi.agent.http_tools import HTTPTool
    for http_config in config.http_tools:
        http[http_config.name] = HTTPTool(http_config)
        closers.append(http[http_config.name].close)
    servers: dict[str, MCPServer] = {}
    if config.mcp_servers:  # the MCP SDK takes a while to import: only when it is used
        from noroshi.agent.mcp import MCPServer
    for server_config in config.mcp_servers:
        servers[server_config.name] = MCPServer(server_config)
        closers.append(servers[server_config.name].close)
    try:
        return await _build(config, default_model, knowledge, http, servers), closers
    except BaseException:
        for close in closers:  # a failed start leaves no MCP server running
            await close()
        raise


async def _build(
    config: Config,
    default_model: Callable[[], str],
    knowledge: Knowledge | None,
    http: dict[str, HTTPTool],
    servers: dict[str, MCPServer],
) -> dict[str, Agent]:
    started = await asyncio.gather(*(s.start() for s in servers.values()), return_exceptions=True)
    for i, result in enumerate(started):
        if isinstance(result, Exception):  # a server that goes away later is reconnected, but
            raise StartupError(f"mcp_servers.{i}: {result}")  # one never there is a mistake
    agents: dict[str, Agent] = {}
    configs = list(enumerate(config.agents))  # numbered as in the config, for its keys
    if not any(a.name == "default" for a in config.agents):
        configs.insert(0, (-1, AgentConfig(name="default")))
    for i, agent in configs:
        tools: list[Tool] = []
        for j, name in enumerate(agent.tools):
            where = f"agents.{i}.tools.{j}"
            tools.extend(_resolve(name, where, http, servers))
        if agent.knowledge:
            if knowledge is None:
                raise ConfigError(f"agents.{i}.knowledge: knowledge bases are not available here")
            tools.append(KnowledgeTool(knowledge, list(agent.knowledge)))
        try:
            model = agent.model or default_model()
        except NoroshiError:
            model = ""  # no model configured: the agent answers 503 like the simple endpoints
        # each agent its own copy: the timeout is the agent's, the connections are shared
        own = [copy.copy(tool) for tool in tools]
        for tool in own:
            tool.timeout_s = min(tool.timeout_s, agent.tool_timeout_s)
        for name, rule in agent.approval.items():
            found = [t for t in own if t.name == name]
            if not found:
                raise ConfigError(f"agents.{i}.approval: the agent has no tool '{name}'")
            try:
                found[0].approval = load_approval(rule)
            except ValueError as exc:
                raise ConfigError(f"agents.{i}.approval.{name}: {exc}") from None
        agents[agent.name] = Agent(agent, model, Toolbox(own))
    return agents


def _resolve(
    name: str, where: str, http: dict[str, HTTPTool], servers: dict[str, MCPServer]
) -> list[Tool]:
    ref = tool_ref(name, http, servers)
    if ref is None:
        raise ConfigError(f"{where}: '{name}' is not an HTTP tool, an MCP tool or module:function")
    kind, target = ref
    if kind == "http":
        return [http[target]]
    if kind == "mcp_server":
        return list(servers[target].tools)
    if kind == "mcp_tool":
        server = servers[target]
        found = [t for t in server.tools if t.name == name]
        if not found and not server.tools:  # the server did not start: logged already
            log.warning("%s: tool %s is unavailable until its MCP server answers", where, name)
        elif not found:
            raise ConfigError(f"{where}: the MCP server has no tool '{name}'")
        return found
    try:
        return [load_tool(target)]
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot load tool '{name}': {exc}") from None
