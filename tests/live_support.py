"""A chain that behaves like a shared network, for the tests of agentmesh on one.

anvil with interval mining (a block every ``BLOCK_S`` seconds, none in between), no
dev-account shortcut inside agentmesh: an operator wallet in a keystore is funded once
from outside (what a testnet faucet or an exchange does), deploys an "existing" Uniswap
V2 (WETH9, factory, Router02 from the npm packages), then runs ``agentmesh chain deploy``
against it. Agents use the record that command writes; they confirm each transaction
with two blocks, pay EIP-1559 fees, and get no faucet.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from typer.testing import CliRunner

from agentmesh.chain.deployment import Deployment
from agentmesh.chain.devnet import AnvilProcess, start_anvil
from agentmesh.chain.rpc import rpc_call
from agentmesh.config import Config, DevnetConfig
from agentmesh.wallets.chain import Chain, connect
from agentmesh.wallets.exchange import npm_artifact
from agentmesh.wallets.keystore import Keystore
from agentmesh.wallets.sending import TxPolicy, set_tx_policy
from agentmesh.wallets.wallet import Wallet
from tests.helpers import PASSWORD, TEST_SCRYPT_N, bind_home

BLOCK_S = 1  # seconds between blocks
CONFIRMATIONS = 2  # what agents wait for on this chain (the default off an automine devnet)
OPS = "ops"  # the operator's keystore wallet: pays for the deployment, owns MeshUSD
OPS_ETH = 1_000  # what the outside world sends it
POOL_ETH, POOL_MUSD = "50", "100000"  # WETH/mUSD opened at 2,000 mUSD per WETH
# The policy of the tests' own connection: agents' defaults, with stuck transactions
# replaced sooner (a test cannot wait the default 30 s).
TEST_POLICY = TxPolicy(confirmations=CONFIRMATIONS, replace_after_s=5.0, timeout_s=120.0)


@dataclass
class LiveChain:
    """The live chain, its deployment, and the operator that deployed it."""

    anvil: AnvilProcess
    deployment: Deployment
    ops_home: Path
    ops_account: LocalAccount
    deploy_report: dict[str, Any]
    state: str  # anvil_dumpState right after the deployment (to start copies from)

    @property
    def rpc_url(self) -> str:
        return self.anvil.rpc_url

    def chain(self, rpc_url: str | None = None) -> Chain:
        """A connection to the chain (or a copy of it at ``rpc_url``) with the test policy."""
        url = rpc_url or self.rpc_url
        w3 = connect(url)
        set_tx_policy(w3, TEST_POLICY)
        deployment = self.deployment.model_copy(update={"rpc_url": url})
        return Chain(w3, url, deployment, "configured", None, TEST_POLICY, devnet=False)


def start_live_anvil(state_file: Path | None = None, port: int | None = None) -> AnvilProcess:
    return start_anvil(DevnetConfig(block_time=BLOCK_S), state_file=state_file, port=port)


def cli(home: Path, *args: str) -> Any:
    """``agentmesh --home HOME ARGS`` in process; the result (exit code checked by callers)."""
    from agentmesh.cli.app import app

    return CliRunner().invoke(
        app, ["--home", str(home), *args], env={"AGENTMESH_PASSWORD": PASSWORD}
    )


def funded_from_outside(anvil: AnvilProcess, address: str, eth: int) -> None:
    """ETH sent by the world outside agentmesh (here anvil's unlocked first account, as a
    testnet faucet would): the only use of a dev account in the live tests."""
    (sender, *_) = rpc_call(anvil.rpc_url, "eth_accounts")
    tx_hash = rpc_call(
        anvil.rpc_url,
        "eth_sendTransaction",
        [{"from": sender, "to": address, "value": hex(eth * 10**18)}],
    )
    for _ in range(200):
        if rpc_call(anvil.rpc_url, "eth_getTransactionReceipt", [tx_hash]):
            return
        time.sleep(0.05)
    raise AssertionError("the outside funding was never mined")


async def deploy_uniswap(ops: Wallet) -> str:
    """An "existing" Uniswap V2 on the chain (deployed by the operator); its router."""
    weth, _ = await ops.deploy(npm_artifact("WETH9"))
    factory, _ = await ops.deploy(npm_artifact("UniswapV2Factory"), ops.address)
    router, _ = await ops.deploy(npm_artifact("UniswapV2Router02"), factory, weth)
    return str(router)


async def make_live_chain(root: Path) -> LiveChain:
    anvil = start_live_anvil()
    try:
        home = root / "ops-home"
        home.mkdir(mode=0o700)
        (home / "config.toml").write_text(f"[wallet]\nscrypt_n = {TEST_SCRYPT_N}\n")
        entry = Keystore(home, scrypt_n=TEST_SCRYPT_N).create(OPS, PASSWORD)
        account = Keystore(home, scrypt_n=TEST_SCRYPT_N).load(OPS, PASSWORD)
        funded_from_outside(anvil, entry.address, OPS_ETH)
        w3 = connect(anvil.rpc_url)
        set_tx_policy(w3, TxPolicy(confirmations=1))
        try:
            router = await deploy_uniswap(Wallet(account, w3, name=OPS))
        finally:
            await w3.provider.disconnect()
        args = ("chain", "deploy", "--rpc-url", anvil.rpc_url, "--wallet", OPS)
        args += ("--router", router, "--pool-eth", POOL_ETH, "--pool-musd", POOL_MUSD, "--json")
        done = await asyncio.to_thread(cli, home, *args)
        assert done.exit_code == 0, f"{done.output} {done.exception!r}"
        report = json.loads(done.stdout)
        deployment = Deployment.load(Path(report["record"]))
        state = rpc_call(anvil.rpc_url, "anvil_dumpState", timeout=30)
        return LiveChain(anvil, deployment, home, account, report, state)
    except BaseException:
        anvil.stop()
        raise


def copy_of(live: LiveChain, state_file: Path | None = None) -> AnvilProcess:
    """A new interval-mining anvil holding the live chain as it was after deployment
    (for tests that stop, restart or reorganize their chain)."""
    anvil = start_live_anvil(state_file)
    try:
        rpc_call(anvil.rpc_url, "anvil_loadState", [live.state], timeout=30)
    except BaseException:
        anvil.stop()
        raise
    return anvil


def bind_live_home(home: Path, chain: Chain, **chain_settings: Any) -> Config:
    """``bind_home`` for a live chain, with ``[chain]`` settings added (a test cannot wait
    the default 30 s before a lost transaction is sent again: 3 s unless given)."""
    settings = {"replace_after_s": 3.0, **chain_settings}
    config = bind_home(home, chain)
    path = home / "config.toml"
    lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    text = path.read_text()
    path.write_text(text.replace("[chain]\n", f"[chain]\n{lines}", 1))
    return config.model_copy(update={"chain": config.chain.model_copy(update=settings)})


def rpc(chain: Chain, method: str, *params: Any) -> Any:
    """A raw JSON-RPC call on ``chain`` (blocking: anvil's own methods)."""
    return rpc_call(chain.rpc_url, method, list(params), timeout=30)
