"""The devnet faucet tops up low agent wallets, and says so."""

from __future__ import annotations

import logging

import pytest

from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.faucet import MUSD_TOP_UP, top_up
from tests.helpers import WalletFactory


async def test_the_faucet_says_when_it_mints(
    chain: Chain, make_wallet: WalletFactory, token: TokenClient, caplog: pytest.LogCaptureFixture
) -> None:
    wallet = await make_wallet(eth=5, musd=0)
    with caplog.at_level(logging.WARNING, logger="agentmesh.faucet"):
        await top_up(chain, wallet)
    assert await token.balance_of(wallet.address) == MUSD_TOP_UP
    assert f"faucet: {wallet.address} had 0 mUSD (under 100 mUSD), minted it 1,000 mUSD" in (
        caplog.text
    )
    assert "ETH" not in caplog.text  # it had gas
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agentmesh.faucet"):
        await top_up(chain, wallet)  # enough now: nothing sent, nothing said
    assert await token.balance_of(wallet.address) == MUSD_TOP_UP
    assert caplog.text == ""
