"""``EscrowClient.find_opened_job``: the job a client opened for a provider under a terms
hash since a block, which a requester uses to find a job whose receipt it lost (after a
crash or a timeout) instead of paying for it twice."""

from __future__ import annotations

from eth_account import Account

from agentmesh.wallets.chain import Chain
from agentmesh.wallets.wallet import Wallet
from tests.helpers import ONE_MUSD, WalletFactory, chain_now, escrow_for, h32, token_for

AMOUNT = 5 * ONE_MUSD


async def _open(chain: Chain, client: Wallet, provider: Wallet, terms: str) -> tuple[int, int]:
    """Open a job; returns its id and the block it was opened in."""
    job_id, receipts = await escrow_for(chain, client).open(
        provider=provider.address,
        token=token_for(chain, client),
        amount=AMOUNT,
        deadline=await chain_now(chain) + 3_600,
        review_window=600,
        arbiter=Account.create().address,
        terms_hash=h32(terms),
    )
    return job_id, int(receipts[-1]["blockNumber"])


async def test_finds_the_job_by_client_provider_and_terms(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    client = await make_wallet(musd=100, name="client")
    provider = await make_wallet(musd=0, name="provider")
    other_provider = await make_wallet(musd=0, name="other-provider")
    other_client = await make_wallet(musd=100, name="other-client")
    start = int(await chain.w3.eth.block_number)
    first, first_block = await _open(chain, client, provider, "first")
    second, _ = await _open(chain, client, provider, "second")
    elsewhere, _ = await _open(chain, client, other_provider, "first")
    theirs, _ = await _open(chain, other_client, provider, "theirs")
    escrow = escrow_for(chain, Wallet(Account.create(), chain.w3))  # anyone may look

    async def find(who: Wallet, whom: Wallet, terms: str, since: int = start) -> int | None:
        return await escrow.find_opened_job(who.address, whom.address, h32(terms), since)

    assert len({first, second, elsewhere, theirs}) == 4
    assert await find(client, provider, "first") == first
    assert await find(client, provider, "second") == second
    assert await find(client, other_provider, "first") == elsewhere
    assert await find(other_client, provider, "theirs") == theirs
    # The terms hash, the provider and the client must all match.
    assert await find(client, provider, "never agreed") is None
    assert await find(client, other_provider, "second") is None
    assert await find(other_client, provider, "first") is None
    # Only jobs opened in from_block or later count.
    assert await find(client, provider, "first", since=first_block) == first
    assert await find(client, provider, "first", since=first_block + 1) is None
    assert await find(client, provider, "second", since=first_block + 1) == second


async def test_nothing_opened_yet_is_none(chain: Chain, make_wallet: WalletFactory) -> None:
    client = await make_wallet(musd=100)
    provider = await make_wallet(musd=0)

    found = await escrow_for(chain, client).find_opened_job(
        client.address, provider.address, h32("terms"), int(await chain.w3.eth.block_number)
    )

    assert found is None
