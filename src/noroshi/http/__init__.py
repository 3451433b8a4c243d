"""The thin HTTP core: request and response types, router, CORS, the HTTP/1.1 server and
the ASGI adapter."""

from noroshi.http.request import Request
from noroshi.http.response import JSONResponse, Response, StreamResponse
from noroshi.http.router import Router

__all__ = ["JSONResponse", "Request", "Response", "Router", "StreamResponse"]
