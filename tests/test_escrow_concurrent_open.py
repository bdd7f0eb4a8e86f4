"""One wallet opening several escrow jobs at once: none loses its allowance."""

from __future__ import annotations

import asyncio

from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import JobStatus
from tests.helpers import ONE_MUSD, WalletFactory, chain_now, escrow_for, token_for


async def test_concurrent_opens_from_one_wallet_all_fund(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    client, provider = await make_wallet(musd=10), await make_wallet(musd=0)
    escrow, token = escrow_for(chain, client), token_for(chain, client)
    deadline = await chain_now(chain) + 600

    async def open_one(n: int) -> int:
        job_id, _ = await escrow.open(
            provider=provider.address,
            token=token,
            amount=(n + 1) * ONE_MUSD,
            deadline=deadline,
            review_window=60,
            arbiter=chain.deployment.deployer,
            terms_hash=bytes([n + 1]) * 32,
        )
        return job_id

    job_ids = await asyncio.gather(*(open_one(n) for n in range(4)))
    assert len(set(job_ids)) == 4
    for n, job_id in enumerate(job_ids):
        job = await escrow.get_job(job_id)
        assert job.status == JobStatus.OPEN and job.terms_hash == bytes([n + 1]) * 32
        assert job.amount == (n + 1) * ONE_MUSD
    assert await token.balance_of(client.address) == 0  # 1 + 2 + 3 + 4 mUSD deposited
    assert await token.balance_of(escrow.address) >= 10 * ONE_MUSD
