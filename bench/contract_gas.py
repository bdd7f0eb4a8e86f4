"""Contract gas: AgentRegistry, AgentWallet and TaskEscrow.abandon on a real anvil.

    .venv/bin/python bench/contract_gas.py

Starts a throw-away anvil (automine), deploys the suite like any devnet
(``open_chain``), and sends every call through the repo's own clients
(``RegistryClient``, ``AgentWalletClient``, ``EscrowClient``), printing the gas each
transaction used. Baselines from the same run: a plain MeshUSD transfer and a plain
ETH transfer, next to the same transfers made by an agent through its AgentWallet
(the cost of the policy checks), with the ratio.

Storage written for the first time costs more than storage rewritten, so first and
repeated calls are listed separately where it matters (first spend of a day vs the next).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from chain_bench import new_wallet  # bench/ is on sys.path when a bench script runs
from eth_account import Account
from eth_utils import function_signature_to_4byte_selector
from rich.console import Console
from rich.table import Table

from agentmesh import Config
from agentmesh.contracts import load_artifact
from agentmesh.wallets.agent_wallet import NATIVE, NO_CALLDATA, AgentWalletClient, CapMode
from agentmesh.wallets.chain import Chain, open_chain
from agentmesh.wallets.clients import (
    EscrowClient,
    RegistryCard,
    RegistryClient,
    ServiceOffer,
    TokenClient,
)
from agentmesh.wallets.deployer import dev_deployer
from agentmesh.wallets.wallet import Wallet

console = Console()
ONE = 10**6  # one mUSD in base units
ETHER = 10**18
TRANSFER = function_signature_to_4byte_selector("transfer(address,uint256)")
APPROVE = function_signature_to_4byte_selector("approve(address,uint256)")
ESCROW_OPEN = function_signature_to_4byte_selector(
    "open(address,address,uint256,uint64,uint64,address,bytes32)"
)

Rows = list[tuple[str, int]]


def gas(receipt: Any) -> int:
    return int(receipt["gasUsed"])


def calldata(fn: Any) -> bytes:
    return bytes.fromhex(fn._encode_transaction_data().removeprefix("0x"))


def card(name: str, services: int = 1) -> RegistryCard:
    """A card the size an agent registers: bootstrap endpoint, curve key, model hash."""
    return RegistryCard(
        name=name,
        endpoint="rq>Zk3wN5i!c2@p8O0Jc^Rr0=n)xh.vG2!v8d{c}@tcp://127.0.0.1:43215",
        curve_key=os.urandom(32),
        model_sha256=hashlib.sha256(b"SmolLM2-135M-Instruct.Q4_1.gguf").digest(),
        metadata_uri="tcp://127.0.0.1:43216",
        services=tuple(ServiceOffer(f"service-{i}", 50_000 + i) for i in range(services)),
    )


async def now(chain: Chain) -> int:
    return int((await chain.w3.eth.get_block("latest"))["timestamp"])


async def settled_job(chain: Chain, client: Wallet, provider: Wallet) -> int:
    """Open, accept, submit and release one escrow job; its id."""
    address = chain.deployment.address("TaskEscrow")
    as_client, as_provider = EscrowClient(client, address), EscrowClient(provider, address)
    job, _ = await as_client.open(
        provider=provider.address,
        token=TokenClient(client, chain.token_address),
        amount=ONE,
        deadline=await now(chain) + 600,
        review_window=60,
        arbiter=chain.deployment.deployer,
        terms_hash=os.urandom(32),
    )
    await as_provider.accept(job)
    await as_provider.submit(job, os.urandom(32))
    await as_client.release(job)
    return job


async def abandon_gas(chain: Chain, faucet: Wallet) -> Rows:
    client = await new_wallet(chain, faucet, musd=100)
    provider = await new_wallet(chain, faucet)
    address = chain.deployment.address("TaskEscrow")
    as_client, as_provider = EscrowClient(client, address), EscrowClient(provider, address)
    token = TokenClient(client, chain.token_address)
    rows: Rows = []
    for label in ("first job", "next job"):
        job, receipts = await as_client.open(
            provider=provider.address,
            token=token,
            amount=10 * ONE,
            deadline=await now(chain) + 600,
            review_window=60,
            arbiter=chain.deployment.deployer,
            terms_hash=os.urandom(32),
        )
        accepted = gas(await as_provider.accept(job))
        abandoned = gas(await as_provider.abandon(job))
        if label == "first job":
            rows.append(("abandon (accepted job, refund at once)", abandoned))
        else:
            total = gas(receipts[-1]) + accepted + abandoned
            rows.append(("path: open, accept, abandon (no approve)", total))
    return rows


async def registry_gas(chain: Chain, faucet: Wallet) -> Rows:
    address = chain.deployment.address("AgentRegistry")
    agent = await new_wallet(chain, faucet)
    registry = RegistryClient(agent, address)
    rows: Rows = [
        ("register (card, 1 service)", gas(await registry.register(card("summarizer-a")))),
        ("update (same card sizes)", gas(await registry.update(card("summarizer-a")))),
        ("update (4 services)", gas(await registry.update(card("summarizer-a", 4)))),
        ("deregister", gas(await registry.deregister())),
    ]
    other = RegistryClient(await new_wallet(chain, faucet), address)
    rows.append(("register (card, 4 services)", gas(await other.register(card("multi", 4)))))

    client = await new_wallet(chain, faucet, musd=100)
    provider = await new_wallet(chain, faucet)
    as_client, as_provider = RegistryClient(client, address), RegistryClient(provider, address)
    job = await settled_job(chain, client, provider)
    comment = hashlib.sha256(b"good summary").digest()
    rows.append(
        (
            "giveFeedback (client rates the provider, first rating)",
            gas(await as_client.give_feedback(job, 100, comment)),
        )
    )
    rows.append(
        (
            "giveFeedback (provider rates the client)",
            gas(await as_provider.give_feedback(job, 90, comment)),
        )
    )
    job = await settled_job(chain, client, provider)
    rows.append(
        (
            "giveFeedback (provider already rated, next job)",
            gas(await as_client.give_feedback(job, 80, comment)),
        )
    )
    return rows


async def agent_wallet_gas(chain: Chain, faucet: Wallet) -> tuple[Rows, Rows]:
    owner = await new_wallet(chain, faucet, musd=1_000)
    agent = await new_wallet(chain, faucet)
    address, receipt = await owner.deploy(
        load_artifact("AgentWallet"), owner.address, agent.address
    )
    rows: Rows = [("deploy (owner, agent)", gas(receipt))]
    wallet = AgentWalletClient(owner, address)
    as_agent = wallet.as_wallet(agent)
    token = TokenClient(owner, chain.token_address)
    escrow = chain.deployment.address("TaskEscrow")
    await token.transfer(address, 500 * ONE)
    await owner.send({"to": address, "value": 5 * ETHER})
    recipient = Account.create().address

    rows += [
        (
            "setCap (mUSD, daily)",
            gas(await wallet.set_cap(token.address, 100 * ONE, CapMode.DAILY)),
        ),
        ("setCap (ETH, rolling 24 h)", gas(await wallet.set_cap(NATIVE, ETHER, CapMode.ROLLING))),
        (
            "setAllowed (mUSD transfer)",
            gas(await wallet.set_allowed(token.address, TRANSFER, True)),
        ),
        (
            "setAllowed (plain ETH transfer)",
            gas(await wallet.set_allowed(recipient, NO_CALLDATA, True)),
        ),
    ]
    await wallet.set_allowed(token.address, APPROVE, True)
    await wallet.set_allowed(escrow, ESCROW_OPEN, True)

    send_musd = calldata(token.contract.functions.transfer(recipient, ONE))
    first_musd = gas(await as_agent.execute(token.address, 0, send_musd))
    next_musd = gas(await as_agent.execute(token.address, 0, send_musd))
    first_eth = gas(await as_agent.execute(recipient, ETHER // 100, b""))
    next_eth = gas(await as_agent.execute(recipient, ETHER // 100, b""))
    await wallet.set_cap(NATIVE, ETHER, CapMode.DAILY)  # the same, under a daily cap
    await as_agent.execute(recipient, ETHER // 100, b"")
    next_eth_daily = gas(await as_agent.execute(recipient, ETHER // 100, b""))
    open_call = EscrowClient(owner, escrow).contract.functions.open(
        Account.create().address,
        token.address,
        10 * ONE,
        await now(chain) + 3600,
        60,
        chain.deployment.deployer,
        os.urandom(32),
    )
    with_approval = gas(
        await as_agent.execute_with_approval(
            token.address, escrow, 10 * ONE, escrow, 0, calldata(open_call)
        )
    )
    rows += [
        ("execute: mUSD transfer, daily cap, first spend of the day", first_musd),
        ("execute: mUSD transfer, daily cap, next spend", next_musd),
        ("execute: ETH transfer, rolling cap, first (new recipient)", first_eth),
        ("execute: ETH transfer, rolling cap, next", next_eth),
        ("execute: ETH transfer, daily cap, next", next_eth_daily),
        ("executeWithApproval: TaskEscrow.open (approve, call, reset)", with_approval),
        ("pause", gas(await wallet.pause())),
        ("unpause", gas(await wallet.unpause())),
        (
            "withdraw (mUSD to the owner)",
            gas(await wallet.withdraw(token.address, owner.address, ONE)),
        ),
        ("setAgent (new key)", gas(await wallet.set_agent(Account.create().address))),
        ("revokeAgent", gas(await wallet.revoke_agent())),
    ]

    # Baselines: the same transfers sent directly from an EOA.
    direct_token = TokenClient(owner, chain.token_address)
    await direct_token.transfer(recipient, ONE)  # recipient's balance is non-zero from here
    direct_musd = gas(await direct_token.transfer(recipient, ONE))
    direct_eth = gas(await owner.send({"to": recipient, "value": ETHER // 100}))
    overhead: Rows = [
        ("mUSD transfer (daily cap)", direct_musd),
        ("", next_musd),
        ("ETH transfer (daily cap)", direct_eth),
        ("", next_eth_daily),
        ("ETH transfer (rolling 24 h cap)", direct_eth),
        ("", next_eth),
    ]
    return rows, overhead


def print_rows(title: str, rows: Rows) -> None:
    table = Table(title=title)
    table.add_column("call")
    table.add_column("gas used", justify="right")
    for label, used in rows:
        table.add_row(label, f"{used:,}")
    console.print(table)


async def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        async with open_chain(Path(home), Config()) as chain:
            faucet = dev_deployer(chain.w3)
            print_rows("TaskEscrow.abandon", await abandon_gas(chain, faucet))
            print_rows("AgentRegistry", await registry_gas(chain, faucet))
            rows, overhead = await agent_wallet_gas(chain, faucet)
            print_rows("AgentWallet", rows)
            table = Table(title="AgentWallet policy overhead vs a direct transfer (baseline)")
            for column in ("transfer", "direct (baseline)", "via AgentWallet", "ratio"):
                table.add_column(column, justify="left" if column == "transfer" else "right")
            for (label, direct), (_, wrapped) in zip(overhead[::2], overhead[1::2], strict=True):
                table.add_row(label, f"{direct:,}", f"{wrapped:,}", f"{wrapped / direct:.2f}x")
            console.print(table)


if __name__ == "__main__":
    asyncio.run(main())
