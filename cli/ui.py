"""``agentmesh ui``: the local web console over this home (and the demo homes in it)."""

from __future__ import annotations

import ipaddress
import sys
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

    from agentmesh.chain.devnet import check_port_free, free_port
    from agentmesh.cli.console.app import create_app
    from agentmesh.cli.console.security import new_token

    home = state(ctx).home
    if not _loopback(host) and not expose:
        raise AgentMeshValueError(
            f"--host {host} would let other machines reach the console: add --expose to "
            "mean it (the access token is still required)"
        )
    if port == 0:
        port = free_port(host if host != "localhost" else "127.0.0.1")
    else:
        from agentmesh.errors import PortInUseError

        try:
            check_port_free(host if host != "localhost" else "127.0.0.1", port)
        except PortInUseError:
            raise AgentMeshValueError(
                f"port {port} on {host} is in use (another console?): choose another with "
                "--port, or --port 0 for any free one"
            ) from None
    token = new_token()
    shown = "127.0.0.1" if _loopback(host) else host
    hosts = [f"{shown}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"]
    if ":" in shown:  # an IPv6 address is written in brackets in a Host header
        hosts.append(f"[{shown}]:{port}")
    app = create_app(home, token, port=port, hosts=hosts)
    url = f"http://{shown if ':' not in shown else f'[{shown}]'}:{port}/?token={token}"
    console.print(f"agentmesh console for {home}")
    console.print(f"open: {url}", soft_wrap=True, highlight=False)
    if not _loopback(host):
        console.print(f"[yellow]listening on {host}: anyone who reaches it needs the token[/]")
    console.print("Ctrl-C stops it")
    sys.stdout.flush()
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=2,
        server_header=False,
    )
    uvicorn.Server(config).run()
