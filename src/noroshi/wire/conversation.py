"""The gateway's own model of a conversation, between the wire formats it speaks.

Every format (OpenAI chat completions, Anthropic Messages, OpenAI Responses) has one decoder
into these types and one encoder out of them, so a request in any format reaches a provider of
any format, and its answer goes back, through exactly two translations. Nothing here knows a
wire format: the types say what a conversation holds, not how any API spells it.
"""

from __future__ import annotations

import msgspec

__all__ = ["Usage"]


class Usage(msgspec.Struct):
    """Tokens by kind, as billed. `prompt_tokens` counts every input token, those read from or
    written to a prompt cache included (OpenAI's meaning); `completion_tokens` every output
    token, reasoning included. The kinds say how many of those are priced differently."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0  # of prompt_tokens: read from the prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens: written to the prompt cache
    reasoning_tokens: int = 0  # of completion_tokens: thinking

    @property
    def uncached_tokens(self) -> int:
        """Input tokens priced as plain input."""
        return max(0, self.prompt_tokens - self.cache_read_tokens - self.cache_write_tokens)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
