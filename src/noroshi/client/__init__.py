"""A typed Python client for noroshi, built on the server's own types: what it sends is
checked against the types the server decodes, and what comes back is decoded into them.

    from noroshi.client import Client
    c = Client("http://127.0.0.1:8080", api_key="nrs-...")
    for event in c.chat.stream(messages=[{"role": "user", "content": "hi"}], model="fast"):
        print(event.text, end="")
"""

from noroshi.client._async import AsyncClient, AsyncStream
from noroshi.client._base import (
    APIConnectionError,
    APIError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)
from noroshi.client._sync import Client, Stream

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "AsyncClient",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "Stream",
]
