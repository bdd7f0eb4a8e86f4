"""The agentmesh home and its TOML configuration.

One home folder holds everything an agent owns: ``config.toml``, encrypted keystores,
the devnet's state and deployment, and (later) databases. Its location is, in order:
the ``--home`` option, ``AGENTMESH_HOME``, or the user data dir (platformdirs).
The config is validated with pydantic; an unknown or misspelled key is an error that
names the key and the file.
"""

from __future__ import annotations

import os
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import platformdirs
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agentmesh.errors import ConfigError

CONFIG_FILE_NAME = "config.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChainConfig(_Section):
    """Which chain to use and how transactions are sent on it (``[chain]``).

    With no ``rpc_url``, a running ``agentmesh devnet up`` in this home is used, and
    failing that a throw-away anvil is started and stopped on exit.
    """

    rpc_url: str | None = None
    # More endpoints of the same chain, tried in this order when the one in use stops
    # answering (the first is tried again every `endpoint_retry_s`).
    fallback_rpc_urls: tuple[str, ...] = ()
    endpoint_retry_s: Annotated[float, Field(gt=0)] = 30.0
    request_timeout_s: Annotated[float, Field(gt=0)] = 10.0  # one JSON-RPC request
    # Blocks a transaction must have on top of it (its own counts as one) before an
    # agent acts on it. Unset: 1 on an anvil that mines each transaction at once (no
    # block comes otherwise, and it cannot reorganize), 2 on any other chain (a one-block
    # reorganization, the common kind, cannot undo what an agent acted on).
    confirmations: Annotated[int, Field(ge=1, le=64)] | None = None
    # The most an agent pays per gas (base fee plus tip), in gwei: a fee spike stalls
    # transactions (retried later) instead of draining the wallet.
    max_fee_gwei: Annotated[float, Field(gt=0)] = 100.0
    # A transaction not mined after this long is sent again with the same nonce and a
    # higher fee (at least 12.5% more, the usual replacement rule), within the cap.
    replace_after_s: Annotated[float, Field(gt=0)] = 30.0
    # How long a sent transaction is waited for (mined and confirmed, across outages of
    # the endpoint) before the step that sent it gives up and is retried later.
    confirmations_timeout: Annotated[float, Field(gt=0)] = 120.0

    @field_validator("rpc_url", "fallback_rpc_urls")
    @classmethod
    def _http_urls(cls, value: str | tuple[str, ...] | None) -> str | tuple[str, ...] | None:
        for url in (value,) if isinstance(value, str) else value or ():
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http:// or https:// JSON-RPC URL")
        return value

    @model_validator(mode="after")
    def _fallbacks_need_a_first(self) -> ChainConfig:
        if self.fallback_rpc_urls and not self.rpc_url:
            raise ValueError("fallback_rpc_urls are tried after rpc_url: set rpc_url too")
        return self

    @property
    def rpc_urls(self) -> tuple[str, ...]:
        """Every configured endpoint, in the order they are tried (none: no chain set)."""
        return ((self.rpc_url,) + self.fallback_rpc_urls) if self.rpc_url else ()


class DevnetConfig(_Section):
    """How ``agentmesh devnet up`` and the embedded throw-away devnet run anvil."""

    anvil_path: Path | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 0  # 0 = pick a free port
    chain_id: Annotated[int, Field(gt=0)] = 31337
    accounts: Annotated[int, Field(ge=2, le=100)] = 10
    block_time: Annotated[float, Field(ge=0)] = 0  # 0 = mine on every transaction
    startup_timeout: Annotated[float, Field(gt=0)] = 20.0
    dev_account_musd: Annotated[int, Field(ge=0)] = 10_000  # whole mUSD minted per dev account


class WalletConfig(_Section):
    """Keystore settings. ``scrypt_n`` is the scrypt work factor for new keystores."""

    default: str | None = None
    scrypt_n: Annotated[int, Field(ge=2**14, le=2**20)] = 2**18

    @field_validator("scrypt_n")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two (scrypt requires it)")
        return value


class MeshConfig(_Section):
    """The node's sockets, discovery timing and inbound limits (``[mesh]``)."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 0  # ROUTER (direct messages); 0 = free
    presence_port: Annotated[int, Field(ge=0, le=65535)] = 0  # PUB (heartbeats)
    advertise_host: str | None = None  # the host peers should dial, if not `host`
    curve: bool = True  # CurveZMQ encryption and server authentication
    bootstrap: tuple[str, ...] = ()  # "<curve key>@tcp://host:port" of known agents
    heartbeat_s: Annotated[float, Field(gt=0)] = 1.0
    down_after_missed: Annotated[int, Field(ge=1)] = 3
    remove_after_missed: Annotated[int, Field(ge=2)] = 10
    gossip_s: Annotated[float, Field(gt=0)] = 5.0
    request_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    request_retries: Annotated[int, Field(ge=0, le=10)] = 2
    message_ttl_ms: Annotated[int, Field(ge=1000)] = 30_000
    max_frame_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 256 * 1024
    max_ttl_ms: Annotated[int, Field(ge=1000)] = 300_000
    clock_skew_ms: Annotated[int, Field(ge=0)] = 5_000
    rate_per_s: Annotated[float, Field(gt=0)] = 20_000
    burst: Annotated[int, Field(ge=1)] = 40_000
    replay_cache_size: Annotated[int, Field(ge=1000)] = 200_000
    # Retention of the message store (and its peers table). Messages older than
    # `store_retention_s` are dropped, and the oldest go first while the store holds
    # more than `store_max_messages` or `store_max_bytes` of frames; never a message
    # accepted but not yet handled (restart recovery), nor one young enough that a copy
    # of it could still pass the clock check (max_ttl_ms + 2 x clock_skew_ms: replay
    # protection), so the limits may be exceeded by that window's traffic.
    store_retention_s: Annotated[int, Field(ge=1)] = 7 * 24 * 3600
    store_max_messages: Annotated[int, Field(ge=1)] = 200_000
    store_max_bytes: Annotated[int, Field(ge=1024)] = 256 * 1024 * 1024
    store_prune_s: Annotated[float, Field(gt=0)] = 60.0  # how often the node prunes
    # Peers held at most (memory and store); when full, the longest-unseen peer that is
    # down makes room, and a new card is refused while every known peer is up.
    max_peers: Annotated[int, Field(ge=2)] = 10_000


def _price_text(value: object) -> object:
    """A price given as a TOML number (``approval_threshold = 1.0``) as its text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{Decimal(str(value)):f}"
    return value


MusdText = Annotated[str, BeforeValidator(_price_text), Field(pattern=r"^\d+(\.\d{1,6})?$")]
"""An amount of mUSD in a config file: a number (1.0) or a string ("1.0"), kept as text."""


class AgentConfig(_Section):
    """How agents trade (``[agent]``): approvals, escrow terms and waiting times."""

    # Spends above this many mUSD wait for `agentmesh approve`; unset: never wait.
    # A number (1.0) or a string ("1.0"); kept as text, parsed like any price.
    approval_threshold: (
        Annotated[str, BeforeValidator(_price_text), Field(pattern=r"^\d+(\.\d{1,6})?$")] | None
    ) = None
    # mUSD the escrow may draw for this agent's purchases without a new approval: an
    # approve tops the allowance up to this (or the price, if higher), so most
    # purchases send no approve transaction. TaskEscrow draws only in `open`, from its
    # caller, a job's amount; "0" approves each job's exact amount.
    escrow_allowance: Annotated[
        str, BeforeValidator(_price_text), Field(pattern=r"^\d+(\.\d{1,6})?$")
    ] = "10"
    review_window_s: Annotated[int, Field(ge=1, le=30 * 24 * 3600)] = 120
    deadline_s: Annotated[int, Field(ge=10, le=7 * 24 * 3600)] = 300
    proposal_window_s: Annotated[float, Field(gt=0)] = 20.0  # wait for proposals
    reply_timeout_s: Annotated[float, Field(gt=0)] = 30.0  # per step that needs the chain
    min_work_s: Annotated[int, Field(ge=1)] = 10  # refuse jobs with less time than this
    max_review_window_s: Annotated[int, Field(ge=1)] = 3600  # refuse longer payment holds
    offer_ttl_s: Annotated[int, Field(ge=1)] = 120  # a proposal not awarded expires
    decision_timeout_s: Annotated[float, Field(gt=0)] = 5.0  # then the rules price alone
    funding_ttl_s: Annotated[int, Field(ge=1)] = 120  # an award not funded expires
    # Tries to hand a result to an unreachable requester (1, 2, 4, 8, 10 s apart); after
    # that the requester asks for it again (`Redeliver`) when it looks at the job.
    delivery_attempts: Annotated[int, Field(ge=1, le=50)] = 5
    # `agentmesh task request` buys through one running agent per wallet (started on
    # demand); it exits once no task of its is unfinished and no command has used it
    # for this long.
    wallet_agent_idle_s: Annotated[float, Field(gt=0)] = 60.0
    counter_ratio: Annotated[float, Field(gt=0, le=1)] | None = None  # counter at this share
    # Ranking of proposals: lower score wins. Price in budget shares, latency in seconds,
    # reputation as the provider's average score out of 100 (unrated: 50), consensus as
    # the share of a perfect score the validators gave it.
    weight_price: Annotated[float, Field(ge=0)] = 1.0
    weight_reputation: Annotated[float, Field(ge=0)] = 0.2
    weight_latency: Annotated[float, Field(ge=0)] = 0.05
    # The validators' consensus score (last finalized epoch; unscored: 5,000 of 10,000).
    weight_consensus: Annotated[float, Field(ge=0)] = 0.5
    faucet: bool = True  # on an anvil devnet, top up an empty agent wallet from dev funds
    # Who decides this agent's disputed escrow jobs: "jury" (the suite's Jury contract:
    # staked validators drawn by stake), "deployer" (the devnet deployer's key, the
    # way agentmesh did before the jury), or an address. A provider accepts only jobs
    # naming its own arbiter.
    arbiter: Annotated[str, Field(pattern=r"^(jury|deployer|0x[0-9a-fA-F]{40})$")] = "jury"
    # Payment channels (`Agent.call`): mUSD a new channel is opened (and topped up) with;
    # a payee claims once it holds this much unclaimed; `Agent.buy` pays through an open
    # channel instead of an escrow when the price per call is at most channel_max_price.
    channel_deposit: MusdText = "10"
    channel_claim_threshold: MusdText = "1"
    channel_max_price: MusdText = "0.1"
    channel_poll_s: Annotated[float, Field(gt=0, le=60)] = 1.0  # how often a payee reads events
    # A payee refuses channels whose challenge delay leaves it less time than this to
    # claim after a close request (it may be down for part of it).
    channel_min_challenge_s: Annotated[int, Field(ge=1)] = 60


class Config(_Section):
    """The whole ``config.toml``."""

    agent: AgentConfig = AgentConfig()
    chain: ChainConfig = ChainConfig()
    mesh: MeshConfig = MeshConfig()
    devnet: DevnetConfig = DevnetConfig()
    wallet: WalletConfig = WalletConfig()


def resolve_home(home: Path | str | None = None) -> Path:
    """The agentmesh home folder (created with mode 0700 if missing)."""
    if home is None:
        home = os.environ.get("AGENTMESH_HOME") or platformdirs.user_data_dir("agentmesh")
    path = Path(home).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"agentmesh home {path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _describe(error: ValidationError, source: Path) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    return f"{source}: invalid value for '{key}': {first['msg']}"


def load_config(home: Path) -> Config:
    """Read and validate ``<home>/config.toml``; defaults if the file does not exist."""
    path = home / CONFIG_FILE_NAME
    if not path.exists():
        return Config()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return check_config_text(text, path)


def check_config_text(text: str, path: Path) -> Config:
    """Parse and validate ``text`` as the config file ``path`` (named in errors)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc
