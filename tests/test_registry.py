"""AgentRegistry through RegistryClient: cards, discovery paging, and reputation.

Reputation is exercised with real TaskEscrow jobs driven to each final state, so the
registry's trust in ``TaskEscrow.feedbackParties`` is tested end to end.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD
from web3.types import TxReceipt

from agentmesh.errors import ContractRevertError
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import (
    EscrowClient,
    RegistryCard,
    RegistryClient,
    ServiceOffer,
)
from tests.helpers import (
    ONE_MUSD,
    STATE_STATUS,
    Parties,
    WalletFactory,
    advance_time,
    drive,
    escrow_for,
    h32,
    open_job,
    registry_for,
)

NOT_REGISTERED_SELECTOR = "bfc6c337"  # NotRegistered(address)
MAX_BYTES = 256
MAX_SERVICES = 32
JOB_AMOUNT = 10 * ONE_MUSD
JOB_DEADLINE_S = 3_600
REVIEW_WINDOW_S = 600


def make_card(label: str = "alpha", **changes: Any) -> RegistryCard:
    name = label
    card = RegistryCard(
        name=name,
        endpoint=f"tcp://127.0.0.1:5555/{name}",
        curve_key=h32(f"curve:{name}"),
        model_sha256=h32(f"model:{name}"),
        metadata_uri=f"ipfs://meta/{name}",
        services=(ServiceOffer("summarize", 2 * ONE_MUSD), ServiceOffer("translate", 750_000)),
    )
    return replace(card, **changes)


def content(card: RegistryCard) -> RegistryCard:
    """The card without its chain-set timestamps, for comparing what was written."""
    return replace(card, registered_at=0, updated_at=0)


async def block_time(chain: Chain, receipt: TxReceipt) -> int:
    block = await chain.w3.eth.get_block(receipt["blockNumber"])
    return int(block["timestamp"])


def events(client: RegistryClient | EscrowClient, name: str, receipt: TxReceipt) -> list[Any]:
    return list(getattr(client.contract.events, name)().process_receipt(receipt, errors=DISCARD))


async def agent_count(registry: RegistryClient) -> int:
    return int(await registry.contract.functions.agentCount().call())


async def all_agents(registry: RegistryClient) -> list[str]:
    return await registry.agents(0, 10_000)


# ---------------------------------------------------------------------------- cards


async def test_register_round_trips_card_and_emits_event(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    alice = await make_wallet(musd=0)
    registry = registry_for(chain, alice)
    count_before = await agent_count(registry)
    assert not await registry.is_registered(alice.address)

    card = make_card("alice")
    receipt = await registry.register(card)

    stored = await registry.get_agent(alice.address)
    assert content(stored) == card
    mined_at = await block_time(chain, receipt)
    assert stored.registered_at == mined_at
    assert stored.updated_at == mined_at
    assert await registry.is_registered(alice.address)
    assert await agent_count(registry) == count_before + 1
    assert (await all_agents(registry))[-1] == alice.address

    logged = events(registry, "AgentRegistered", receipt)
    assert len(logged) == 1
    assert logged[0]["args"]["agent"] == alice.address
    assert logged[0]["args"]["name"] == "alice"
    assert logged[0]["args"]["endpoint"] == card.endpoint


async def test_card_with_no_services_and_max_length_fields(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    alice = await make_wallet(musd=0)
    registry = registry_for(chain, alice)
    # 256 *bytes* is the limit: 128 two-byte characters are exactly at it.
    card = make_card(
        "é" * 128,
        endpoint="e" * MAX_BYTES,
        metadata_uri="m" * MAX_BYTES,
        services=tuple(ServiceOffer(f"{i:03d}" + "s" * (MAX_BYTES - 3), i) for i in range(2)),
    )
    await registry.register(card)
    assert content(await registry.get_agent(alice.address)) == card

    bare = make_card("bare", services=())
    bob = await make_wallet(musd=0)
    await registry_for(chain, bob).register(bare)
    assert (await registry.get_agent(bob.address)).services == ()


async def test_exactly_max_services_is_accepted(chain: Chain, make_wallet: WalletFactory) -> None:
    alice = await make_wallet(musd=0)
    registry = registry_for(chain, alice)
    services = tuple(ServiceOffer(f"svc-{i}", i * 1_000) for i in range(MAX_SERVICES))
    await registry.register(make_card("alice", services=services))
    assert (await registry.get_agent(alice.address)).services == services


async def test_update_replaces_card_and_services(chain: Chain, make_wallet: WalletFactory) -> None:
    alice = await make_wallet(musd=0)
    registry = registry_for(chain, alice)
    first = await registry.register(make_card("alice"))
    registered_at = await block_time(chain, first)

    await advance_time(chain, 1_000)
    new_card = make_card(
        "alice-v2",
        endpoint="tcp://10.0.0.7:6000",
        curve_key=h32("rotated"),
        model_sha256=h32("bigger model"),
        metadata_uri="https://example.invalid/alice.json",
        services=(ServiceOffer("code-review", 5 * ONE_MUSD),),
    )
    receipt = await registry.update(new_card)

    stored = await registry.get_agent(alice.address)
    # Services are replaced, not appended: the two old offers are gone.
    assert stored.services == (ServiceOffer("code-review", 5 * ONE_MUSD),)
    assert content(stored) == new_card
    assert stored.registered_at == registered_at
    assert stored.updated_at == await block_time(chain, receipt)
    assert stored.updated_at >= registered_at + 1_000

    logged = events(registry, "AgentUpdated", receipt)
    assert [(e["args"]["agent"], e["args"]["name"], e["args"]["endpoint"]) for e in logged] == [
        (alice.address, "alice-v2", "tcp://10.0.0.7:6000")
    ]
    assert events(registry, "AgentRegistered", receipt) == []

    # Updating to an empty service list clears them; count and listing are unchanged.
    count = await agent_count(registry)
    await registry.update(replace(new_card, services=()))
    assert (await registry.get_agent(alice.address)).services == ()
    assert await agent_count(registry) == count
    assert (await all_agents(registry)).count(alice.address) == 1


async def test_deregister_removes_card_and_emits_event(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    alice = await make_wallet(musd=0)
    registry = registry_for(chain, alice)
    await registry.register(make_card("alice"))
    count = await agent_count(registry)

    receipt = await registry.deregister()

    assert [e["args"]["agent"] for e in events(registry, "AgentDeregistered", receipt)] == [
        alice.address
    ]
    assert not await registry.is_registered(alice.address)
    assert await agent_count(registry) == count - 1
    assert alice.address not in await all_agents(registry)
    # The card itself is gone (getAgent's revert is checked in its own test).
    raw = registry.contract.functions.getAgent(alice.address)
    with pytest.raises(ContractLogicError) as raw_exc:
        await raw.call()
    assert str(raw_exc.value.data).startswith("0x" + NOT_REGISTERED_SELECTOR)

    # The address can register again, with a fresh card and timestamp.
    await advance_time(chain, 50)
    again = await registry.register(make_card("alice-again", services=()))
    stored = await registry.get_agent(alice.address)
    assert stored.name == "alice-again"
    assert stored.services == ()
    assert stored.registered_at == await block_time(chain, again)
    assert (await all_agents(registry))[-1] == alice.address


async def test_deregister_swap_and_pop_keeps_paging_correct(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    wallets = [await make_wallet(musd=0) for _ in range(4)]
    a, b, c, d = (w.address for w in wallets)
    ra, rb, rc, rd = (registry_for(chain, w) for w in wallets)
    base = await all_agents(ra)
    n0 = len(base)
    for client, label in zip((ra, rb, rc, rd), "abcd", strict=True):
        await client.register(make_card(label))
    assert await all_agents(ra) == [*base, a, b, c, d]

    # Removing from the middle moves the last entry into the hole.
    await rb.deregister()
    assert await all_agents(ra) == [*base, a, d, c]
    assert await agent_count(ra) == n0 + 3
    assert await ra.agents(n0, 2) == [a, d]
    assert await ra.agents(n0 + 1, 2) == [d, c]
    assert await ra.agents(n0 + 2, 5) == [c]
    assert await ra.agents(n0 + 3, 5) == []

    # d was moved: its index must have been updated, or this would remove the wrong slot.
    await rd.deregister()
    assert await all_agents(ra) == [*base, a, c]
    assert (await rc.get_agent(c)).name == "c"
    assert (await ra.get_agent(a)).name == "a"

    # Removing the last entry needs no swap.
    await rc.deregister()
    assert await all_agents(ra) == [*base, a]
    await ra.deregister()
    assert await all_agents(ra) == base
    for address in (a, b, c, d):
        assert not await ra.is_registered(address)

    # A re-registration after all this still appends cleanly.
    await rb.register(make_card("b2"))
    assert await all_agents(ra) == [*base, b]


async def test_agents_paging(chain: Chain, make_wallet: WalletFactory) -> None:
    wallets = [await make_wallet(musd=0) for _ in range(5)]
    registry = registry_for(chain, wallets[0])
    base = await all_agents(registry)
    n0 = len(base)
    for i, wallet in enumerate(wallets):
        await registry_for(chain, wallet).register(make_card(f"agent{i}"))
    addresses = [w.address for w in wallets]
    total = n0 + 5

    assert await agent_count(registry) == total
    pages = [await registry.agents(offset, 2) for offset in range(n0, total, 2)]
    assert pages == [addresses[0:2], addresses[2:4], addresses[4:5]]
    assert await registry.agents(n0, 0) == []
    assert await registry.agents(total - 1, 100) == [addresses[-1]]
    assert await registry.agents(total, 1) == []
    assert await registry.agents(total + 10, 10) == []
    assert await registry.agents(2**255, 10) == []
    assert await registry.agents(0, 2**256 - 1) == [*base, *addresses]


async def test_agents_paging_with_huge_limit_and_nonzero_offset(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    """``limit`` means "at most": a caller asking for "everything from here" must not revert.

    ``offset + limit`` is computed unchecked against overflow before clamping to the
    length, so ``agents(1, type(uint256).max)`` panics with arithmetic overflow.
    """
    wallets = [await make_wallet(musd=0) for _ in range(2)]
    registry = registry_for(chain, wallets[0])
    base = await all_agents(registry)
    for i, wallet in enumerate(wallets):
        await registry_for(chain, wallet).register(make_card(f"agent{i}"))
    expected = [*base, *(w.address for w in wallets)][1:]
    assert await registry.agents(1, 2**256 - 1) == expected


async def test_only_the_agent_writes_its_own_card(chain: Chain, make_wallet: WalletFactory) -> None:
    alice, mallory = await make_wallet(musd=0), await make_wallet(musd=0)
    alice_registry = registry_for(chain, alice)
    mallory_registry = registry_for(chain, mallory)
    card = make_card("alice")
    await alice_registry.register(card)
    listing = await all_agents(alice_registry)

    # An unregistered wallet's update/deregister is about itself, never about alice.
    with pytest.raises(ContractRevertError) as exc:
        await mallory_registry.update(make_card("alice", endpoint="tcp://evil:1"))
    assert exc.value.error_name == "NotRegistered"
    assert exc.value.error_args == (mallory.address,)
    with pytest.raises(ContractRevertError) as exc:
        await mallory_registry.deregister()
    assert exc.value.error_name == "NotRegistered"
    assert exc.value.error_args == (mallory.address,)

    # Once registered, mallory's writes change mallory's card only.
    await mallory_registry.register(make_card("mallory"))
    await mallory_registry.update(make_card("alice", endpoint="tcp://evil:1"))
    assert content(await alice_registry.get_agent(alice.address)) == card
    assert (await alice_registry.get_agent(mallory.address)).endpoint == "tcp://evil:1"
    await mallory_registry.deregister()
    assert await alice_registry.is_registered(alice.address)
    assert content(await alice_registry.get_agent(alice.address)) == card
    assert await all_agents(alice_registry) == listing


# ---------------------------------------------------------------------------- card reverts


async def test_register_twice_reverts_already_registered(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    alice = await make_wallet(musd=0)
    registry = registry_for(chain, alice)
    card = make_card("alice")
    await registry.register(card)
    count = await agent_count(registry)

    with pytest.raises(ContractRevertError) as exc:
        await registry.register(make_card("alice-2"))
    assert exc.value.error_name == "AlreadyRegistered"
    assert exc.value.error_args == (alice.address,)
    assert content(await registry.get_agent(alice.address)) == card
    assert await agent_count(registry) == count


async def test_update_and_deregister_when_unregistered_revert_not_registered(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    ghost = await make_wallet(musd=0)
    registry = registry_for(chain, ghost)
    listing = await all_agents(registry)
    with pytest.raises(ContractRevertError) as exc:
        await registry.update(make_card("ghost"))
    assert exc.value.error_name == "NotRegistered"
    assert exc.value.error_args == (ghost.address,)
    with pytest.raises(ContractRevertError) as exc:
        await registry.deregister()
    assert exc.value.error_name == "NotRegistered"
    assert exc.value.error_args == (ghost.address,)
    assert not await registry.is_registered(ghost.address)
    assert await all_agents(registry) == listing


async def test_get_agent_of_unregistered_reverts_not_registered(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    """Reads must decode custom errors like writes do (``ContractRevertError``).

    ``_Client._call`` only guards connection errors, so a reverting ``eth_call``
    leaks web3's raw ``ContractCustomError`` with undecoded hex data.
    """
    ghost, former = await make_wallet(musd=0), await make_wallet(musd=0)
    registry = registry_for(chain, former)
    await registry.register(make_card("former"))
    await registry.deregister()
    for address in (ghost.address, former.address):
        with pytest.raises(ContractRevertError) as exc:
            await registry.get_agent(address)
        assert exc.value.error_name == "NotRegistered"
        assert exc.value.error_args == (address,)


@pytest.mark.parametrize("action", ["register", "update"])
@pytest.mark.parametrize(
    ("card_changes", "error_name", "error_args"),
    [
        pytest.param({"name": ""}, "EmptyName", (), id="empty-name"),
        pytest.param(
            {"services": (ServiceOffer("ok", 1), ServiceOffer("", 2))},
            "EmptyName",
            (),
            id="empty-service-name",
        ),
        pytest.param({"name": "n" * 257}, "FieldTooLong", ("name", 257), id="long-name"),
        pytest.param({"name": "é" * 129}, "FieldTooLong", ("name", 258), id="long-name-utf8-bytes"),
        pytest.param(
            {"endpoint": "e" * 300}, "FieldTooLong", ("endpoint", 300), id="long-endpoint"
        ),
        pytest.param(
            {"metadata_uri": "m" * 257},
            "FieldTooLong",
            ("metadataURI", 257),
            id="long-metadata-uri",
        ),
        pytest.param(
            {"services": (ServiceOffer("ok", 1), ServiceOffer("s" * 257, 2))},
            "FieldTooLong",
            ("service", 257),
            id="long-service-name",
        ),
        pytest.param(
            {"services": tuple(ServiceOffer(f"s{i}", i) for i in range(33))},
            "TooManyServices",
            (33,),
            id="too-many-services",
        ),
    ],
)
async def test_invalid_card_reverts(
    chain: Chain,
    make_wallet: WalletFactory,
    action: str,
    card_changes: dict[str, Any],
    error_name: str,
    error_args: tuple[Any, ...],
) -> None:
    alice = await make_wallet(musd=0)
    registry = registry_for(chain, alice)
    valid = make_card("alice")
    if action == "update":
        await registry.register(valid)
    listing = await all_agents(registry)

    with pytest.raises(ContractRevertError) as exc:
        await getattr(registry, action)(make_card("alice", **card_changes))
    assert exc.value.error_name == error_name
    assert exc.value.error_args == error_args

    # Nothing was written: the old card (or no card) is intact.
    assert await all_agents(registry) == listing
    if action == "update":
        assert content(await registry.get_agent(alice.address)) == valid
    else:
        assert not await registry.is_registered(alice.address)


# ---------------------------------------------------------------------------- reputation


@pytest.fixture
async def parties(make_wallet: WalletFactory) -> Parties:
    return Parties(
        client=await make_wallet(musd=1_000, name="client"),
        provider=await make_wallet(musd=0, name="provider"),
        arbiter=await make_wallet(musd=0, name="arbiter"),
        stranger=await make_wallet(musd=0, name="stranger"),
    )


async def job_in_state(chain: Chain, p: Parties, state: str) -> int:
    """A fresh TaskEscrow job driven to ``state`` through the real contract."""
    job_id = await open_job(
        chain, p, amount=JOB_AMOUNT, deadline_in=JOB_DEADLINE_S, review_window=REVIEW_WINDOW_S
    )
    await drive(
        chain,
        p,
        job_id,
        state,
        split=JOB_AMOUNT // 4,
        deadline_in=JOB_DEADLINE_S,
        review_window=REVIEW_WINDOW_S,
    )
    return job_id


SETTLED = ["released", "claimed", "resolved", "refunded_accepted"]
NOT_SETTLED = [
    "open",
    "accepted",
    "submitted",
    "disputed",
    "refunded_open",
    "cancelled",
]


@pytest.mark.parametrize("state", SETTLED)
async def test_both_parties_rate_each_other_after_settlement(
    chain: Chain, parties: Parties, state: str
) -> None:
    job_id = await job_in_state(chain, parties, state)
    assert (await escrow_for(chain, parties.client).get_job(job_id)).status == STATE_STATUS[state]
    from_client = registry_for(chain, parties.client)
    from_provider = registry_for(chain, parties.provider)
    client_addr, provider_addr = parties.client.address, parties.provider.address
    assert await from_client.reputation(provider_addr) == (0, 0)
    assert await from_client.reputation(client_addr) == (0, 0)

    receipt = await from_client.give_feedback(job_id, 87, h32("great work"))
    assert await from_client.reputation(provider_addr) == (1, 87)
    assert await from_client.reputation(client_addr) == (0, 0)
    logged = events(from_client, "FeedbackGiven", receipt)
    assert len(logged) == 1
    assert dict(logged[0]["args"]) == {
        "agent": provider_addr,
        "from": client_addr,
        "jobId": job_id,
        "score": 87,
        "commentHash": h32("great work"),
    }

    receipt = await from_provider.give_feedback(job_id, 0, b"\x00" * 32)
    assert await from_provider.reputation(client_addr) == (1, 0)
    assert await from_provider.reputation(provider_addr) == (1, 87)
    logged = events(from_provider, "FeedbackGiven", receipt)
    assert [(e["args"]["agent"], e["args"]["from"], e["args"]["score"]) for e in logged] == [
        (client_addr, provider_addr, 0)
    ]

    given = from_client.contract.functions.feedbackGiven
    assert await from_client._call(given(job_id, client_addr)) is True
    assert await from_client._call(given(job_id, provider_addr)) is True
    assert await from_client._call(given(job_id, parties.arbiter.address)) is False


async def test_reputation_accumulates_over_jobs(chain: Chain, parties: Parties) -> None:
    registry = registry_for(chain, parties.client)
    scores = [100, 40, 73]
    for score in scores:
        job_id = await job_in_state(chain, parties, "released")
        await registry.give_feedback(job_id, score, h32(f"job {job_id}"))
    assert await registry.reputation(parties.provider.address) == (3, sum(scores))
    assert await registry.reputation(parties.client.address) == (0, 0)


async def test_reputation_survives_deregistration(chain: Chain, parties: Parties) -> None:
    provider_registry = registry_for(chain, parties.provider)
    await provider_registry.register(make_card("provider"))
    job_id = await job_in_state(chain, parties, "released")
    await registry_for(chain, parties.client).give_feedback(job_id, 91, h32("thanks"))
    assert await provider_registry.reputation(parties.provider.address) == (1, 91)

    await provider_registry.deregister()
    assert not await provider_registry.is_registered(parties.provider.address)
    assert await provider_registry.reputation(parties.provider.address) == (1, 91)

    # It still belongs to the address after a fresh registration.
    await provider_registry.register(make_card("provider-reborn"))
    assert await provider_registry.reputation(parties.provider.address) == (1, 91)


@pytest.mark.parametrize("state", NOT_SETTLED)
async def test_feedback_before_settlement_reverts(
    chain: Chain, parties: Parties, state: str
) -> None:
    job_id = await job_in_state(chain, parties, state)
    assert (await escrow_for(chain, parties.client).get_job(job_id)).status == STATE_STATUS[state]
    for who in (parties.client, parties.provider):
        registry = registry_for(chain, who)
        with pytest.raises(ContractRevertError) as exc:
            await registry.give_feedback(job_id, 50, h32("too early"))
        assert exc.value.error_name == "JobNotSettled"
        assert exc.value.error_args == (job_id,)
    registry = registry_for(chain, parties.client)
    assert await registry.reputation(parties.provider.address) == (0, 0)
    assert await registry.reputation(parties.client.address) == (0, 0)


async def test_feedback_from_non_party_reverts(chain: Chain, parties: Parties) -> None:
    job_id = await job_in_state(chain, parties, "resolved")
    # Neither a stranger nor the job's own arbiter is a party that may rate.
    for outsider in (parties.stranger, parties.arbiter):
        with pytest.raises(ContractRevertError) as exc:
            await registry_for(chain, outsider).give_feedback(job_id, 10, h32("spam"))
        assert exc.value.error_name == "NotJobParty"
        assert exc.value.error_args == (job_id, outsider.address)
    registry = registry_for(chain, parties.client)
    assert await registry.reputation(parties.provider.address) == (0, 0)
    assert await registry.reputation(parties.client.address) == (0, 0)


async def test_feedback_twice_reverts(chain: Chain, parties: Parties) -> None:
    job_id = await job_in_state(chain, parties, "claimed")
    registry = registry_for(chain, parties.provider)
    await registry.give_feedback(job_id, 60, h32("first"))
    with pytest.raises(ContractRevertError) as exc:
        await registry.give_feedback(job_id, 100, h32("second"))
    assert exc.value.error_name == "FeedbackAlreadyGiven"
    assert exc.value.error_args == (job_id, parties.provider.address)
    assert await registry.reputation(parties.client.address) == (1, 60)

    # The other direction is independent and still open once.
    await registry_for(chain, parties.client).give_feedback(job_id, 70, h32("back"))
    assert await registry.reputation(parties.provider.address) == (1, 70)


async def test_score_bounds(chain: Chain, parties: Parties) -> None:
    job_id = await job_in_state(chain, parties, "released")
    registry = registry_for(chain, parties.client)
    with pytest.raises(ContractRevertError) as exc:
        await registry.give_feedback(job_id, 101, h32("too good"))
    assert exc.value.error_name == "ScoreOutOfRange"
    assert exc.value.error_args == (101,)
    assert await registry.reputation(parties.provider.address) == (0, 0)

    # The failed attempt did not use up the client's one rating; 100 is in range.
    await registry.give_feedback(job_id, 100, h32("perfect"))
    assert await registry.reputation(parties.provider.address) == (1, 100)


async def test_feedback_on_unknown_job_bubbles_escrow_error(chain: Chain, parties: Parties) -> None:
    escrow = escrow_for(chain, parties.client)
    unknown = int(await escrow._call(escrow.contract.functions.jobCount())) + 1
    registry = registry_for(chain, parties.client)
    with pytest.raises(ContractRevertError) as exc:
        await registry.give_feedback(unknown, 50, h32("who?"))
    assert exc.value.error_name == "UnknownJob"
    assert exc.value.error_args == (unknown,)
    with pytest.raises(ContractRevertError) as exc:
        await registry.give_feedback(0, 50, h32("zero"))
    assert exc.value.error_name == "UnknownJob"
    assert exc.value.error_args == (0,)
