"""Where the agentmesh contracts live on a chain: the deployment record (JSON)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from agentmesh.errors import DevnetError


class DeployedContract(BaseModel):
    """One deployed contract and the sha256 of the artifact it was deployed from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str
    artifact_sha256: str


class Exchange(BaseModel):
    """Where the devnet's Uniswap V2 lives (see ``agentmesh.wallets.exchange``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weth: str
    factory: str
    router: str
    tokens: dict[str, str]  # symbol -> address (mUSD, WETH, MGLD)
    decimals: dict[str, int]  # symbol -> decimals
    pairs: dict[str, str]  # "BASE/QUOTE" -> pair address
    # agentmesh's TwapOracle of the factory's pairs (None in records written before it).
    oracle: str | None = None


class Deployment(BaseModel):
    """Chain id, RPC URL, deployer and the address of every contract in the suite."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chain_id: int
    rpc_url: str
    deployer: str
    block_number: int
    contracts: dict[str, DeployedContract]
    # Uniswap V2 on a devnet agentmesh deployed (None on a chain without one, and in
    # deployment files written before it existed).
    exchange: Exchange | None = None

    def address(self, name: str) -> str:
        """Address of contract ``name``; a clear error if it is not in this deployment."""
        try:
            return self.contracts[name].address
        except KeyError:
            raise DevnetError(
                f"contract {name} is not in the deployment for chain {self.chain_id}"
            ) from None

    def save(self, path: Path) -> None:
        """Write atomically, so a crash never leaves a half-written deployment file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Deployment:
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError, ValidationError) as exc:
            raise DevnetError(f"deployment file {path} is unreadable: {exc}") from exc
