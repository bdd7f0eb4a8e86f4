"""Several endpoints of one chain, tried in order (``[chain] fallback_rpc_urls``)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agentmesh.chain.devnet import AnvilProcess, free_port, start_anvil
from agentmesh.config import ChainConfig, DevnetConfig
from agentmesh.errors import ChainUnavailableError
from agentmesh.wallets.endpoints import ChainProvider, connect


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
