"""`search_knowledge`: the built-in tool of an agent with `knowledge` in its config. It
searches the agent's knowledge bases and reports the passages it found as sources."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from noroshi.agent.tools import Tool, ToolArgumentError, ToolError, ToolResult
from noroshi.errors import NoroshiError

if TYPE_CHECKING:
    from noroshi.retrieval.service import Knowledge
    from noroshi.wire.knowledge import Hit

__all__ = ["KnowledgeTool"]

MAX_K = 20


class KnowledgeTool(Tool):
    def __init__(self, knowledge: Knowledge, bases: list[str], k: int = 5) -> None:
        self.knowledge = knowledge
        self.bases = bases
        self.k = k
        self.name = "search_knowledge"
        self.description = (
            f"Search the knowledge bases ({', '.join(bases)}) for passages about a question. "
            "Returns the best passages, numbered, with their sources; cite them by number."
        )
        self.parameters = {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "What to look for, in words."},
                "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": k},
            },
            "required": ["query"],
        }

    async def call(self, arguments: dict[str, Any]) -> ToolResult:
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ToolArgumentError("`query` must be a non-empty string")
        k = arguments.get("k", self.k)
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ToolArgumentError(f"`k` must be a whole number from 1 to {MAX_K}")
        try:
            found = await asyncio.gather(
                *(self.knowledge.search(name, query, k) for name in self.bases)
            )
        except NoroshiError as exc:
            raise ToolError(exc.message) from None
        hits = sorted((h for per_base in found for h in per_base), key=lambda h: -h.score)[:k]
        if not hits:
            return ToolResult("No passages found.")
        return ToolResult(_passages(hits), sources=[_source(h) for h in hits])


def _passages(hits: list[Hit]) -> str:
    blocks = []
    for i, hit in enumerate(hits, 1):
        where = f" — {hit.heading}" if hit.heading else ""
        blocks.append(f"[{i}] {hit.title}{where} ({hit.source})\n{hit.text}")
    return "\n\n".join(blocks)


def _source(hit: Hit) -> dict[str, Any]:
    return {
        "id": hit.chunk_id,
        "document_id": hit.document_id,
        "source": hit.source,
        "title": hit.title,
        "heading": hit.heading,
        "score": hit.score,
    }
