from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from tests.helpers import ONE_MUSD, WalletFactory, token_for


async def test_fresh_wallet_is_funded(chain: Chain, make_wallet: WalletFactory) -> None:
    wallet = await make_wallet(eth=1, musd=5)
    assert await token_for(chain, wallet).balance_of(wallet.address) == 5 * ONE_MUSD
    assert await wallet.eth_balance() == 10**18


async def test_snapshot_isolates_tests(chain: Chain, token: TokenClient) -> None:
    # The previous test minted to a random wallet; total supply is back to the seed amount.
    accounts = await chain.w3.eth.accounts
    seeded = 200_000 * ONE_MUSD  # the devnet exchange's WETH/mUSD pool
    assert await token.total_supply() == len(accounts) * 10_000 * ONE_MUSD + seeded
