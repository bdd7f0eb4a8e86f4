"""MeshUSD (the devnet settlement token) raw and through TokenClient."""

from __future__ import annotations

from typing import Any

import pytest
from web3.types import TxReceipt

from agentmesh.errors import ContractRevertError, InsufficientFundsError
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import ONE_MUSD, WalletFactory, token_for

ZERO = "0x0000000000000000000000000000000000000000"
MAX_UINT = 2**256 - 1


def transfers(token: TokenClient, receipt: TxReceipt) -> list[tuple[str, str, int]]:
    logged = token.contract.events.Transfer().process_receipt(receipt)
    return [(e["args"]["from"], e["args"]["to"], int(e["args"]["value"])) for e in logged]


async def balances(token: TokenClient, *wallets: Wallet) -> list[int]:
    return [await token.balance_of(w.address) for w in wallets]


async def nonce(chain: Chain, wallet: Wallet) -> int:
    return int(await chain.w3.eth.get_transaction_count(wallet.address, "pending"))


def transfer_from(token: TokenClient, owner: str, to: str, amount: int) -> Any:
    return token.contract.functions.transferFrom(owner, to, amount)


async def test_metadata_and_owner(chain: Chain, token: TokenClient, deployer: Wallet) -> None:
    functions = token.contract.functions
    assert await functions.decimals().call() == 6
    assert TokenClient.decimals == 6
    assert await functions.name().call() == "Mesh USD"
    assert await functions.symbol().call() == "mUSD"
    assert await functions.symbol().call() == TokenClient.symbol
    assert await functions.owner().call() == deployer.address
    assert token.address == chain.token_address


async def test_owner_mints(chain: Chain, token: TokenClient, make_wallet: WalletFactory) -> None:
    alice = await make_wallet(musd=0)
    supply = await token.total_supply()

    receipt = await token.mint(alice.address, 1_234_567)

    assert await token.balance_of(alice.address) == 1_234_567
    assert await token.total_supply() == supply + 1_234_567
    assert transfers(token, receipt) == [(ZERO, alice.address, 1_234_567)]


async def test_stranger_cannot_mint(
    chain: Chain, token: TokenClient, make_wallet: WalletFactory
) -> None:
    stranger = await make_wallet(musd=0)
    supply = await token.total_supply()

    with pytest.raises(ContractRevertError) as exc:
        await token_for(chain, stranger).mint(stranger.address, 10**6 * ONE_MUSD)
    assert exc.value.error_name == "OwnableUnauthorizedAccount"
    assert exc.value.error_args == (stranger.address,)

    assert await token.balance_of(stranger.address) == 0
    assert await token.total_supply() == supply


async def test_transfer_moves_balance(chain: Chain, make_wallet: WalletFactory) -> None:
    alice, bob = await make_wallet(musd=100), await make_wallet(musd=0)
    token = token_for(chain, alice)
    supply = await token.total_supply()

    receipt = await token.transfer(bob.address, 40 * ONE_MUSD + 5)

    assert await balances(token, alice, bob) == [60 * ONE_MUSD - 5, 40 * ONE_MUSD + 5]
    assert transfers(token, receipt) == [(alice.address, bob.address, 40 * ONE_MUSD + 5)]
    assert await token.total_supply() == supply

    # Spending exactly the whole balance is allowed (the pre-check is not off by one).
    await token.transfer(bob.address, 60 * ONE_MUSD - 5)
    assert await balances(token, alice, bob) == [0, 100 * ONE_MUSD]


async def test_raw_transfer_beyond_balance_reverts(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    alice, bob = await make_wallet(musd=5), await make_wallet(musd=0)
    token = token_for(chain, alice)
    needed = 5 * ONE_MUSD + 1

    with pytest.raises(ContractRevertError) as exc:
        await alice.transact(token.contract.functions.transfer(bob.address, needed))
    assert exc.value.error_name == "ERC20InsufficientBalance"
    assert exc.value.error_args == (alice.address, 5 * ONE_MUSD, needed)
    assert await balances(token, alice, bob) == [5 * ONE_MUSD, 0]


async def test_client_transfer_beyond_balance_fails_before_sending(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    alice, bob = await make_wallet(musd=5), await make_wallet(musd=3)
    token = token_for(chain, alice)
    nonce_before = await nonce(chain, alice)
    block_before = await chain.w3.eth.block_number

    with pytest.raises(InsufficientFundsError) as exc:
        await token.transfer(bob.address, 5 * ONE_MUSD + 1)
    assert not isinstance(exc.value, ContractRevertError)
    assert alice.address in exc.value.user_message
    assert "mUSD" in exc.value.user_message

    # Nothing was sent: no nonce used, no block mined, balances as they were.
    assert await nonce(chain, alice) == nonce_before
    assert await chain.w3.eth.block_number == block_before
    assert await balances(token, alice, bob) == [5 * ONE_MUSD, 3 * ONE_MUSD]


async def test_transfer_to_zero_address_reverts(chain: Chain, make_wallet: WalletFactory) -> None:
    alice = await make_wallet(musd=10)
    token = token_for(chain, alice)
    supply = await token.total_supply()

    with pytest.raises(ContractRevertError) as exc:
        await alice.transact(token.contract.functions.transfer(ZERO, ONE_MUSD))
    assert exc.value.error_name == "ERC20InvalidReceiver"
    assert exc.value.error_args == (ZERO,)

    with pytest.raises(ContractRevertError) as exc:
        await token.transfer(ZERO, ONE_MUSD)
    assert exc.value.error_name == "ERC20InvalidReceiver"
    assert exc.value.error_args == (ZERO,)

    assert await token.balance_of(alice.address) == 10 * ONE_MUSD
    assert await token.total_supply() == supply


async def test_approve_and_transfer_from(chain: Chain, make_wallet: WalletFactory) -> None:
    owner, spender, receiver = (
        await make_wallet(musd=100),
        await make_wallet(musd=0),
        await make_wallet(musd=0),
    )
    owner_token, spender_token = token_for(chain, owner), token_for(chain, spender)
    assert await owner_token.allowance(owner.address, spender.address) == 0

    receipt = await owner_token.approve(spender.address, 30 * ONE_MUSD)
    approvals = owner_token.contract.events.Approval().process_receipt(receipt)
    assert [(e["args"]["owner"], e["args"]["spender"], e["args"]["value"]) for e in approvals] == [
        (owner.address, spender.address, 30 * ONE_MUSD)
    ]
    assert await owner_token.allowance(owner.address, spender.address) == 30 * ONE_MUSD
    # Allowance is directional.
    assert await owner_token.allowance(spender.address, owner.address) == 0

    receipt = await spender.transact(
        transfer_from(spender_token, owner.address, receiver.address, 12 * ONE_MUSD)
    )
    assert transfers(spender_token, receipt) == [(owner.address, receiver.address, 12 * ONE_MUSD)]
    assert await balances(spender_token, owner, spender, receiver) == [
        88 * ONE_MUSD,
        0,
        12 * ONE_MUSD,
    ]
    assert await owner_token.allowance(owner.address, spender.address) == 18 * ONE_MUSD

    # Spending the exact remainder leaves zero.
    await spender.transact(
        transfer_from(spender_token, owner.address, receiver.address, 18 * ONE_MUSD)
    )
    assert await owner_token.allowance(owner.address, spender.address) == 0
    assert await balances(spender_token, owner, receiver) == [70 * ONE_MUSD, 30 * ONE_MUSD]

    # A new approve overwrites rather than adds.
    await owner_token.approve(spender.address, 7)
    await owner_token.approve(spender.address, 3)
    assert await owner_token.allowance(owner.address, spender.address) == 3


async def test_transfer_from_beyond_allowance_reverts(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    owner, spender = await make_wallet(musd=100), await make_wallet(musd=0)
    owner_token, spender_token = token_for(chain, owner), token_for(chain, spender)
    await owner_token.approve(spender.address, 10 * ONE_MUSD)

    with pytest.raises(ContractRevertError) as exc:
        await spender.transact(
            transfer_from(spender_token, owner.address, spender.address, 10 * ONE_MUSD + 1)
        )
    assert exc.value.error_name == "ERC20InsufficientAllowance"
    assert exc.value.error_args == (spender.address, 10 * ONE_MUSD, 10 * ONE_MUSD + 1)

    # Without any approval at all.
    stranger = await make_wallet(musd=0)
    with pytest.raises(ContractRevertError) as exc:
        await stranger.transact(
            transfer_from(token_for(chain, stranger), owner.address, stranger.address, 1)
        )
    assert exc.value.error_name == "ERC20InsufficientAllowance"
    assert exc.value.error_args == (stranger.address, 0, 1)

    assert await balances(owner_token, owner, spender, stranger) == [100 * ONE_MUSD, 0, 0]
    assert await owner_token.allowance(owner.address, spender.address) == 10 * ONE_MUSD


async def test_transfer_from_within_allowance_but_beyond_balance_reverts(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    owner, spender = await make_wallet(musd=2), await make_wallet(musd=0)
    owner_token, spender_token = token_for(chain, owner), token_for(chain, spender)
    await owner_token.approve(spender.address, 50 * ONE_MUSD)

    with pytest.raises(ContractRevertError) as exc:
        await spender.transact(
            transfer_from(spender_token, owner.address, spender.address, 3 * ONE_MUSD)
        )
    assert exc.value.error_name == "ERC20InsufficientBalance"
    assert exc.value.error_args == (owner.address, 2 * ONE_MUSD, 3 * ONE_MUSD)
    assert await owner_token.allowance(owner.address, spender.address) == 50 * ONE_MUSD
    assert await balances(owner_token, owner, spender) == [2 * ONE_MUSD, 0]


async def test_infinite_allowance_is_not_decreased(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    owner, spender = await make_wallet(musd=100), await make_wallet(musd=0)
    owner_token, spender_token = token_for(chain, owner), token_for(chain, spender)
    await owner_token.approve(spender.address, MAX_UINT)

    await spender.transact(
        transfer_from(spender_token, owner.address, spender.address, 25 * ONE_MUSD)
    )
    assert await owner_token.allowance(owner.address, spender.address) == MAX_UINT
    assert await balances(owner_token, owner, spender) == [75 * ONE_MUSD, 25 * ONE_MUSD]


async def test_approve_and_transfer_from_to_zero_address_revert(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    owner, spender = await make_wallet(musd=10), await make_wallet(musd=0)
    owner_token, spender_token = token_for(chain, owner), token_for(chain, spender)

    with pytest.raises(ContractRevertError) as exc:
        await owner_token.approve(ZERO, ONE_MUSD)
    assert exc.value.error_name == "ERC20InvalidSpender"
    assert exc.value.error_args == (ZERO,)

    await owner_token.approve(spender.address, 5 * ONE_MUSD)
    with pytest.raises(ContractRevertError) as exc:
        await spender.transact(transfer_from(spender_token, owner.address, ZERO, ONE_MUSD))
    assert exc.value.error_name == "ERC20InvalidReceiver"
    assert exc.value.error_args == (ZERO,)
    assert await owner_token.allowance(owner.address, spender.address) == 5 * ONE_MUSD
    assert await owner_token.balance_of(owner.address) == 10 * ONE_MUSD
