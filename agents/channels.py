"""What ``Agent`` does with payment channels: both desks, peers, and ``buy`` by call.

Every agent has both sides: a ``PayeeDesk`` answering paid calls of its services and a
``PayerDesk`` for its own ``Agent.call``. ``Agent.buy`` pays through an open channel,
without the escrow's six transactions, when one is open with a provider of the service
whose price per call is at most ``channel_max_price`` and within the budget.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

from agentmesh.errors import AgentMeshValueError

from .channel_payee import PayeeDesk, PayeeSettings
from .channel_payer import PayerDesk, PayerSettings
from .channel_store import ChannelStore
from .outcome import TaskFailed, TaskOutcome
from .service import CheckFn, check_result, parse_price

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from agentmesh.mesh.card import AgentCard
    from agentmesh.mesh.node import MeshNode

    from .agent import Agent


async def open_desks(
    agent: Agent, stack: contextlib.AsyncExitStack, account: LocalAccount
) -> tuple[PayeeDesk, PayerDesk]:
    """Both desks of ``agent`` over its ``channels.db`` (not started)."""
    from agentmesh.wallets.channel import PaymentChannelClient, VoucherDomain

    address = agent.chain.deployment.address("PaymentChannel")
    client = PaymentChannelClient(agent.wallet, address)
    domain = VoucherDomain.of(address, await agent.wallet.chain_id())
    store = ChannelStore(agent.agent_dir / "channels.db")
    stack.callback(store.close)
    settings = agent.settings
    payee = PayeeDesk(
        client=client,
        domain=domain,
        token=agent.token_address,
        services=agent.services,
        store=store,
        settings=PayeeSettings(
            claim_threshold=parse_price(settings.channel_claim_threshold),
            poll_s=settings.channel_poll_s,
            min_challenge_s=settings.channel_min_challenge_s,
        ),
        spawn=agent.spawn,
        counters=agent.counters,
        name=agent.name,
        model=lambda: agent.model,
    )
    payer = PayerDesk(
        client=client,
        domain=domain,
        account=account,
        token=agent.token_address,
        node=agent.node,
        store=store,
        settings=PayerSettings(
            deposit=parse_price(settings.channel_deposit),
            timeout_s=agent.node.config.request_timeout_s,
            close_timeout_s=settings.reply_timeout_s,
        ),
        counters=agent.counters,
    )
    return payee, payer


def find_peer(node: MeshNode, provider: str, service: str) -> AgentCard | None:
    """A live peer selling ``service`` named ``provider`` (an address or a name)."""
    wanted = provider.lower()
    for card in node.find(service):
        if card.address.lower() == wanted or card.name.lower() == wanted:
            return card
    return None


async def wait_for_peer(agent: Agent, provider: str, service: str, timeout: float) -> AgentCard:
    """The live peer ``provider`` selling ``service`` (see ``Discovery.wait_for``)."""
    return await agent.discovery.wait_for(
        lambda: find_peer(agent.node, provider, service),
        timeout,
        lambda: f"no live peer {provider} selling {service!r} found within {timeout:g}s",
    )


async def paid_call(
    agent: Agent,
    provider: str | AgentCard,
    service: str,
    text: str,
    max_price: str | int | None,
    result_type: Any,
    find_timeout: float,
) -> Any:
    """``Agent.call``: find the peer, pay the call, parse the result."""
    peer = (
        provider
        if not isinstance(provider, str)
        else await wait_for_peer(agent, provider, service, find_timeout)
    )
    limit = None if max_price is None else parse_price(max_price)
    result = await agent.payer.call(peer, service, text, max_price=limit)
    return _typed(result, result_type)


async def close_channel(agent: Agent, provider: str | AgentCard) -> str:
    """``Agent.close_channel``: the open channel to ``provider`` (an address, a name or a
    card), closed with the payee if it is known on the mesh."""
    if isinstance(provider, str):
        wanted = provider.lower()
        cards = [record.card for record in agent.node.peers.all()]
        peer = next((c for c in cards if wanted in (c.address.lower(), c.name.lower())), None)
    else:
        wanted, peer = provider.address.lower(), provider
    ch = agent.payer.channel_to(peer.address if peer is not None else wanted)
    if ch is None:
        raise AgentMeshValueError(f"no open channel from {agent.name} to {provider}")
    return await agent.payer.close(ch, peer)


def channel_offer(
    agent: Agent, service: str, budget: int, providers: tuple[str, ...] | list[str]
) -> tuple[AgentCard, int] | None:
    """A peer ``buy`` can pay through an open channel, and its price per call."""
    limit = min(parse_price(agent.settings.channel_max_price), budget)
    wanted = {p.lower() for p in providers}
    for card in agent.node.find(service):
        if wanted and card.address.lower() not in wanted and card.name.lower() not in wanted:
            continue
        ch = agent.payer.channel_to(card.address)
        if ch is None:
            continue
        listed = next((s.price for s in card.services if s.name == service), None)
        price = ch.prices.get(service, listed)
        if price is not None and price <= limit:
            return card, price
    return None


async def buy_by_call(
    agent: Agent,
    peer: AgentCard,
    price: int,
    service: str,
    text: str,
    check: CheckFn | None,
    result_type: Any,
) -> TaskOutcome:
    """One paid call as a purchase: settled when the result passes the buyer's check
    (the call is paid either way: a channel has no dispute, only its one price at
    risk)."""
    from agentmesh.protocols.negotiation import Phase

    result = await agent.payer.call(peer, service, text, max_price=price)
    ch = agent.payer.channel_to(peer.address)
    value = json.loads(result)
    ok, why = check_result(value, check, result_type, whose="the buyer's")
    outcome = TaskOutcome(
        conversation=f"{ch.id.hex() if ch else ''}:{ch.signed if ch else 0}",
        phase=Phase.SETTLED if ok else Phase.REJECTED,
        service=service,
        provider=peer.address,
        price=price,
        result=_typed(result, result_type) if ok else value,
        error=why,
    )
    if not ok:
        raise TaskFailed(outcome)
    return outcome


def _typed(result: str, result_type: Any) -> Any:
    if result_type is None:
        return json.loads(result)
    from pydantic import TypeAdapter

    return TypeAdapter(result_type).validate_json(result, strict=True)
