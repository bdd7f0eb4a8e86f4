"""Several endpoints of one chain, tried in order (``[chain] fallback_rpc_urls``)."""

from __future__ import annotations

import asyncio
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from agentmesh.chain.devnet import AnvilProcess, free_port, start_anvil
from agentmesh.config import ChainConfig, DevnetConfig
from agentmesh.errors import ChainUnavailableError, DevnetError
from agentmesh.wallets.endpoints import ChainProvider, connect
from agentmesh.wallets.sending import public_url


async def test_a_dead_first_endpoint_hands_over_to_the_next_and_is_tried_again_later(
    anvil: AnvilProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentmesh")
    dead = f"http://127.0.0.1:{free_port()}"
    w3 = connect([dead, anvil.rpc_url], retry_first_s=0.5)
    provider = w3.provider
    assert isinstance(provider, ChainProvider)
    try:
        assert await w3.eth.chain_id == 31337  # answered by the second
        assert provider.endpoint_uri == anvil.rpc_url
        assert f"chain endpoint {dead} does not answer: using {anvil.rpc_url}" in caplog.text
        block = await w3.eth.block_number  # stays on the second: no new failover
        assert caplog.text.count("does not answer") == 1
        # The first comes back (another node of the chain there) and is preferred again.
        port = int(dead.rsplit(":", 1)[1])
        with start_anvil(DevnetConfig(), port=port):
            await asyncio.sleep(0.6)
            assert await w3.eth.block_number >= 0
            assert provider.endpoint_uri == dead
            assert f"chain endpoint {dead} answers again" in caplog.text
        assert await w3.eth.block_number >= block  # gone again: the second answers
        assert provider.endpoint_uri == anvil.rpc_url
    finally:
        await w3.provider.disconnect()


async def test_no_endpoint_answering_is_chain_unavailable_naming_them_all() -> None:
    urls = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    w3 = connect(urls)
    try:
        with pytest.raises(ChainUnavailableError) as info:
            await w3.eth.chain_id
        assert f"no answer from {urls[0]}, {urls[1]}" in info.value.user_message
    finally:
        await w3.provider.disconnect()


def test_endpoints_in_config_are_urls_and_fallbacks_follow_a_first() -> None:
    chain = ChainConfig(rpc_url="http://a:8545", fallback_rpc_urls=("https://b",))
    assert chain.rpc_urls == ("http://a:8545", "https://b")
    with pytest.raises(ValueError, match="set rpc_url too"):
        ChainConfig(fallback_rpc_urls=("http://b",))
    with pytest.raises(ValueError, match="not an http"):
        ChainConfig(rpc_url="ws://a:8545")
    assert ChainConfig().rpc_urls == ()


def test_urls_in_messages_keep_no_key_user_or_path() -> None:
    assert public_url("https://user:pw@rpc.example.org/v2/SECRETKEY?x=1") == (
        "https://rpc.example.org"
    )
    assert public_url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"
    assert public_url("http://[::1]:8545/key") == "http://[::1]:8545"
    assert public_url("not a url") == "the chain"


async def test_an_endpoint_refusing_us_is_a_clear_error_not_an_outage(
    anvil: AnvilProcess,
) -> None:
    """A 401 (a wrong API key) is named at once, with the key left out; it is not
    waited out as an outage, nor handed to the next endpoint."""

    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v2/SECRETKEY"
    w3 = connect([url, anvil.rpc_url])
    try:
        with pytest.raises(DevnetError) as info:
            await w3.eth.chain_id
        message = info.value.user_message
        assert not isinstance(info.value, ChainUnavailableError)
        assert "HTTP 401" in message and "API key" in message
        assert "SECRETKEY" not in message
    finally:
        server.shutdown()
        await w3.provider.disconnect()
