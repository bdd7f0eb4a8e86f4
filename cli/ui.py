"""``agentmesh ui``: the local web console over this home (and the demo homes in it)."""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from agentmesh.cli.context import console, state
from agentmesh.errors import AgentMeshValueError

DEFAULT_PORT = 8765


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ui(
    ctx: typer.Context,
    port: Annotated[
        int, typer.Option(help="port to listen on (0: any free port)", min=0, max=65535)
    ] = DEFAULT_PORT,
    host: Annotated[str, typer.Option(help="address to bind (loopback unless --expose)")] = (
        "127.0.0.1"
    ),
    expose: Annotated[
        bool,
        typer.Option(
            "--expose",
            help="allow binding an address other machines reach (the token is still needed)",
        ),
    ] = False,
    open_browser: Annotated[bool, typer.Option("--open", help="open it in a browser")] = False,
) -> None:
    """Serve the web console: agents, mesh, tasks, approvals, channels, delegations and
    validator epochs, live while agents run. Prints the URL with its access token."""
    import uvicorn

    from agentmesh.cli.console.app import create_app
    from agentmesh.cli.console.security import new_token

    home = state(ctx).home
    if host in ("0.0.0.0", "::", ""):
        raise AgentMeshValueError(
            f"--host {host!r} listens on every address; give the one address clients use "
            "(the console answers only requests naming it, against DNS rebinding)"
        )
    if not _loopback(host) and not expose:
        raise AgentMeshValueError(
            f"--host {host} would let other machines reach the console: add --expose to "
            "mean it (the access token is still required)"
        )
    bind = "127.0.0.1" if host == "localhost" else host
    from agentmesh.chain.devnet import check_port_free, free_port
    from agentmesh.errors import PortInUseError

    if port == 0:
        port = free_port(bind)
    else:
        try:
            check_port_free(bind, port)
        except PortInUseError as exc:
            cause = exc.__cause__
            reason = cause.strerror if isinstance(cause, OSError) else "in use"
            raise AgentMeshValueError(
                f"cannot listen on {bind} port {port} ({reason}): another console? "
                "choose another with --port, or --port 0 for any free one"
            ) from None
    token = new_token()
    named = f"[{bind}]" if ":" in bind else bind  # an IPv6 address in a URL or Host
    hosts = [f"{named}:{port}"]
    if bind == "127.0.0.1":
        hosts.append(f"localhost:{port}")
    app = create_app(home, token, port=port, hosts=hosts)
    url = f"http://{named}:{port}/?token={token}"
    console.print(f"agentmesh console for {home}")
    console.print(f"open: {url}", soft_wrap=True, highlight=False)
    if not _loopback(host):
        console.print(f"[yellow]listening on {host}: anyone who reaches it needs the token[/]")
    console.print("Ctrl-C stops it")
    sys.stdout.flush()
    opener = _login_page(home, port, url) if open_browser else None
    if opener is not None:
        import webbrowser

        # The browser is given a file that redirects to the URL, not the URL itself:
        # a command line (with the token) is visible to every local user in `ps`.
        webbrowser.open(opener.as_uri())
    config = uvicorn.Config(
        app,
        host=bind,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=2,
        server_header=False,
    )
    try:
        uvicorn.Server(config).run()
    finally:
        if opener is not None:
            opener.unlink(missing_ok=True)


def _login_page(home: Path, port: int, url: str) -> Path:
    """A private file (0600, in the home) that sends a browser on to ``url``."""
    from html import escape

    folder = home / "ui"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    page = folder / f"open-{port}.html"
    fd = os.open(page, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(
            f'<!doctype html><meta http-equiv="refresh" content="0;url={escape(url)}">'
            f'<a href="{escape(url)}">agentmesh console</a>\n'
        )
    return page
