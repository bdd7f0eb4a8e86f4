"""The console's gate: the access token on every request, the host it was reached by,
and cross-site protection for the actions (approve, reject).

- The token, random per start and printed with the URL (as Jupyter does), is taken
  once from ``?token=`` on a page (then kept in an HttpOnly, SameSite=Strict cookie and
  dropped from the address bar) or from ``Authorization: Bearer`` on every API call.
  Anything else is 401 with no data.
- The Host header must name the address the console listens on (a page of another
  site that resolves its own name to 127.0.0.1 gets 421: DNS rebinding).
- A POST needs the form's CSRF value (derived from the token) and, when the browser
  says where it came from (Origin, Sec-Fetch-Site), this very origin.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Collection
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

UNAUTHORIZED = (
    "401 Unauthorized: this console needs its access token. Open the URL that "
    "`agentmesh ui` printed (it ends in ?token=...), or send 'Authorization: Bearer TOKEN'."
)

SECURITY_HEADERS = {
    # Everything the pages use is served by the console itself: no CDN, no inline script.
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on
    # the console's own form posts, which the origin check must then refuse.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def new_token() -> str:
    return secrets.token_urlsafe(24)


def csrf_value(token: str) -> str:
    """The value every form carries: tied to this start's token, unknown to other sites."""
    return hmac.new(token.encode(), b"agentmesh-console-csrf", hashlib.sha256).hexdigest()


def cookie_name(port: int) -> str:
    # One cookie per port: two consoles on one machine keep their own tokens.
    return f"agentmesh_console_{port}"


class TokenGate:
    """ASGI middleware in front of every route (static files and events included)."""

    def __init__(self, app: ASGIApp, *, token: str, port: int, hosts: Collection[str]) -> None:
        self.app = app
        self.token = token
        self.cookie = cookie_name(port)
        self.hosts = {h.lower() for h in hosts}

    def _holds_token(self, request: Request) -> bool:
        given = request.cookies.get(self.cookie, "")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        response = self._refusal(request)
        if response is None:

            async def with_headers(message: Any) -> None:
                if message["type"] == "http.response.start":
                    headers = list(message.get("headers", []))
                    headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                    message = {**message, "headers": headers}
                await send(message)

            await self.app(scope, receive, with_headers)
            return
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        await response(scope, receive, send)

    def _refusal(self, request: Request) -> Response | None:
        host = (request.headers.get("host") or "").lower()
        if host not in self.hosts:
            return PlainTextResponse(
                f"421 Misdirected Request: this console answers as {sorted(self.hosts)[0]}, "
                f"not {host or 'no host'}",
                status_code=421,
            )
        given = request.query_params.get("token")
        if given is not None and request.method == "GET":
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return PlainTextResponse(UNAUTHORIZED, status_code=401)
            # Keep it in a cookie and take it out of the address bar and history.
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = URL(path=request.url.path, query=urlencode(rest))
            redirect = RedirectResponse(str(target), status_code=303)
            redirect.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
            return redirect
        if not self._holds_token(request):
            return PlainTextResponse(
                UNAUTHORIZED, status_code=401, headers={"www-authenticate": "Bearer"}
            )
        if request.method not in ("GET", "HEAD"):
            return self._cross_site(request, host)
        return None

    def _cross_site(self, request: Request, host: str) -> Response | None:
        origin = request.headers.get("origin")
        if origin is not None and origin.lower() not in {f"http://{h}" for h in self.hosts}:
            return PlainTextResponse(
                f"403 Forbidden: a request from {origin} may not act on this console",
                status_code=403,
            )
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return PlainTextResponse(
                f"403 Forbidden: a {site} request may not act on this console", status_code=403
            )
        return None
