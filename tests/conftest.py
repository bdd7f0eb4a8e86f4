"""Shared fixtures: a real anvil -> AsyncWeb3 -> deployed suite -> funded wallets.

One anvil and one deployment serve the whole session; every test runs inside an
``evm_snapshot`` that is reverted afterwards, so tests do not see each other's state.
Only fixtures and hooks live here; helper functions and constants are in tests/helpers.py.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from eth_account import Account

from agentmesh.agents.control import stop_wallet_agents
from agentmesh.chain.devnet import AnvilProcess, start_anvil
from agentmesh.config import DevnetConfig
from agentmesh.wallets.chain import Chain, _deploy_fresh, connect
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.deployer import dev_deployer
from agentmesh.wallets.wallet import Wallet, reset_nonces
from tests.helpers import ONE_MUSD, TEST_SCRYPT_N, WalletFactory
from tests.live_support import LiveChain, make_live_chain


@pytest.fixture(scope="session")
def anvil() -> Iterator[AnvilProcess]:
    with start_anvil(DevnetConfig()) as process:
        yield process


@pytest.fixture(scope="session")
async def chain(anvil: AnvilProcess) -> Chain:
    w3 = connect(anvil.rpc_url)
    deployment = await _deploy_fresh(w3, anvil.rpc_url, 10_000)
    return Chain(w3, anvil.rpc_url, deployment, "embedded", anvil)


@pytest.fixture(autouse=True)
async def _isolated_chain(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Revert the shared chain after each test that used it."""
    if "chain" not in request.fixturenames:
        yield
        return
    chain: Chain = request.getfixturevalue("chain")
    snapshot = await chain.w3.provider.make_request("evm_snapshot", [])  # type: ignore[arg-type]
    yield
    await chain.w3.provider.make_request("evm_revert", [snapshot["result"]])  # type: ignore[arg-type]
    reset_nonces(chain.w3)


@pytest.fixture(scope="session")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveChain]:
    """An interval-mining anvil with the suite deployed by `agentmesh chain deploy` from
    a keystore wallet (see tests/live_support.py)."""
    chain = await make_live_chain(tmp_path_factory.mktemp("live"))
    yield chain
    chain.anvil.stop()


@pytest.fixture(scope="session")
async def live_chain(live: LiveChain) -> AsyncIterator[Chain]:
    chain = live.chain()
    yield chain
    await chain.w3.provider.disconnect()


@pytest.fixture
def deployer(chain: Chain) -> Wallet:
    return dev_deployer(chain.w3)


@pytest.fixture
def token(chain: Chain, deployer: Wallet) -> TokenClient:
    """MeshUSD, sending as the deployer (the minter)."""
    return TokenClient(deployer, chain.token_address)


@pytest.fixture
def make_wallet(chain: Chain, deployer: Wallet, token: TokenClient) -> WalletFactory:
    """Create a fresh random wallet holding ``eth`` ETH and ``musd`` whole mUSD."""

    async def factory(eth: float = 10, musd: int = 1_000, name: str | None = None) -> Wallet:
        wallet = Wallet(Account.create(), chain.w3, name=name)
        if eth:
            await deployer.send({"to": wallet.address, "value": int(eth * 10**18)})
        if musd:
            await token.mint(wallet.address, musd * ONE_MUSD)
        return wallet

    return factory


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh agentmesh home with fast keystores, exported as AGENTMESH_HOME; wallet
    agents a test's CLI purchases started there are stopped after it."""
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    (path / "config.toml").write_text(f"[wallet]\nscrypt_n = {TEST_SCRYPT_N}\n")
    monkeypatch.setenv("AGENTMESH_HOME", str(path))
    monkeypatch.delenv("AGENTMESH_PASSWORD", raising=False)
    yield path
    stop_wallet_agents(path)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    # Never let a developer's own home leak into tests.
    os.environ.pop("AGENTMESH_HOME", None)
