"""AgentWallet against a real anvil, through ``AgentWalletClient``.

The wallet is owned by a user and operated by an agent key. These tests drive the
agent's ``execute`` / ``executeWithApproval`` and the owner's policy calls, and assert
every policy revert by its decoded custom error. Time only ever moves on the chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from eth_typing import ChecksumAddress
from eth_utils import function_signature_to_4byte_selector
from web3.logs import DISCARD
from web3.types import TxReceipt

from agentmesh.contracts import load_artifact
from agentmesh.errors import ContractRevertError, PolicyViolation
from agentmesh.wallets.agent_wallet import NATIVE, NO_CALLDATA, AgentWalletClient, CapMode
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import (
    ONE_MUSD,
    WalletFactory,
    advance_time,
    chain_now,
    escrow_for,
    rpc,
    token_for,
)

ETHER = 10**18
HOUR = 3600
DAY = 24 * HOUR
UINT256_MAX = 2**256 - 1

TRANSFER = function_signature_to_4byte_selector("transfer(address,uint256)")
APPROVE = function_signature_to_4byte_selector("approve(address,uint256)")
ESCROW_OPEN = function_signature_to_4byte_selector(
    "open(address,address,uint256,uint64,uint64,address,bytes32)"
)

WALLET_MUSD = 500 * ONE_MUSD  # what the AgentWallet holds at the start of each test
WALLET_ETH = 5 * ETHER


# ---------------------------------------------------------------------- helpers


@dataclass
class Setup:
    chain: Chain
    owner: Wallet
    agent: Wallet
    stranger: Wallet
    recipient: ChecksumAddress  # fresh EOA with nothing in it
    wallet: AgentWalletClient  # sending as the owner
    as_agent: AgentWalletClient  # sending as the agent
    token: TokenClient  # MeshUSD, sending as the owner

    @property
    def address(self) -> ChecksumAddress:
        return self.wallet.address


@pytest.fixture
async def aw(chain: Chain, make_wallet: WalletFactory, token: TokenClient) -> Setup:
    owner = await make_wallet(eth=20, musd=1_000, name="owner")
    agent = await make_wallet(eth=10, musd=0, name="agent")
    stranger = await make_wallet(eth=10, musd=0, name="stranger")
    wallet = await AgentWalletClient.deploy(owner, agent.address)
    await token.mint(wallet.address, WALLET_MUSD)
    await owner.send({"to": wallet.address, "value": WALLET_ETH})
    return Setup(
        chain=chain,
        owner=owner,
        agent=agent,
        stranger=stranger,
        recipient=Account.create().address,
        wallet=wallet,
        as_agent=wallet.as_wallet(agent),
        token=token_for(chain, owner),
    )


def calldata(fn: Any) -> bytes:
    """ABI-encoded calldata of a bound contract function."""
    return bytes.fromhex(fn._encode_transaction_data().removeprefix("0x"))


def transfer_data(token: TokenClient, to: str, amount: int) -> bytes:
    return calldata(token.contract.functions.transfer(to, amount))


def approve_data(token: TokenClient, spender: str, amount: int) -> bytes:
    return calldata(token.contract.functions.approve(spender, amount))


def assert_error(exc: pytest.ExceptionInfo[ContractRevertError], name: str, *args: Any) -> None:
    assert exc.value.error_name == name, str(exc.value)
    assert exc.value.error_args == args, str(exc.value)


def events(client: AgentWalletClient, name: str, receipt: TxReceipt) -> list[dict[str, Any]]:
    """Decoded ``name`` events the wallet emitted in ``receipt`` (other logs ignored)."""
    found = getattr(client.contract.events, name)().process_receipt(receipt, errors=DISCARD)
    return [dict(e["args"]) for e in found if e["address"] == client.address]


async def view(client: AgentWalletClient, name: str, *args: Any) -> Any:
    return await getattr(client.contract.functions, name)(*args).call()


async def advance_to(chain: Chain, timestamp: int) -> None:
    """Mine a block at ``timestamp`` exactly (must be in the future)."""
    now = await chain_now(chain)
    assert timestamp > now
    await rpc(chain, "evm_setNextBlockTimestamp", timestamp)
    await rpc(chain, "evm_mine")
    assert await chain_now(chain) == timestamp


async def block_time(chain: Chain, receipt: TxReceipt) -> int:
    block = await chain.w3.eth.get_block(receipt["blockNumber"])
    return int(block["timestamp"])


async def eth_of(chain: Chain, address: str) -> int:
    return int(await chain.w3.eth.get_balance(address))  # type: ignore[arg-type]


async def allow_transfers(aw: Setup, limit: int, mode: CapMode = CapMode.DAILY) -> None:
    """Cap MeshUSD at ``limit`` and let the agent call ``MeshUSD.transfer``."""
    await aw.wallet.set_cap(aw.token.address, limit, mode)
    await aw.wallet.set_allowed(aw.token.address, TRANSFER, True)


async def agent_transfer(aw: Setup, amount: int, to: str | None = None) -> TxReceipt:
    data = transfer_data(aw.token, to or aw.recipient, amount)
    return await aw.as_agent.execute(aw.token.address, 0, data)


# ---------------------------------------------------------------------- success paths


async def test_deploy_sets_owner_agent_and_empty_policy(aw: Setup) -> None:
    assert await view(aw.wallet, "owner") == aw.owner.address
    assert await aw.wallet.agent() == aw.agent.address
    assert await view(aw.wallet, "paused") is False
    assert await view(aw.wallet, "cappedTokens") == []
    assert await view(aw.wallet, "capOf", aw.token.address) == [0, CapMode.NONE]
    assert await view(aw.wallet, "isAllowed", aw.token.address, TRANSFER) is False
    assert await view(aw.wallet, "MAX_CAPPED_TOKENS") == 16


async def test_agent_transfers_allowlisted_token_within_cap(aw: Setup) -> None:
    await allow_transfers(aw, 100 * ONE_MUSD)

    receipt = await agent_transfer(aw, 40 * ONE_MUSD)

    assert await aw.token.balance_of(aw.recipient) == 40 * ONE_MUSD
    assert await aw.token.balance_of(aw.address) == WALLET_MUSD - 40 * ONE_MUSD
    assert await aw.wallet.spendable(aw.token.address) == (40 * ONE_MUSD, 60 * ONE_MUSD)
    assert events(aw.wallet, "Executed", receipt) == [
        {"target": aw.token.address, "selector": TRANSFER, "value": 0}
    ]
    assert events(aw.wallet, "Spent", receipt) == [
        {"token": aw.token.address, "amount": 40 * ONE_MUSD, "spentInWindow": 40 * ONE_MUSD}
    ]

    # Spending up to the cap exactly is allowed.
    receipt = await agent_transfer(aw, 60 * ONE_MUSD)
    assert events(aw.wallet, "Spent", receipt)[0]["spentInWindow"] == 100 * ONE_MUSD
    assert await aw.wallet.spendable(aw.token.address) == (100 * ONE_MUSD, 0)
    assert await aw.token.balance_of(aw.recipient) == 100 * ONE_MUSD


async def test_agent_sends_plain_eth_under_native_cap(aw: Setup) -> None:
    await aw.wallet.set_cap(NATIVE, ETHER, CapMode.DAILY)
    await aw.wallet.set_allowed(aw.recipient, NO_CALLDATA, True)

    receipt = await aw.as_agent.execute(aw.recipient, 4 * ETHER // 10, b"")

    assert await eth_of(aw.chain, aw.recipient) == 4 * ETHER // 10
    assert await eth_of(aw.chain, aw.address) == WALLET_ETH - 4 * ETHER // 10
    assert await aw.wallet.spendable(NATIVE) == (4 * ETHER // 10, 6 * ETHER // 10)
    assert events(aw.wallet, "Executed", receipt) == [
        {"target": aw.recipient, "selector": NO_CALLDATA, "value": 4 * ETHER // 10}
    ]
    # The native cap is not a token: it never shows in the capped-token list.
    assert await view(aw.wallet, "cappedTokens") == []


async def test_execute_with_approval_charges_only_what_escrow_pulled(aw: Setup) -> None:
    escrow = escrow_for(aw.chain, aw.owner)
    await aw.wallet.set_cap(aw.token.address, 100 * ONE_MUSD, CapMode.DAILY)
    await aw.wallet.set_allowed(aw.token.address, APPROVE, True)
    await aw.wallet.set_allowed(escrow.address, ESCROW_OPEN, True)
    provider, arbiter = Account.create().address, Account.create().address
    deadline = await chain_now(aw.chain) + DAY
    open_call = escrow.contract.functions.open(
        provider, aw.token.address, 30 * ONE_MUSD, deadline, HOUR, arbiter, b"\x11" * 32
    )
    escrow_before = await aw.token.balance_of(escrow.address)

    # The allowance granted (1000 mUSD) is far above the cap: only the pull counts.
    receipt = await aw.as_agent.execute_with_approval(
        aw.token.address,
        escrow.address,
        1_000 * ONE_MUSD,
        escrow.address,
        0,
        calldata(open_call),
    )

    assert await aw.token.allowance(aw.address, escrow.address) == 0
    assert await aw.token.balance_of(escrow.address) == escrow_before + 30 * ONE_MUSD
    assert await aw.token.balance_of(aw.address) == WALLET_MUSD - 30 * ONE_MUSD
    assert await aw.wallet.spendable(aw.token.address) == (30 * ONE_MUSD, 70 * ONE_MUSD)
    assert events(aw.wallet, "Executed", receipt) == [
        {"target": escrow.address, "selector": ESCROW_OPEN, "value": 0}
    ]
    job_id = escrow.contract.events.JobOpened().process_receipt(receipt, errors=DISCARD)[0]["args"][
        "jobId"
    ]
    job = await escrow.get_job(job_id)
    assert job.client == aw.address
    assert job.amount == 30 * ONE_MUSD


async def test_execute_with_approval_over_cap_pull_reverts(aw: Setup) -> None:
    escrow = escrow_for(aw.chain, aw.owner)
    await aw.wallet.set_cap(aw.token.address, 100 * ONE_MUSD, CapMode.DAILY)
    await aw.wallet.set_allowed(aw.token.address, APPROVE, True)
    await aw.wallet.set_allowed(escrow.address, ESCROW_OPEN, True)
    open_call = escrow.contract.functions.open(
        Account.create().address,
        aw.token.address,
        150 * ONE_MUSD,
        await chain_now(aw.chain) + DAY,
        HOUR,
        Account.create().address,
        b"\x22" * 32,
    )

    with pytest.raises(ContractRevertError) as exc:
        await aw.as_agent.execute_with_approval(
            aw.token.address,
            escrow.address,
            150 * ONE_MUSD,
            escrow.address,
            0,
            calldata(open_call),
        )

    assert_error(exc, "CapExceeded", aw.token.address, 150 * ONE_MUSD, 100 * ONE_MUSD)
    assert await aw.token.balance_of(aw.address) == WALLET_MUSD
    assert await aw.token.allowance(aw.address, escrow.address) == 0
    assert await aw.wallet.spendable(aw.token.address) == (0, 100 * ONE_MUSD)


async def test_execute_with_approval_needs_approve_allowlisted_on_token(aw: Setup) -> None:
    escrow = escrow_for(aw.chain, aw.owner)
    await aw.wallet.set_allowed(escrow.address, ESCROW_OPEN, True)
    open_call = escrow.contract.functions.open(
        Account.create().address,
        aw.token.address,
        ONE_MUSD,
        await chain_now(aw.chain) + DAY,
        HOUR,
        Account.create().address,
        b"\x33" * 32,
    )

    with pytest.raises(ContractRevertError) as exc:
        await aw.as_agent.execute_with_approval(
            aw.token.address, escrow.address, ONE_MUSD, escrow.address, 0, calldata(open_call)
        )

    assert_error(exc, "TargetNotAllowed", aw.token.address, APPROVE)


async def test_execute_with_approval_cannot_grant_an_uncharged_allowance(aw: Setup) -> None:
    """The approve charge must not be skippable by routing approve through
    ``executeWithApproval`` (target = the capped token itself).

    BUG: AgentWallet.executeWithApproval charges ``_chargeAll(before, value, address(0), 0)``
    so an ``approve`` made by the *target call* is never charged; its forceApprove(spender, 0)
    only clears the allowance of ``spender``. The agent can grant any address an unlimited
    allowance on a capped token and drain the wallet past the cap.
    """
    cap = 100 * ONE_MUSD
    await aw.wallet.set_cap(aw.token.address, cap, CapMode.DAILY)
    await aw.wallet.set_allowed(aw.token.address, APPROVE, True)
    thief = aw.stranger
    grant = approve_data(aw.token, thief.address, UINT256_MAX)

    try:
        await aw.as_agent.execute_with_approval(
            aw.token.address, aw.recipient, 0, aw.token.address, 0, grant
        )
    except ContractRevertError as error:
        # What `execute` does with the same approve: charge it, and refuse it over the cap.
        assert error.error_name == "CapExceeded", str(error)
        assert error.error_args == (aw.token.address, UINT256_MAX, cap)
        assert await aw.token.allowance(aw.address, thief.address) == 0
        return

    # The call went through: show what it allows before failing.
    allowance = await aw.token.allowance(aw.address, thief.address)
    await thief.transact(
        aw.token.contract.functions.transferFrom(aw.address, thief.address, WALLET_MUSD)
    )
    drained = await aw.token.balance_of(thief.address)
    pytest.fail(
        f"executeWithApproval granted an uncharged allowance of {allowance} on a token capped "
        f"at {cap}; spendable={await aw.wallet.spendable(aw.token.address)}; "
        f"a stranger then drained {drained} (cap {cap}) from the wallet"
    )


async def test_owner_sets_and_clears_caps(aw: Setup, chain: Chain, deployer: Wallet) -> None:
    other, _ = await deployer.deploy(load_artifact("MeshUSD"), deployer.address)

    receipt = await aw.wallet.set_cap(aw.token.address, 100 * ONE_MUSD, CapMode.DAILY)
    assert events(aw.wallet, "CapSet", receipt) == [
        {"token": aw.token.address, "limit": 100 * ONE_MUSD, "mode": CapMode.DAILY}
    ]
    await aw.wallet.set_cap(other, 7, CapMode.ROLLING)
    await aw.wallet.set_cap(NATIVE, ETHER, CapMode.ROLLING)

    assert await view(aw.wallet, "capOf", aw.token.address) == [100 * ONE_MUSD, CapMode.DAILY]
    assert await view(aw.wallet, "capOf", other) == [7, CapMode.ROLLING]
    assert await view(aw.wallet, "capOf", NATIVE) == [ETHER, CapMode.ROLLING]
    assert await view(aw.wallet, "cappedTokens") == [aw.token.address, other]
    assert await aw.wallet.spendable(other) == (0, 7)

    # Changing an existing cap does not list the token twice.
    await aw.wallet.set_cap(aw.token.address, 5, CapMode.ROLLING)
    assert await view(aw.wallet, "capOf", aw.token.address) == [5, CapMode.ROLLING]
    assert await view(aw.wallet, "cappedTokens") == [aw.token.address, other]

    # Clearing (mode None) drops the token from the list and stores no limit.
    await aw.wallet.set_cap(aw.token.address, 5, CapMode.NONE)
    assert await view(aw.wallet, "capOf", aw.token.address) == [0, CapMode.NONE]
    assert await view(aw.wallet, "cappedTokens") == [other]
    assert await aw.wallet.spendable(aw.token.address) == (0, UINT256_MAX)


async def test_uncapped_spendable_defaults(aw: Setup) -> None:
    # Native ETH is always capped: no cap means nothing may be sent.
    assert await aw.wallet.spendable(NATIVE) == (0, 0)
    # An uncapped token is unlimited.
    assert await aw.wallet.spendable(aw.token.address) == (0, UINT256_MAX)


async def test_uncapped_token_transfer_is_unlimited(aw: Setup) -> None:
    await aw.wallet.set_allowed(aw.token.address, TRANSFER, True)

    receipt = await agent_transfer(aw, WALLET_MUSD)

    assert await aw.token.balance_of(aw.recipient) == WALLET_MUSD
    assert events(aw.wallet, "Spent", receipt) == []


async def test_owner_allowlists_and_removes(aw: Setup) -> None:
    receipt = await aw.wallet.set_allowed(aw.token.address, TRANSFER, True)
    assert events(aw.wallet, "AllowlistSet", receipt) == [
        {"target": aw.token.address, "selector": TRANSFER, "allowed": True}
    ]
    assert await view(aw.wallet, "isAllowed", aw.token.address, TRANSFER) is True
    assert await view(aw.wallet, "isAllowed", aw.token.address, APPROVE) is False
    await agent_transfer(aw, ONE_MUSD)

    await aw.wallet.set_allowed(aw.token.address, TRANSFER, False)
    assert await view(aw.wallet, "isAllowed", aw.token.address, TRANSFER) is False
    with pytest.raises(ContractRevertError) as exc:
        await agent_transfer(aw, ONE_MUSD)
    assert_error(exc, "TargetNotAllowed", aw.token.address, TRANSFER)
    assert await aw.token.balance_of(aw.recipient) == ONE_MUSD


async def test_owner_pauses_and_unpauses(aw: Setup) -> None:
    await allow_transfers(aw, 100 * ONE_MUSD)
    await aw.wallet.pause()
    assert await view(aw.wallet, "paused") is True

    with pytest.raises(ContractRevertError) as exc:
        await agent_transfer(aw, ONE_MUSD)
    assert_error(exc, "EnforcedPause")
    with pytest.raises(ContractRevertError) as exc:
        await aw.as_agent.execute_with_approval(
            aw.token.address,
            aw.recipient,
            1,
            aw.token.address,
            0,
            transfer_data(aw.token, aw.recipient, 1),
        )
    assert_error(exc, "EnforcedPause")

    # The owner's withdraw is not subject to the pause.
    await aw.wallet.withdraw(aw.token.address, aw.owner.address, ONE_MUSD)

    await aw.wallet.unpause()
    assert await view(aw.wallet, "paused") is False
    await agent_transfer(aw, 2 * ONE_MUSD)
    assert await aw.token.balance_of(aw.recipient) == 2 * ONE_MUSD


async def test_owner_replaces_agent(aw: Setup, make_wallet: WalletFactory) -> None:
    await allow_transfers(aw, 100 * ONE_MUSD)
    new_agent = await make_wallet(eth=1, musd=0)

    receipt = await aw.wallet.set_agent(new_agent.address)

    assert events(aw.wallet, "AgentChanged", receipt) == [
        {"previousAgent": aw.agent.address, "newAgent": new_agent.address}
    ]
    assert await aw.wallet.agent() == new_agent.address
    with pytest.raises(ContractRevertError) as exc:
        await agent_transfer(aw, ONE_MUSD)
    assert_error(exc, "NotAgent", aw.agent.address)

    await aw.wallet.as_wallet(new_agent).execute(
        aw.token.address, 0, transfer_data(aw.token, aw.recipient, 3 * ONE_MUSD)
    )
    assert await aw.token.balance_of(aw.recipient) == 3 * ONE_MUSD
    # Policy and spending stay with the wallet, not with the key.
    assert await aw.wallet.spendable(aw.token.address) == (3 * ONE_MUSD, 97 * ONE_MUSD)


async def test_revoke_agent_refuses_old_agent(aw: Setup) -> None:
    await allow_transfers(aw, 100 * ONE_MUSD)
    await agent_transfer(aw, ONE_MUSD)

    receipt = await aw.wallet.revoke_agent()

    assert events(aw.wallet, "AgentChanged", receipt) == [
        {"previousAgent": aw.agent.address, "newAgent": NATIVE}
    ]
    assert await aw.wallet.agent() == NATIVE
    with pytest.raises(ContractRevertError) as exc:
        await agent_transfer(aw, ONE_MUSD)
    assert_error(exc, "NotAgent", aw.agent.address)
    assert await aw.token.balance_of(aw.recipient) == ONE_MUSD


async def test_owner_withdraws_eth_and_token_beyond_caps(aw: Setup) -> None:
    await aw.wallet.set_cap(aw.token.address, ONE_MUSD, CapMode.DAILY)
    await aw.wallet.set_cap(NATIVE, 1, CapMode.DAILY)

    receipt = await aw.wallet.withdraw(aw.token.address, aw.recipient, 300 * ONE_MUSD)
    assert events(aw.wallet, "Withdrawn", receipt) == [
        {"token": aw.token.address, "to": aw.recipient, "amount": 300 * ONE_MUSD}
    ]
    receipt = await aw.wallet.withdraw(NATIVE, aw.recipient, 2 * ETHER)
    assert events(aw.wallet, "Withdrawn", receipt) == [
        {"token": NATIVE, "to": aw.recipient, "amount": 2 * ETHER}
    ]

    assert await aw.token.balance_of(aw.recipient) == 300 * ONE_MUSD
    assert await aw.token.balance_of(aw.address) == WALLET_MUSD - 300 * ONE_MUSD
    assert await eth_of(aw.chain, aw.recipient) == 2 * ETHER
    assert await eth_of(aw.chain, aw.address) == WALLET_ETH - 2 * ETHER
    # The owner's withdrawals are not the agent's spending.
    assert await aw.wallet.spendable(aw.token.address) == (0, ONE_MUSD)
    assert await aw.wallet.spendable(NATIVE) == (0, 1)


async def test_withdraw_to_zero_address_is_refused(aw: Setup) -> None:
    with pytest.raises(ContractRevertError) as exc:
        await aw.wallet.withdraw(aw.token.address, NATIVE, ONE_MUSD)
    assert_error(exc, "ZeroAddress")


async def test_withdraw_native_to_contract_without_receive_fails(aw: Setup) -> None:
    # MeshUSD has no receive(): the ETH transfer fails and the wallet says so.
    with pytest.raises(ContractRevertError) as exc:
        await aw.wallet.withdraw(NATIVE, aw.token.address, ETHER)
    assert_error(exc, "NativeTransferFailed", aw.token.address, ETHER)
    assert await eth_of(aw.chain, aw.address) == WALLET_ETH


async def test_ownership_transfer_takes_two_steps(aw: Setup, make_wallet: WalletFactory) -> None:
    new_owner = await make_wallet(eth=1, musd=0)
    await aw.owner.transact(aw.wallet.contract.functions.transferOwnership(new_owner.address))

    # Nothing changes until the new owner accepts.
    assert await view(aw.wallet, "owner") == aw.owner.address
    assert await view(aw.wallet, "pendingOwner") == new_owner.address
    with pytest.raises(ContractRevertError) as exc:
        await aw.stranger.transact(aw.wallet.contract.functions.acceptOwnership())
    assert_error(exc, "OwnableUnauthorizedAccount", aw.stranger.address)

    await new_owner.transact(aw.wallet.contract.functions.acceptOwnership())

    assert await view(aw.wallet, "owner") == new_owner.address
    assert await view(aw.wallet, "pendingOwner") == NATIVE
    with pytest.raises(ContractRevertError) as exc:
        await aw.wallet.pause()  # the old owner
    assert_error(exc, "OwnableUnauthorizedAccount", aw.owner.address)
    await aw.wallet.as_wallet(new_owner).pause()
    assert await view(aw.wallet, "paused") is True


async def test_receive_emits_received(aw: Setup) -> None:
    receipt = await aw.stranger.send({"to": aw.address, "value": 123_456})

    assert events(aw.wallet, "Received", receipt) == [
        {"from": aw.stranger.address, "amount": 123_456}
    ]
    assert await eth_of(aw.chain, aw.address) == WALLET_ETH + 123_456


# ---------------------------------------------------------------------- policy reverts


@pytest.mark.parametrize("caller", ["owner", "stranger"])
async def test_only_agent_may_execute(aw: Setup, caller: str) -> None:
    await allow_transfers(aw, 100 * ONE_MUSD)
    wallet: Wallet = getattr(aw, caller)
    as_caller = aw.wallet.as_wallet(wallet)

    with pytest.raises(ContractRevertError) as exc:
        await as_caller.execute(aw.token.address, 0, transfer_data(aw.token, aw.recipient, 1))
    assert_error(exc, "NotAgent", wallet.address)
    with pytest.raises(ContractRevertError) as exc:
        await as_caller.execute_with_approval(
            aw.token.address,
            aw.recipient,
            1,
            aw.token.address,
            0,
            transfer_data(aw.token, aw.recipient, 1),
        )
    assert_error(exc, "NotAgent", wallet.address)


async def test_target_not_allowed(aw: Setup) -> None:
    await aw.wallet.set_cap(NATIVE, ETHER, CapMode.DAILY)

    with pytest.raises(ContractRevertError) as exc:
        await agent_transfer(aw, ONE_MUSD)
    assert_error(exc, "TargetNotAllowed", aw.token.address, TRANSFER)

    # Allowing one selector on a target does not allow another.
    await aw.wallet.set_allowed(aw.token.address, TRANSFER, True)
    with pytest.raises(ContractRevertError) as exc:
        await aw.as_agent.execute(aw.token.address, 0, approve_data(aw.token, aw.recipient, 1))
    assert_error(exc, "TargetNotAllowed", aw.token.address, APPROVE)

    # Allowing a selector on one target does not allow it on another.
    other = Account.create().address
    with pytest.raises(ContractRevertError) as exc:
        await aw.as_agent.execute(other, 0, transfer_data(aw.token, aw.recipient, 1))
    assert_error(exc, "TargetNotAllowed", other, TRANSFER)

    # A plain ETH transfer needs (recipient, 0x00000000).
    with pytest.raises(ContractRevertError) as exc:
        await aw.as_agent.execute(aw.recipient, 1, b"")
    assert_error(exc, "TargetNotAllowed", aw.recipient, NO_CALLDATA)

    assert await aw.token.balance_of(aw.recipient) == 0
    assert await eth_of(aw.chain, aw.recipient) == 0


async def test_cap_exceeded_in_one_call(aw: Setup) -> None:
    await allow_transfers(aw, 100 * ONE_MUSD)

    with pytest.raises(ContractRevertError) as exc:
        await agent_transfer(aw, 100 * ONE_MUSD + 1)

    assert_error(exc, "CapExceeded", aw.token.address, 100 * ONE_MUSD + 1, 100 * ONE_MUSD)
    assert await aw.token.balance_of(aw.recipient) == 0


async def test_cap_exceeded_by_cumulative_calls(aw: Setup) -> None:
    await allow_transfers(aw, 100 * ONE_MUSD, CapMode.ROLLING)
    await agent_transfer(aw, 35 * ONE_MUSD)
    await agent_transfer(aw, 25 * ONE_MUSD)

    with pytest.raises(ContractRevertError) as exc:
        await agent_transfer(aw, 50 * ONE_MUSD)

    assert_error(exc, "CapExceeded", aw.token.address, 50 * ONE_MUSD, 40 * ONE_MUSD)
    assert await aw.token.balance_of(aw.recipient) == 60 * ONE_MUSD
    # What is left can still be spent.
    await agent_transfer(aw, 40 * ONE_MUSD)
    assert await aw.wallet.spendable(aw.token.address) == (100 * ONE_MUSD, 0)


async def test_approve_on_capped_token_charges_the_approved_amount(aw: Setup) -> None:
    await aw.wallet.set_cap(aw.token.address, 100 * ONE_MUSD, CapMode.DAILY)
    await aw.wallet.set_allowed(aw.token.address, APPROVE, True)
    spender = aw.stranger.address

    receipt = await aw.as_agent.execute(
        aw.token.address, 0, approve_data(aw.token, spender, 70 * ONE_MUSD)
    )

    assert events(aw.wallet, "Spent", receipt) == [
        {"token": aw.token.address, "amount": 70 * ONE_MUSD, "spentInWindow": 70 * ONE_MUSD}
    ]
    assert await aw.token.allowance(aw.address, spender) == 70 * ONE_MUSD
    assert await aw.token.balance_of(aw.address) == WALLET_MUSD  # nothing moved yet
    assert await aw.wallet.spendable(aw.token.address) == (70 * ONE_MUSD, 30 * ONE_MUSD)

    with pytest.raises(ContractRevertError) as exc:
        await aw.as_agent.execute(
            aw.token.address, 0, approve_data(aw.token, spender, 30 * ONE_MUSD + 1)
        )
    assert_error(exc, "CapExceeded", aw.token.address, 30 * ONE_MUSD + 1, 30 * ONE_MUSD)
    assert await aw.token.allowance(aw.address, spender) == 70 * ONE_MUSD


async def test_native_value_without_native_cap_is_refused(aw: Setup) -> None:
    await aw.wallet.set_allowed(aw.recipient, NO_CALLDATA, True)

    with pytest.raises(ContractRevertError) as exc:
        await aw.as_agent.execute(aw.recipient, 1, b"")

    assert_error(exc, "CapExceeded", NATIVE, 1, 0)
    assert await eth_of(aw.chain, aw.recipient) == 0
    # A zero-value call to the same allowlisted target is fine.
    await aw.as_agent.execute(aw.recipient, 0, b"")


async def test_native_value_over_native_cap_is_refused(aw: Setup) -> None:
    await aw.wallet.set_cap(NATIVE, ETHER, CapMode.ROLLING)
    await aw.wallet.set_allowed(aw.recipient, NO_CALLDATA, True)
    await aw.as_agent.execute(aw.recipient, ETHER // 2, b"")

    with pytest.raises(ContractRevertError) as exc:
        await aw.as_agent.execute(aw.recipient, ETHER // 2 + 1, b"")

    assert_error(exc, "CapExceeded", NATIVE, ETHER // 2 + 1, ETHER // 2)
    assert await eth_of(aw.chain, aw.recipient) == ETHER // 2


@pytest.mark.parametrize("length", [1, 2, 3])
async def test_malformed_calldata(aw: Setup, length: int) -> None:
    await aw.wallet.set_allowed(aw.token.address, NO_CALLDATA, True)
    await aw.wallet.set_allowed(aw.token.address, TRANSFER, True)

    with pytest.raises(ContractRevertError) as exc:
        await aw.as_agent.execute(aw.token.address, 0, TRANSFER[:length])

    assert_error(exc, "MalformedCalldata", length)


async def test_self_call_forbidden(aw: Setup) -> None:
    await aw.wallet.set_cap(NATIVE, ETHER, CapMode.DAILY)

    with pytest.raises(ContractRevertError) as exc:
        await aw.as_agent.execute(aw.address, 0, b"")
    assert_error(exc, "SelfCallForbidden")
    pause_data = calldata(aw.wallet.contract.functions.pause())
    with pytest.raises(ContractRevertError) as exc:
        await aw.as_agent.execute(aw.address, 0, pause_data)
    assert_error(exc, "SelfCallForbidden")
    with pytest.raises(ContractRevertError) as exc:
        await aw.as_agent.execute_with_approval(
            aw.token.address, aw.recipient, 1, aw.address, 0, pause_data
        )
    assert_error(exc, "SelfCallForbidden")

    # Nor can the owner allowlist the wallet itself.
    with pytest.raises(ContractRevertError) as exc:
        await aw.wallet.set_allowed(aw.address, NO_CALLDATA, True)
    assert_error(exc, "SelfCallForbidden")
    assert await view(aw.wallet, "isAllowed", aw.address, NO_CALLDATA) is False
    assert await view(aw.wallet, "paused") is False


async def test_set_allowed_zero_address_is_refused(aw: Setup) -> None:
    with pytest.raises(ContractRevertError) as exc:
        await aw.wallet.set_allowed(NATIVE, NO_CALLDATA, True)
    assert_error(exc, "ZeroAddress")


OwnerCall = Callable[[Setup], Any]

OWNER_CALLS: dict[str, OwnerCall] = {
    "setCap": lambda a: a.wallet.contract.functions.setCap(a.token.address, 1, 1),
    "setAllowed": lambda a: a.wallet.contract.functions.setAllowed(a.recipient, TRANSFER, True),
    "setAgent": lambda a: a.wallet.contract.functions.setAgent(a.stranger.address),
    "revokeAgent": lambda a: a.wallet.contract.functions.revokeAgent(),
    "pause": lambda a: a.wallet.contract.functions.pause(),
    "unpause": lambda a: a.wallet.contract.functions.unpause(),
    "withdrawToken": lambda a: a.wallet.contract.functions.withdraw(
        a.token.address, a.stranger.address, ONE_MUSD
    ),
    "withdrawEth": lambda a: a.wallet.contract.functions.withdraw(
        NATIVE, a.stranger.address, ETHER
    ),
    "transferOwnership": lambda a: a.wallet.contract.functions.transferOwnership(
        a.stranger.address
    ),
}


@pytest.mark.parametrize("caller", ["agent", "stranger"])
@pytest.mark.parametrize("function", sorted(OWNER_CALLS))
async def test_owner_functions_refuse_others(aw: Setup, function: str, caller: str) -> None:
    wallet: Wallet = getattr(aw, caller)

    with pytest.raises(ContractRevertError) as exc:
        await wallet.transact(OWNER_CALLS[function](aw))

    assert_error(exc, "OwnableUnauthorizedAccount", wallet.address)
    # Nothing changed.
    assert await view(aw.wallet, "owner") == aw.owner.address
    assert await view(aw.wallet, "pendingOwner") == NATIVE
    assert await aw.wallet.agent() == aw.agent.address
    assert await view(aw.wallet, "paused") is False
    assert await view(aw.wallet, "cappedTokens") == []
    assert await aw.token.balance_of(aw.address) == WALLET_MUSD
    assert await eth_of(aw.chain, aw.address) == WALLET_ETH


@pytest.mark.parametrize("caller", ["owner", "stranger"])
async def test_renounce_ownership_is_disabled(aw: Setup, caller: str) -> None:
    wallet: Wallet = getattr(aw, caller)

    with pytest.raises(ContractRevertError) as exc:
        await wallet.transact(aw.wallet.contract.functions.renounceOwnership())

    assert_error(exc, "RenounceDisabled")
    assert await view(aw.wallet, "owner") == aw.owner.address


async def test_too_many_capped_tokens(aw: Setup, deployer: Wallet) -> None:
    meshusd = load_artifact("MeshUSD")
    tokens = [aw.token.address]
    for _ in range(15):
        address, _ = await deployer.deploy(meshusd, deployer.address)
        tokens.append(address)
    for address in tokens:
        await aw.wallet.set_cap(address, 1_000, CapMode.DAILY)
    assert await view(aw.wallet, "cappedTokens") == tokens
    extra, _ = await deployer.deploy(meshusd, deployer.address)

    with pytest.raises(ContractRevertError) as exc:
        await aw.wallet.set_cap(extra, 1_000, CapMode.ROLLING)

    assert_error(exc, "TooManyCappedTokens", 16)
    assert await view(aw.wallet, "capOf", extra) == [0, CapMode.NONE]
    # At the limit, updating a listed token and capping native ETH still work,
    # and so does the agent (16 balances read per call).
    await aw.wallet.set_cap(tokens[0], 100 * ONE_MUSD, CapMode.DAILY)
    await aw.wallet.set_cap(NATIVE, ETHER, CapMode.DAILY)
    await aw.wallet.set_allowed(aw.token.address, TRANSFER, True)
    await agent_transfer(aw, 10 * ONE_MUSD)
    assert await aw.wallet.spendable(aw.token.address) == (10 * ONE_MUSD, 90 * ONE_MUSD)
    # Freeing a slot makes room for the 17th.
    await aw.wallet.set_cap(tokens[5], 0, CapMode.NONE)
    await aw.wallet.set_cap(extra, 1_000, CapMode.ROLLING)
    listed = await view(aw.wallet, "cappedTokens")
    assert len(listed) == 16
    assert extra in listed
    assert tokens[5] not in listed


async def test_call_failed_wraps_inner_revert(aw: Setup) -> None:
    await allow_transfers(aw, 1_000 * ONE_MUSD)

    with pytest.raises(ContractRevertError) as exc:
        await agent_transfer(aw, WALLET_MUSD + 1)

    assert exc.value.error_name == "CallFailed"
    target, inner = exc.value.error_args
    assert target == aw.token.address
    assert "ERC20InsufficientBalance" in inner
    assert f"ERC20InsufficientBalance({aw.address}, {WALLET_MUSD}, {WALLET_MUSD + 1})" in inner
    assert "ERC20InsufficientBalance" in str(exc.value)
    assert await aw.wallet.spendable(aw.token.address) == (0, 1_000 * ONE_MUSD)


async def test_call_failed_on_eth_to_contract_without_receive(aw: Setup) -> None:
    await aw.wallet.set_cap(NATIVE, ETHER, CapMode.DAILY)
    await aw.wallet.set_allowed(aw.token.address, NO_CALLDATA, True)

    with pytest.raises(ContractRevertError) as exc:
        await aw.as_agent.execute(aw.token.address, 1, b"")

    assert_error(exc, "CallFailed", aw.token.address, b"")
    assert await aw.wallet.spendable(NATIVE) == (0, ETHER)


async def test_policy_refusals_are_policy_violations_and_target_reverts_are_not(
    aw: Setup,
) -> None:
    """The client tells the owner's policy (PolicyViolation) from a target that reverted
    on its own (CallFailed: a plain ContractRevertError)."""
    await allow_transfers(aw, 100 * ONE_MUSD)

    with pytest.raises(PolicyViolation) as refused:
        await agent_transfer(aw, 100 * ONE_MUSD + 1)
    assert_error(refused, "CapExceeded", aw.token.address, 100 * ONE_MUSD + 1, 100 * ONE_MUSD)

    with pytest.raises(PolicyViolation) as refused:
        await aw.as_agent.execute(aw.token.address, 0, approve_data(aw.token, aw.recipient, 1))
    assert_error(refused, "TargetNotAllowed", aw.token.address, APPROVE)

    with pytest.raises(PolicyViolation) as refused:
        await aw.wallet.as_wallet(aw.stranger).execute_with_approval(
            aw.token.address, aw.recipient, 1, aw.token.address, 0, b""
        )
    assert_error(refused, "NotAgent", aw.stranger.address)

    await aw.wallet.set_cap(aw.token.address, 1_000 * ONE_MUSD, CapMode.DAILY)
    with pytest.raises(ContractRevertError) as failed:
        await agent_transfer(aw, WALLET_MUSD + 1)  # within the cap, beyond the balance
    assert not isinstance(failed.value, PolicyViolation)
    assert failed.value.error_name == "CallFailed"
    assert await aw.token.balance_of(aw.recipient) == 0


# ---------------------------------------------------------------------- cap windows


async def test_failed_over_cap_transaction_on_chain_changes_nothing(aw: Setup) -> None:
    """Sent with a fixed gas limit (no estimate), the over-cap call is mined and
    reverted: the inner transfer is rolled back with it."""
    await allow_transfers(aw, 100 * ONE_MUSD)
    await agent_transfer(aw, 60 * ONE_MUSD)
    block_before = await aw.chain.w3.eth.block_number

    with pytest.raises(ContractRevertError) as exc:
        await aw.agent.transact(
            aw.as_agent.contract.functions.execute(
                aw.token.address, 0, transfer_data(aw.token, aw.recipient, 50 * ONE_MUSD)
            ),
            gas=500_000,
        )

    assert_error(exc, "CapExceeded", aw.token.address, 50 * ONE_MUSD, 40 * ONE_MUSD)
    assert await aw.chain.w3.eth.block_number == block_before + 1  # it was mined
    assert await aw.token.balance_of(aw.recipient) == 60 * ONE_MUSD
    assert await aw.token.balance_of(aw.address) == WALLET_MUSD - 60 * ONE_MUSD
    assert await aw.wallet.spendable(aw.token.address) == (60 * ONE_MUSD, 40 * ONE_MUSD)


async def test_daily_cap_resets_at_utc_midnight(aw: Setup) -> None:
    cap = 100 * ONE_MUSD
    await allow_transfers(aw, cap, CapMode.DAILY)
    now = await chain_now(aw.chain)
    midnight = (now // DAY + 1) * DAY
    # Spend late in the day, well under 24 hours before midnight.
    await advance_to(aw.chain, midnight - 2 * HOUR)
    receipt = await agent_transfer(aw, cap)
    spent_at = await block_time(aw.chain, receipt)
    assert spent_at // DAY == midnight // DAY - 1

    await advance_to(aw.chain, midnight - 1)
    assert await aw.wallet.spendable(aw.token.address) == (cap, 0)
    with pytest.raises(ContractRevertError) as exc:
        await agent_transfer(aw, 1)
    assert_error(exc, "CapExceeded", aw.token.address, 1, 0)

    await advance_to(aw.chain, midnight)
    assert await aw.wallet.spendable(aw.token.address) == (0, cap)
    await agent_transfer(aw, cap)
    assert await aw.wallet.spendable(aw.token.address) == (cap, 0)
    assert await aw.token.balance_of(aw.recipient) == 2 * cap


async def test_daily_cap_with_advance_time_to_next_day(aw: Setup) -> None:
    cap = 10 * ONE_MUSD
    await allow_transfers(aw, cap, CapMode.DAILY)
    await agent_transfer(aw, cap)
    now = await chain_now(aw.chain)
    assert await aw.wallet.spendable(aw.token.address) == (cap, 0)

    await advance_time(aw.chain, (now // DAY + 1) * DAY - now)

    assert await chain_now(aw.chain) >= (now // DAY + 1) * DAY
    assert await aw.wallet.spendable(aw.token.address) == (0, cap)
    await agent_transfer(aw, cap)
    assert await aw.token.balance_of(aw.recipient) == 2 * cap


async def test_rolling_cap_frees_spending_24_hours_later_not_23(aw: Setup) -> None:
    cap = 100 * ONE_MUSD
    await allow_transfers(aw, cap, CapMode.ROLLING)
    # Start at 23:10 UTC so the window crosses midnight (a Daily cap would reset there).
    now = await chain_now(aw.chain)
    start = (now // DAY + 1) * DAY - HOUR + 600
    await advance_to(aw.chain, start)
    first = await agent_transfer(aw, 30 * ONE_MUSD)
    t1 = await block_time(aw.chain, first)
    await advance_to(aw.chain, t1 + 2 * HOUR)
    await agent_transfer(aw, 50 * ONE_MUSD)
    assert await aw.wallet.spendable(aw.token.address) == (80 * ONE_MUSD, 20 * ONE_MUSD)

    # 23 hours after the first spend (and past midnight): both spends still count.
    await advance_to(aw.chain, t1 + 23 * HOUR)
    assert await aw.wallet.spendable(aw.token.address) == (80 * ONE_MUSD, 20 * ONE_MUSD)
    with pytest.raises(ContractRevertError) as exc:
        await agent_transfer(aw, 20 * ONE_MUSD + 1)
    assert_error(exc, "CapExceeded", aw.token.address, 20 * ONE_MUSD + 1, 20 * ONE_MUSD)

    # Exactly 24 hours after it, the first spend has left the window; the second has not.
    await advance_to(aw.chain, t1 + 24 * HOUR)
    assert await aw.wallet.spendable(aw.token.address) == (50 * ONE_MUSD, 50 * ONE_MUSD)
    await agent_transfer(aw, 50 * ONE_MUSD)
    assert await aw.wallet.spendable(aw.token.address) == (cap, 0)

    # 24 hours after the second spend only the latest one is left.
    await advance_to(aw.chain, t1 + 26 * HOUR)
    assert await aw.wallet.spendable(aw.token.address) == (50 * ONE_MUSD, 50 * ONE_MUSD)
    assert await aw.token.balance_of(aw.recipient) == 130 * ONE_MUSD


async def test_rolling_window_is_exact_to_the_hour_bucket(aw: Setup) -> None:
    cap = 100 * ONE_MUSD
    await allow_transfers(aw, cap, CapMode.ROLLING)
    now = await chain_now(aw.chain)
    hour = now // HOUR + 1
    await advance_to(aw.chain, hour * HOUR + 1_800)  # half past
    receipt = await agent_transfer(aw, cap)
    assert await block_time(aw.chain, receipt) // HOUR == hour

    # The spend sits in its hour's bucket: it leaves when hour + 24 starts.
    await advance_to(aw.chain, (hour + 24) * HOUR - 1)
    assert await aw.wallet.spendable(aw.token.address) == (cap, 0)
    await advance_to(aw.chain, (hour + 24) * HOUR)
    assert await aw.wallet.spendable(aw.token.address) == (0, cap)


async def test_clearing_a_cap_then_setting_it_again_keeps_window_spending(aw: Setup) -> None:
    cap = 100 * ONE_MUSD
    await allow_transfers(aw, cap, CapMode.DAILY)
    await agent_transfer(aw, 70 * ONE_MUSD)

    await aw.wallet.set_cap(aw.token.address, 0, CapMode.NONE)
    await aw.wallet.set_cap(aw.token.address, cap, CapMode.DAILY)

    assert await aw.wallet.spendable(aw.token.address) == (70 * ONE_MUSD, 30 * ONE_MUSD)
    with pytest.raises(ContractRevertError) as exc:
        await agent_transfer(aw, 31 * ONE_MUSD)
    assert_error(exc, "CapExceeded", aw.token.address, 31 * ONE_MUSD, 30 * ONE_MUSD)


async def test_lowering_cap_below_spent_leaves_nothing(aw: Setup) -> None:
    await allow_transfers(aw, 100 * ONE_MUSD, CapMode.DAILY)
    await agent_transfer(aw, 70 * ONE_MUSD)

    await aw.wallet.set_cap(aw.token.address, 50 * ONE_MUSD, CapMode.DAILY)

    assert await aw.wallet.spendable(aw.token.address) == (70 * ONE_MUSD, 0)
    with pytest.raises(ContractRevertError) as exc:
        await agent_transfer(aw, 1)
    assert_error(exc, "CapExceeded", aw.token.address, 1, 0)


async def test_zero_selector_with_payload_is_not_a_plain_transfer(aw: Setup) -> None:
    # (recipient, 0x00000000) allowlists plain ETH transfers only; calldata that merely
    # starts with four zero bytes must not ride on it into the recipient's fallback.
    await aw.wallet.set_cap(NATIVE, ETHER, CapMode.DAILY)
    await aw.wallet.set_allowed(aw.recipient, NO_CALLDATA, True)
    payload = NO_CALLDATA + b"\x01" * 32
    with pytest.raises(ContractRevertError) as exc:
        await aw.as_agent.execute(aw.recipient, 1, payload)
    assert_error(exc, "MalformedCalldata", len(payload))
    receipt = await aw.as_agent.execute(aw.recipient, 1, b"")
    assert receipt["status"] == 1
