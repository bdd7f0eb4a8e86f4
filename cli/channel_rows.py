"""The `agentmesh channel` commands' helpers: the agent's store and the chain, read.

The store side: whose channels a command works on (``Owner``, from ``--wallet`` and
``--agent``), that agent's ``channels.db`` opened, its rows read and updated, and a
channel id (or a prefix of one) parsed against them. The chain side: a ``Session`` (the
chain and the PaymentChannel contract), which end of a channel a wallet is, and
``describe``, one channel as the commands report it (the chain's figures, the store's
vouchers), with the words and mUSD amounts the tables print.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentmesh.errors import AgentMeshValueError

from .context import AppState

if TYPE_CHECKING:
    from agentmesh.agents.channel_store import ChannelStore, PayeeChannel, PayerChannel
    from agentmesh.wallets.chain import Chain
    from agentmesh.wallets.channel import ChannelState, PaymentChannelClient
    from agentmesh.wallets.wallet import Wallet

    Row = PayerChannel | PayeeChannel

DEFAULT_WALLET = "requester"  # as `agentmesh task request`

_FULL_ID = re.compile(r"0x[0-9a-fA-F]{64}")
_PREFIX = re.compile(r"0x[0-9a-fA-F]{8,63}")


# ---------------------------------------------------------------------- the store


@dataclass(frozen=True, slots=True)
class Owner:
    """The wallet a command signs with and the agent whose store it uses."""

    wallet: str
    agent: str
    store: Path


def owner_of(app_state: AppState, wallet: str | None, agent: str | None) -> Owner:
    """``--wallet`` and ``--agent`` resolved: each defaults to the other's name (an agent
    named X uses wallet X unless told otherwise), both to ``requester``."""
    if agent is not None:
        from agentmesh.agents.agent import AGENT_NAME

        if not re.fullmatch(AGENT_NAME.removeprefix("^").removesuffix("$"), agent):
            raise AgentMeshValueError(
                f"invalid agent name {agent!r}: 1-64 letters, digits, '.', '-' or '_'"
            )
    name = wallet or agent or DEFAULT_WALLET
    if agent is None:
        from agentmesh.wallets.keystore import validate_name

        validate_name(name)  # it names the store's folder too
    return Owner(name, agent or name, app_state.home / "agents" / (agent or name) / "channels.db")


@contextlib.contextmanager
def open_store(
    owner: Owner, *, create: bool = False, readonly: bool = False
) -> Iterator[ChannelStore | None]:
    """The agent's channel store; None when it has none and ``create`` is False (reading
    commands make no folder or file)."""
    from agentmesh.agents.channel_store import ChannelStore

    if not create and not owner.store.exists():
        yield None
        return
    if readonly:
        store = ChannelStore(owner.store, readonly=True)
    else:
        owner.store.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = ChannelStore(owner.store)
    try:
        yield store
    finally:
        store.close()


def stored_rows(owner: Owner, *, readonly: bool = False) -> dict[bytes, Row]:
    """Every channel the store holds, payer side first (a channel has one side here)."""
    with open_store(owner, readonly=readonly) as store:
        if store is None:
            return {}
        rows: dict[bytes, Row] = {ch.id: ch for ch in store.payee_channels()}
        return {**{ch.id: ch for ch in store.payer_channels()}, **rows}


def side_of_row(row: Row) -> str:
    from agentmesh.agents.channel_store import PayerChannel

    return "payer" if isinstance(row, PayerChannel) else "payee"


def update_row(owner: Owner, channel_id: bytes, side: str, **changes: Any) -> None:
    """Set ``changes`` on the channel's row, read again just before (a running agent may
    have stored a voucher since); nothing when the store has no such row."""
    with open_store(owner) as store:
        if store is None:
            return
        rows: list[Any] = store.payer_channels() if side == "payer" else store.payee_channels()
        row = next((r for r in rows if r.id == channel_id), None)
        if row is None:
            return
        for key, value in changes.items():
            setattr(row, key, value)
        (store.save_payer if side == "payer" else store.save_payee)(row)


def parse_channel_id(text: str, rows: dict[bytes, Row], owner: Owner) -> bytes:
    """A full channel id, or the prefix of exactly one channel in the store."""
    value = text.strip()
    if _FULL_ID.fullmatch(value):
        return bytes.fromhex(value[2:])
    if not _PREFIX.fullmatch(value):
        raise AgentMeshValueError(
            f"invalid channel id {text!r}: use 0x and 64 hex digits (or the first 8 or more "
            "that `agentmesh channel list` shows)"
        )
    matches = [cid for cid in rows if hex_id(cid).startswith(value.lower())]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise AgentMeshValueError(
            f"no channel starting with {value} in agent {owner.agent}'s store "
            f"({owner.store}): give the whole id (0x and 64 hex digits)"
        )
    raise AgentMeshValueError(f"{value} starts {len(matches)} channels: give more of the id")


def hex_id(channel_id: bytes) -> str:
    return "0x" + channel_id.hex()


# ---------------------------------------------------------------------- the chain


@dataclass(slots=True)
class Session:
    """An open chain and the PaymentChannel contract, read or sent to as ``wallet``."""

    chain: Chain
    wallet: Wallet
    client: PaymentChannelClient
    delay: int  # the contract's challenge delay (s)

    async def now(self) -> int:
        """Chain time as the next block will see it (what the contract compares with)."""
        from agentmesh.wallets.chain_clock import ChainClock

        return await ChainClock(self.chain.w3).now()

    async def state(self, channel_id: bytes) -> ChannelState | None:
        """The channel on chain; None when the contract has no such channel."""
        found = await self.client.channel(channel_id)
        return None if int(found.payer, 16) == 0 else found

    async def require(self, channel_id: bytes, owner: Owner, stored: bool) -> ChannelState:
        """The channel on chain, or an error saying where it was looked for."""
        found = await self.state(channel_id)
        if found is not None:
            return found
        if stored:
            raise AgentMeshValueError(
                f"channel {hex_id(channel_id)} is in agent {owner.agent}'s store but not on "
                "this chain (was the devnet reset?)"
            )
        raise AgentMeshValueError(
            f"no channel {hex_id(channel_id)} in agent {owner.agent}'s store or on chain "
            f"{self.chain.deployment.chain_id}"
        )


@contextlib.asynccontextmanager
async def session(
    app_state: AppState, account: Any = None, name: str = ""
) -> AsyncIterator[Session]:
    """The chain and the contract; ``account`` sends (None: a throw-away key that reads)."""
    from agentmesh.wallets.chain import open_chain

    async with open_chain(app_state.home, app_state.config, allow_embedded=False) as chain:
        yield await session_on(chain, account, name)


async def session_on(chain: Chain, account: Any = None, name: str = "") -> Session:
    """A ``Session`` on an open ``chain``."""
    from eth_account import Account

    from agentmesh.wallets.channel import PaymentChannelClient
    from agentmesh.wallets.wallet import Wallet

    wallet = Wallet(account or Account.create(), chain.w3, name=name or None)
    client = PaymentChannelClient(wallet, chain.deployment.address("PaymentChannel"))
    return Session(chain, wallet, client, await client.challenge_delay())


def side_of(found: ChannelState, address: str, owner: Owner, channel_id: bytes) -> str:
    """``payer`` or ``payee``: which end of the channel ``address`` is."""
    if found.payer.lower() == address.lower():
        return "payer"
    if found.payee.lower() == address.lower():
        return "payee"
    raise AgentMeshValueError(
        f"wallet {owner.wallet} ({address}) is neither the payer ({found.payer}) nor the "
        f"payee ({found.payee}) of channel {hex_id(channel_id)}"
    )


def describe(
    channel_id: bytes, side: str, row: Row | None, found: ChannelState | None, delay: int
) -> dict[str, Any]:
    """One channel as `list` shows it: the chain's figures, the store's vouchers."""
    from agentmesh.agents.channel_store import PayerChannel
    from agentmesh.protocols.payment import ChannelPhase

    paid = 0 if row is None else row.signed if isinstance(row, PayerChannel) else row.latest
    claim_until: int | None = None
    payer: str | None
    payee: str | None
    token: str
    if found is not None:
        payer, payee, token = found.payer, found.payee, found.token
        deposit, claimed, phase = found.deposit, found.claimed, ChannelPhase.OPEN
        if found.close_requested_at:
            claim_until, phase = found.close_requested_at + delay, ChannelPhase.CLOSING
        if found.closed:
            phase = ChannelPhase.CLOSED
    else:  # in the store only (a reset devnet): the store's figures
        assert row is not None
        if isinstance(row, PayerChannel):
            payer, payee = None, row.payee
        else:
            payer, payee = row.payer, None
        token, deposit, claimed, phase = row.token, row.deposit, row.claimed, row.phase
    return {
        "channel": hex_id(channel_id),
        "side": side,
        "peer": payee if side == "payer" else payer,
        "payer": payer,
        "payee": payee,
        "token": token,
        "deposit": deposit,
        "paid": paid,
        "claimed": claimed,
        "unclaimed": max(paid - claimed, 0),
        "state": str(phase),
        "claim_until": claim_until,
        "on_chain": found is not None,
    }


def musd(units: int) -> str:
    from agentmesh.wallets.units import MUSD_DECIMALS, format_amount

    return format_amount(units, MUSD_DECIMALS, "mUSD")


def state_words(info: dict[str, Any]) -> str:
    from agentmesh.wallets.units import local_time

    if not info["on_chain"]:
        return f"{info['state']} (not on chain)"
    if info["state"] == "closing":
        return f"closing, claims until {local_time(info['claim_until'])}"
    return str(info["state"])
