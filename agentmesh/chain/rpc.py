"""A tiny blocking JSON-RPC client for readiness and status checks.

Kept free of web3 so that starting and probing a devnet does not pay web3's import
time (the CLI's ``--help`` and ``devnet status`` stay fast).
"""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.request
from typing import Any

from agentmesh.errors import ChainUnavailableError

_ids = itertools.count(1)


def rpc_call(url: str, method: str, params: list[Any] | None = None, timeout: float = 2.0) -> Any:
    """Call ``method`` on ``url``; returns the result or raises ``ChainUnavailableError``."""
    body = json.dumps(
        {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": params or []}
    ).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ChainUnavailableError(f"chain at {url} is not answering ({exc})") from exc
    if "error" in reply:
        raise ChainUnavailableError(f"chain at {url} refused {method}: {reply['error']}")
    return reply["result"]


def is_up(url: str, timeout: float = 1.0) -> bool:
    """True when ``url`` answers ``eth_chainId``."""
    try:
        rpc_call(url, "eth_chainId", timeout=timeout)
    except ChainUnavailableError:
        return False
    return True
