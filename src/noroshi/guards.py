"""The guards between the router and a handler, in one place and in the order a request meets
them: CORS (a preflight is answered here), the route's access (who is calling, and may they),
and on model routes admission (the key's models, budgets and limits), through the meter that
also bills the request when it ends. On the way out they add what they owe every answer: the
rate-limit headers, the request id and the CORS headers.

Admission needs the model and the output limit, which only the handler can read from its body,
so handlers call `admit` once they know them; what it decides is decided here.
"""

from __future__ import annotations

from noroshi.accounting import Accountant, Meter, estimate_tokens
from noroshi.auth import Authenticator
from noroshi.http.cors import Cors
from noroshi.http.request import Request
from noroshi.http.response import Response
from noroshi.http.router import Route
from noroshi.providers.base import Routed
from noroshi.providers.core import CALLER

__all__ = ["Guards"]


class Guards:
    def __init__(
        self,
        auth: Authenticator,
        accountant: Accountant,
        cors: Cors | None = None,
        *,
        bills: bool = True,
        vouches: bool = False,
    ) -> None:
        self.auth = auth
        self.accountant = accountant
        self.cors = cors
        self.bills = bills  # a core answers its edge, which bills
        self.vouches = vouches  # an edge tells its cores who is calling

    def preflight(self, request: Request) -> Response | None:
        """A CORS preflight's answer, before any route is looked for."""
        return self.cors.preflight(request) if self.cors is not None else None

    async def enter(self, request: Request, route: Route) -> None:
        """Who is calling, and may they call this route; a model route gets its meter."""
        principal = request.principal = await self.auth.check(request, route.access)
        if route.access == "model" and self.bills:
            request.meter = Meter(principal, route.path, request.id)
        if principal is not None and self.vouches:
            CALLER.set(principal.context())

    async def admit(self, request: Request, routed: Routed, output_limit: int | None) -> None:
        """The key's models, budgets and limits, checked before any upstream is called."""
        meter = request.meter
        if meter is not None:
            estimate = estimate_tokens(len(await request.body()))
            await self.accountant.admit(meter, routed.model, estimate, output_limit)
            meter.routed = routed

    def leave(self, request: Request, response: Response) -> None:
        """The headers every answer owes: its rate limits, its request id, CORS."""
        headers = response.headers
        if request.meter is not None:
            headers.extend(self.accountant.headers(request.meter))
        headers.append(("x-request-id", request.id))
        if self.cors is not None:
            headers.extend(self.cors.headers(request))
