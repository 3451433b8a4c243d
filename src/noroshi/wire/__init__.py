"""Wire formats: OpenAI request and chunk types, the SSE codec."""
