"""``agentmesh demo``: the foundation end to end on a throw-away devnet.

Starts anvil, deploys the suite, creates two encrypted wallets (alice, bob), funds
alice, pays bob directly and through a full TaskEscrow job (open, accept, submit,
release, feedback), then prints both balances and checks that no mUSD was lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agentmesh.cli.context import console, run, state
from agentmesh.errors import AgentMeshError


async def _demo(scrypt_n: int) -> None:
    from agentmesh.config import Config, DevnetConfig, WalletConfig
    from agentmesh.wallets.chain import open_chain
    from agentmesh.wallets.clients import EscrowClient, RegistryClient, TokenClient
    from agentmesh.wallets.deployer import dev_deployer
    from agentmesh.wallets.keystore import Keystore
    from agentmesh.wallets.units import MUSD_DECIMALS, format_amount
    from agentmesh.wallets.wallet import Wallet

    def musd(units: int) -> str:
        return format_amount(units, MUSD_DECIMALS, "mUSD")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="agentmesh-demo-") as tmp:
        home = Path(tmp)
        config = Config(
            devnet=DevnetConfig(dev_account_musd=0), wallet=WalletConfig(scrypt_n=scrypt_n)
        )
        async with contextlib.AsyncExitStack() as stack:
            with console.status("starting devnet and deploying contracts..."):
                chain = await stack.enter_async_context(open_chain(home, config))
            console.print(
                f"[green]✓[/] devnet {chain.rpc_url} (chain {chain.deployment.chain_id})"
                f", contracts: {', '.join(chain.deployment.contracts)}"
            )
            keystore = Keystore(home, scrypt_n=scrypt_n)
            wallets = {}
            with console.status("creating encrypted wallets alice and bob..."):
                for name in ("alice", "bob"):
                    secret = secrets.token_urlsafe(16)
                    keystore.create(name, secret)
                    wallets[name] = Wallet(keystore.load(name, secret), chain.w3, name=name)
            alice, bob = wallets["alice"], wallets["bob"]
            console.print(
                f"[green]✓[/] wallets: alice {alice.address}, bob {bob.address} "
                "(scrypt keystores, mode 0600)"
            )

            faucet = dev_deployer(chain.w3)
            minted = 100 * 10**MUSD_DECIMALS
            with console.status("funding alice and bob..."):
                for wallet in (alice, bob):
                    await faucet.send({"to": wallet.address, "value": 10**18})
                await TokenClient(faucet, chain.token_address).mint(alice.address, minted)
            console.print(f"[green]✓[/] funded: 1 ETH each for gas, {musd(minted)} to alice")

            token = TokenClient(alice, chain.token_address)
            direct = 10 * 10**MUSD_DECIMALS
            with console.status("alice pays bob directly..."):
                await token.transfer(bob.address, direct)
            console.print(f"[green]✓[/] alice -> bob {musd(direct)} (ERC-20 transfer)")

            escrow_address = chain.deployment.address("TaskEscrow")
            price = 25 * 10**MUSD_DECIMALS
            now = int((await chain.w3.eth.get_block("latest"))["timestamp"])
            terms = hashlib.sha256(b"summarize: the agentmesh README").digest()
            with console.status("escrow job: open, accept, submit, release..."):
                job_id, _ = await EscrowClient(alice, escrow_address).open(
                    provider=bob.address,
                    token=token,
                    amount=price,
                    deadline=now + 3600,
                    review_window=600,
                    arbiter=faucet.address,
                    terms_hash=terms,
                )
                await EscrowClient(bob, escrow_address).accept(job_id)
                result = hashlib.sha256(b"agentmesh lets agents pay each other.").digest()
                await EscrowClient(bob, escrow_address).submit(job_id, result)
                await EscrowClient(alice, escrow_address).release(job_id)
                registry = RegistryClient(alice, chain.deployment.address("AgentRegistry"))
                await registry.give_feedback(job_id, 95, b"\x00" * 32)
            count, total = await registry.reputation(bob.address)
            console.print(
                f"[green]✓[/] escrow job {job_id}: {musd(price)} released to bob; "
                f"bob's reputation {total}/{count} rating(s)"
            )

            balances = {w.name: await token.balance_of(w.address) for w in (alice, bob)}
            in_escrow = await token.balance_of(escrow_address)
            table = Table("wallet", "address", "mUSD", "ETH", title="balances")
            for wallet in (alice, bob):
                eth = await wallet.eth_balance()
                table.add_row(
                    wallet.name,
                    wallet.address,
                    musd(balances[str(wallet.name)]),
                    f"{eth / 10**18:.6f}",
                )
            table.add_row("escrow", escrow_address, musd(in_escrow), "")
            console.print(table)
            if sum(balances.values()) + in_escrow != minted:
                raise AgentMeshError("conservation check failed: mUSD was lost")
            console.print(
                f"conservation: alice + bob + escrow = {musd(minted)} minted  [green]✓[/]"
            )
            console.print(
                f"alice: {musd(balances['alice'])}   bob: {musd(balances['bob'])}   "
                f"({time.perf_counter() - started:.1f}s)"
            )


def demo(
    ctx: typer.Context,
    scrypt_n: Annotated[
        int, typer.Option(help="scrypt work factor for the demo's keystores", min=2**14, max=2**20)
    ] = 2**18,
) -> None:
    """Run the end-to-end demo on a throw-away devnet and print the balances."""
    state(ctx)
    run(_demo(scrypt_n))
