"""``agentmesh.toml``: the settings of one agent project (what `agentmesh new` writes).

    [agent]   name, wallet (keystore name in the agentmesh home)
    [mesh]    host, port, advertise_host, bootstrap
    [chain]   rpc_url ("" = a running `agentmesh devnet up`, else a throw-away anvil)
    [model]   path ("" = the default SmolLM2-135M), n_ctx, n_gpu_layers
    [prices]  service name -> price ("0.05 mUSD")
    [buy]     what a requester buys: service, budget, count

Validated like ``config.toml``: an unknown key or a bad value is an error naming it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentmesh.errors import ConfigError

if TYPE_CHECKING:
    from agentmesh.agents.agent import Agent
    from agentmesh.llm import LocalModel

PROJECT_FILE = "agentmesh.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentSection(_Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    wallet: str = ""  # keystore wallet; "" = the agent's name


class MeshSection(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 0
    advertise_host: str | None = None
    bootstrap: tuple[str, ...] = ()


class ChainSection(_Section):
    rpc_url: str = ""


class ModelSection(_Section):
    path: str = ""
    n_ctx: Annotated[int, Field(ge=64)] = 2048
    n_gpu_layers: int | None = None  # None: all layers when the build can offload


class BuySection(_Section):
    service: str = "summarize"
    budget: str = "0.2"
    count: Annotated[int, Field(ge=1, le=1000)] = 1


class Project(_Section):
    """A parsed ``agentmesh.toml``."""

    agent: AgentSection
    mesh: MeshSection = MeshSection()
    chain: ChainSection = ChainSection()
    model: ModelSection = ModelSection()
    prices: dict[str, str] = {}
    buy: BuySection = BuySection()

    def price(self, service: str) -> str:
        """The configured price of ``service``; a clear error if it has none."""
        try:
            return self.prices[service]
        except KeyError:
            raise ConfigError(
                f"{PROJECT_FILE}: no price for service {service!r} under [prices]"
            ) from None

    def local_model(self) -> LocalModel:
        from agentmesh.llm import LocalModel

        options: dict[str, Any] = {
            "n_ctx": self.model.n_ctx,
            "n_gpu_layers": self.model.n_gpu_layers,
        }
        if self.model.path:
            return LocalModel(self.model.path, **options)
        return LocalModel.default(**options)

    def make_agent(self, *, model: LocalModel | None = None) -> Agent:
        """The project's ``Agent`` (wallet, mesh and chain as configured)."""
        from agentmesh.agents.agent import Agent
        from agentmesh.config import MeshConfig

        mesh = MeshConfig(
            host=self.mesh.host,
            port=self.mesh.port,
            advertise_host=self.mesh.advertise_host,
            bootstrap=self.mesh.bootstrap,
        )
        return Agent(
            self.agent.name,
            wallet=self.agent.wallet or None,
            model=model,
            mesh=mesh,
            rpc_url=self.chain.rpc_url or None,
        )


def load_project(path: Path | str) -> Project:
    """Read and validate an ``agentmesh.toml``."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist (is this an agentmesh project?)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Project.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"{path}: unknown key '{key}'") from None
        if first["type"] == "missing":
            raise ConfigError(f"{path}: missing key '{key}'") from None
        raise ConfigError(f"{path}: invalid value for '{key}': {first['msg']}") from None
