"""The console as an ASGI app (Starlette): server-rendered pages, the same data as JSON
under ``/api``, and ``/events`` (server-sent events) telling a page when what it shows
has changed, so it swaps its content in place without a reload."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from agentmesh.cli.console import market_views, money_views, svg
from agentmesh.cli.console.chain_view import ChainView
from agentmesh.cli.console.homes import Home, homes, pick, version
from agentmesh.cli.console.security import TokenGate, csrf_value
from agentmesh.errors import AgentMeshError
from agentmesh.wallets.units import local_time

HERE = Path(__file__).parent
log = logging.getLogger("agentmesh.console")
EVENT_POLL_S = 0.5  # how often /events looks for a change
KEEPALIVE_S = 15.0
FRAGMENT_HEADER = "x-console-fragment"

# page name -> (title, the files whose changes re-render it)
PAGES = {
    "agents": ("Agents", "all"),
    "mesh": ("Mesh", "mesh"),
    "tasks": ("Tasks", "tasks"),
    "approvals": ("Approvals", "tasks"),
    "channels": ("Channels", "money"),
    "delegations": ("Delegations", "money"),
    "validators": ("Validators", "money"),
}
SCOPES = {"task": "tasks"}  # pages outside the navigation


@dataclass
class Console:
    """What every request shares: the home, the token, a chain view per home."""

    main: Path
    token: str
    chains: dict[Path, ChainView] = field(default_factory=dict)

    def chain(self, home: Home) -> ChainView:
        if home.path not in self.chains:
            self.chains[home.path] = ChainView(home.path)
        return self.chains[home.path]

    async def close(self) -> None:
        for view in self.chains.values():
            await view.close()


def _ago(ms: int | None) -> str:
    if not ms:
        return ""
    seconds = max(0.0, time.time() - ms / 1000)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _short(text: str | None, keep: int = 10) -> str:
    return "" if not text else text if len(text) <= keep + 4 else f"{text[:keep]}…"


def create_app(main: Path, token: str, *, port: int, hosts: list[str]) -> Starlette:
    """The console for home ``main``; ``hosts`` are the Host values it answers to."""
    console = Console(main, token)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.globals.update(
        gauge=svg.gauge,
        line_chart=svg.line_chart,
        peer_graph=svg.peer_graph,
        pages=PAGES,
        clock=lambda s: time.strftime("%H:%M", time.localtime(s)),  # chain time, local
        epoch_tick=lambda n: f"epoch {n:.0f}",
    )
    env.filters.update(
        ago=_ago,
        short=_short,
        local=lambda s: local_time(s) if s else "",
        local_ms=lambda ms: local_time(ms / 1000) if ms else "",
    )

    def home_of(request: Request) -> Home:
        return pick(console.main, request.query_params.get("home"))

    async def page(
        request: Request,
        name: str,
        load: Callable[[Home], Awaitable[dict[str, Any]]],
        template: str | None = None,
    ) -> Response:
        scope = PAGES[name][1] if name in PAGES else SCOPES.get(name, "all")
        try:
            home, shown = version(console.main, request.query_params.get("home"), scope)
        except AgentMeshError as exc:
            return _error(request, 404, exc.user_message)
        try:
            data = await load(home)
        except AgentMeshError as exc:
            return _error(request, 503, f"could not read this page's data: {exc.user_message}")
        except Exception as exc:  # a damaged file, a demo folder removed mid-read, a bug
            log.exception("console page %s failed", request.url.path)
            return _error(request, 500, f"this page failed: {type(exc).__name__}: {str(exc)[:200]}")
        if data is None:
            return _error(request, 404, f"no such {name} in {home.label}")
        if request.url.path.startswith("/api/"):
            return JSONResponse(data)
        context = {
            "data": data,
            "home": home,
            "homes": homes(console.main),
            "page": name,
            "scope": scope,
            "version": shown,
            "csrf": csrf_value(console.token),
            # Links keep the address's own choice: a pinned home, or following the latest.
            "pinned": "home" in request.query_params,
            "fragment": request.headers.get(FRAGMENT_HEADER) == "1",
            # Which approval was just decided (the page shows its record, not free text
            # from the address, so a crafted link cannot put words on the page).
            "decided": request.query_params.get("decided", ""),
        }
        response = templates.TemplateResponse(request, template or f"{name}.html", context)
        response.headers["x-console-version"] = shown
        return response

    def _error(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status)
        return templates.TemplateResponse(
            request,
            "error.html",
            {
                "message": message,
                "status": status,
                "fragment": False,
                "page": "",
                "home": _safe_home(request),
                "homes": homes(console.main),
                "scope": "all",
                "version": "",
                "decided": "",
            },
            status_code=status,
        )

    def _safe_home(request: Request) -> Home:
        try:
            return home_of(request)
        except AgentMeshError:
            return Home("", console.main)

    async def agents_page(request: Request) -> Response:
        return await page(request, "agents", lambda h: market_views.agents(h, console.chain(h)))

    async def mesh_page(request: Request) -> Response:
        return await page(request, "mesh", _sync(market_views.mesh))

    async def tasks_page(request: Request) -> Response:
        return await page(request, "tasks", _sync(market_views.tasks))

    async def task_page(request: Request) -> Response:
        agent, task_id = request.path_params["agent"], request.path_params["task"].lower()

        async def load(home: Home) -> Any:
            return await market_views.task(home, console.chain(home), agent, task_id)

        return await page(request, "task", load, "task.html")

    async def approvals_page(request: Request) -> Response:
        return await page(request, "approvals", _sync(market_views.approvals))

    async def channels_page(request: Request) -> Response:
        return await page(request, "channels", lambda h: money_views.channels(h, console.chain(h)))

    async def delegations_page(request: Request) -> Response:
        return await page(
            request, "delegations", lambda h: money_views.delegations(h, console.chain(h))
        )

    async def validators_page(request: Request) -> Response:
        return await page(
            request, "validators", lambda h: money_views.validators(h, console.chain(h))
        )

    async def decide(request: Request) -> Response:
        approval_id, verdict = request.path_params["approval"], request.path_params["verdict"]
        if verdict not in ("approve", "reject"):
            return _error(request, 404, f"no action {verdict!r}: approve or reject")
        approved = verdict == "approve"
        form = await request.form()
        bearer = request.headers.get("authorization", "").lower().startswith("bearer ")
        sent = str(form.get("csrf", ""))
        if not bearer and not hmac.compare_digest(sent.encode(), csrf_value(token).encode()):
            return _error(request, 403, "this form is stale or from another site: reload it")
        try:
            home = home_of(request)
            done = market_views.decide(home, approval_id, approved)
        except AgentMeshError as exc:
            return _error(request, 409, exc.user_message)
        if request.url.path.startswith("/api/"):
            return JSONResponse(done)
        target = request.url_for("approvals").include_query_params(
            home=home.key, decided=done["id"]
        )
        return RedirectResponse(str(target.replace(scheme="", netloc="")), status_code=303)

    async def events(request: Request) -> Response:
        key = request.query_params.get("home")  # None: follow the home that changed last
        scope = request.query_params.get("scope", "all")
        if scope not in {s for _, s in PAGES.values()}:
            return _error(request, 400, f"unknown scope {scope!r}")
        try:
            version(console.main, key, scope)
        except AgentMeshError as exc:
            return _error(request, 404, exc.user_message)

        async def stream() -> AsyncIterator[str]:
            last, quiet = "", 0.0
            while not await request.is_disconnected():
                try:
                    _, now = await asyncio.to_thread(version, console.main, key, scope)
                except (AgentMeshError, OSError):  # its demo home was removed (a new run)
                    now = "gone"
                if now != last:
                    last, quiet = now, 0.0
                    yield f"event: version\ndata: {now}\n\n"
                elif quiet >= KEEPALIVE_S:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(EVENT_POLL_S)
                quiet += EVENT_POLL_S

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"x-accel-buffering": "no"}
        )

    routes = [
        Route("/", agents_page, name="agents"),
        Route("/mesh", mesh_page, name="mesh"),
        Route("/tasks", tasks_page, name="tasks"),
        Route("/tasks/{agent}/{task}", task_page, name="task"),
        Route("/approvals", approvals_page, name="approvals"),
        Route("/approvals/{approval}/{verdict:str}", decide, methods=["POST"]),
        Route("/channels", channels_page, name="channels"),
        Route("/delegations", delegations_page, name="delegations"),
        Route("/validators", validators_page, name="validators"),
        Route("/api/agents", agents_page),
        Route("/api/mesh", mesh_page),
        Route("/api/tasks", tasks_page),
        Route("/api/tasks/{agent}/{task}", task_page),
        Route("/api/approvals", approvals_page),
        Route("/api/approvals/{approval}/{verdict:str}", decide, methods=["POST"]),
        Route("/api/channels", channels_page),
        Route("/api/delegations", delegations_page),
        Route("/api/validators", validators_page),
        Route("/events", events),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await console.close()

    from contextlib import asynccontextmanager

    app = Starlette(routes=routes, lifespan=asynccontextmanager(lifespan))
    app.add_middleware(TokenGate, token=token, port=port, hosts=hosts)
    return app


def _sync(view: Callable[[Home], dict[str, Any]]) -> Callable[[Home], Awaitable[dict[str, Any]]]:
    """A view that reads only local files, run off the event loop."""

    async def load(home: Home) -> dict[str, Any]:
        return await asyncio.to_thread(view, home)

    return load
