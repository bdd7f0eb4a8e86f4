"""Wallet signing and sending on a real anvil; revert decoding; addresses; amounts."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from eth_utils import function_signature_to_4byte_selector
from multidict import CIMultiDict, CIMultiDictProxy
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.types import Wei
from yarl import URL

from agentmesh.errors import (
    AgentMeshValueError,
    ChainUnavailableError,
    ContractRevertError,
    FeeCapError,
    InsufficientFundsError,
    InvalidAddressError,
    TransactionError,
)
from agentmesh.wallets import sending
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient, checksum
from agentmesh.wallets.reverts import decode_revert
from agentmesh.wallets.sending import (
    Attempt,
    Pending,
    TxPolicy,
    next_base_fee,
    set_tx_policy,
    suggested_tip,
    tx_policy,
)
from agentmesh.wallets.units import (
    ETH_DECIMALS,
    MUSD_DECIMALS,
    format_amount,
    parse_amount,
)
from agentmesh.wallets.wallet import (
    INTRINSIC_GAS,
    Wallet,
    guard_rpc,
    reset_nonces,
    revert_from,
)
from tests.helpers import ONE_MUSD, WalletFactory, escrow_for, eventually, rpc, token_for

ETHER = 10**18
GWEI = 10**9


async def _chain_nonce(chain: Chain, address: str, block: str = "latest") -> int:
    return int(await chain.w3.eth.get_transaction_count(address, block))  # type: ignore[arg-type]


async def _tx_nonce(chain: Chain, receipt: Any) -> int:
    tx = await chain.w3.eth.get_transaction(receipt["transactionHash"])
    return int(tx["nonce"])


async def _send_behind_the_managers_back(chain: Chain, wallet: Wallet) -> None:
    """Use up the account's next nonce with a transaction the nonce manager never sees."""
    nonce = await _chain_nonce(chain, wallet.address, "pending")
    block = await chain.w3.eth.get_block("latest")
    tx = {
        "to": wallet.address,
        "value": 1,
        "gas": 21_000,
        "maxFeePerGas": int(block["baseFeePerGas"]) * 2 + 10**9,
        "maxPriorityFeePerGas": 10**9,
        "nonce": nonce,
        "chainId": await chain.w3.eth.chain_id,
    }
    signed = wallet.account.sign_transaction(tx)
    tx_hash = await chain.w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = await chain.w3.eth.wait_for_transaction_receipt(tx_hash)
    assert receipt["status"] == 1


async def _answer(value: int) -> int:
    return value


class _Eth:
    """Stands in for one wallet's ``w3.eth``: what a subclass overrides, else the node's."""

    def __init__(self, eth: Any) -> None:
        self._eth = eth

    def __getattr__(self, name: str) -> Any:
        return getattr(self._eth, name)


class _AnswerLost(_Eth):
    """The first ``send_raw_transaction`` reaches the node, but its answer never comes
    back (the sender is cancelled while it waits); later ones are answered."""

    def __init__(self, eth: Any) -> None:
        super().__init__(eth)
        self.submitted = asyncio.Event()

    async def send_raw_transaction(self, raw: bytes) -> Any:
        tx_hash = await self._eth.send_raw_transaction(raw)
        if not self.submitted.is_set():
            self.submitted.set()
            await asyncio.Event().wait()
        return tx_hash


class _RefusedEstimate(_Eth):
    """``estimate_gas`` fails with the node error ``message`` (raised as web3 raises it)."""

    def __init__(self, eth: Any, message: str) -> None:
        super().__init__(eth)
        self._message = message

    async def estimate_gas(self, *_args: Any, **_kwargs: Any) -> int:
        raise Web3RPCError(repr({"code": -32000, "message": self._message}))


class _Node:
    """An ``AsyncWeb3`` whose ``eth`` is the given stand-in; the rest is the real one's."""

    def __init__(self, w3: AsyncWeb3[Any], eth: _Eth) -> None:
        self._w3 = w3
        self.eth = eth

    def __getattr__(self, name: str) -> Any:
        return getattr(self._w3, name)


def _wallet_on(chain: Chain, wallet: Wallet, eth: _Eth) -> Wallet:
    """``wallet``'s account, talking to the chain through ``eth``."""
    return Wallet(wallet.account, cast("AsyncWeb3[Any]", _Node(chain.w3, eth)))


def _node_refusing(
    monkeypatch: pytest.MonkeyPatch, chain: Chain, refused: dict[str, str]
) -> list[str]:
    """Make the node refuse the JSON-RPC methods in ``refused``: "reply" answers "method
    not found" (a node without the debug API), "http" raises what the provider raises on
    an HTTP 403 (a gateway blocking the method). Returns every method asked from then on."""
    provider = chain.w3.provider
    make_request = provider.make_request
    asked: list[str] = []

    async def refusing(method: Any, params: Any) -> Any:
        asked.append(str(method))
        refusal = refused.get(str(method))
        if refusal == "reply":
            return {"jsonrpc": "2.0", "id": 0, "error": {"code": -32601, "message": "not found"}}
        if refusal == "http":
            url = URL(chain.rpc_url)
            request = aiohttp.RequestInfo(url, "POST", CIMultiDictProxy(CIMultiDict()), url)
            raise aiohttp.ClientResponseError(request, (), status=403, message="Forbidden")
        return await make_request(method, params)

    monkeypatch.setattr(provider, "make_request", refusing)
    return asked


# ---------------------------------------------------------------- signing


def test_sign_message_recovers_to_the_address() -> None:
    wallet = Wallet(Account.create(), None)  # type: ignore[arg-type]

    for message in ("hello mesh", "", "ünïcødé ✓"):
        signature = wallet.sign_message(message)
        recovered = Account.recover_message(encode_defunct(text=message), signature=signature)
        assert len(signature) == 65
        assert recovered == wallet.address

    raw = b"\x00\x01binary\xff"
    recovered = Account.recover_message(
        encode_defunct(primitive=raw), signature=wallet.sign_message(raw)
    )
    assert recovered == wallet.address
    # str and its utf-8 bytes sign the same payload.
    assert wallet.sign_message("abc") == wallet.sign_message(b"abc")


def test_sign_message_by_other_key_does_not_recover() -> None:
    wallet = Wallet(Account.create(), None)  # type: ignore[arg-type]
    other = Wallet(Account.create(), None)  # type: ignore[arg-type]

    signature = other.sign_message("hello")

    assert Account.recover_message(encode_defunct(text="hello"), signature=signature) != (
        wallet.address
    )


TYPED_DOMAIN = {
    "name": "agentmesh",
    "version": "1",
    "chainId": 31337,
    "verifyingContract": "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC",
}
TYPED_TYPES = {
    "Voucher": [
        {"name": "channel", "type": "bytes32"},
        {"name": "payee", "type": "address"},
        {"name": "amount", "type": "uint256"},
        {"name": "memo", "type": "string"},
    ]
}


def _voucher(amount: int) -> dict[str, Any]:
    return {
        "channel": b"\x11" * 32,
        "payee": "0x000000000000000000000000000000000000dEaD",
        "amount": amount,
        "memo": "job 7",
    }


def test_sign_typed_data_recovers_to_the_address() -> None:
    wallet = Wallet(Account.create(), None)  # type: ignore[arg-type]

    signature = wallet.sign_typed_data(TYPED_DOMAIN, TYPED_TYPES, _voucher(5))

    signable = encode_typed_data(
        domain_data=TYPED_DOMAIN, message_types=TYPED_TYPES, message_data=_voucher(5)
    )
    assert Account.recover_message(signable, signature=signature) == wallet.address
    # The signature binds the message: another amount recovers to someone else.
    tampered = encode_typed_data(
        domain_data=TYPED_DOMAIN, message_types=TYPED_TYPES, message_data=_voucher(6)
    )
    assert Account.recover_message(tampered, signature=signature) != wallet.address
    # ... and the domain: another chain id recovers to someone else.
    other_domain = encode_typed_data(
        domain_data={**TYPED_DOMAIN, "chainId": 1},
        message_types=TYPED_TYPES,
        message_data=_voucher(5),
    )
    assert Account.recover_message(other_domain, signature=signature) != wallet.address


# ---------------------------------------------------------------- sending, nonces


async def test_concurrent_transfers_from_one_wallet(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    sender = await make_wallet(musd=100)
    recipient = Account.create().address
    token = token_for(chain, sender)
    start_nonce = await _chain_nonce(chain, sender.address)
    count = 32

    receipts = await asyncio.gather(
        *(token.transfer(recipient, (i + 1) * ONE_MUSD // 100) for i in range(count))
    )

    assert all(r["status"] == 1 for r in receipts)
    nonces = sorted([await _tx_nonce(chain, r) for r in receipts])
    assert nonces == list(range(start_nonce, start_nonce + count))
    assert await _chain_nonce(chain, sender.address) == start_nonce + count
    sent = sum((i + 1) * ONE_MUSD // 100 for i in range(count))
    assert await token.balance_of(recipient) == sent
    assert await token.balance_of(sender.address) == 100 * ONE_MUSD - sent


async def test_concurrent_transfers_from_two_wallet_objects_of_one_account(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    first = await make_wallet(musd=100)
    second = Wallet(first.account, chain.w3, name="twin")
    recipient = Account.create().address
    start_nonce = await _chain_nonce(chain, first.address)
    clients = [token_for(chain, first), token_for(chain, second)]

    receipts = await asyncio.gather(
        *(clients[i % 2].transfer(recipient, ONE_MUSD) for i in range(34))
    )

    nonces = sorted([await _tx_nonce(chain, r) for r in receipts])
    assert nonces == list(range(start_nonce, start_nonce + 34))
    assert await clients[0].balance_of(recipient) == 34 * ONE_MUSD
    assert await clients[1].balance_of(first.address) == 66 * ONE_MUSD


async def test_concurrent_sends_from_several_wallets(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    wallets = [await make_wallet(eth=1, musd=0) for _ in range(3)]
    sink = Account.create().address

    await asyncio.gather(
        *(w.send({"to": sink, "value": 1000 + i}) for i in range(10) for w in wallets)
    )

    assert await chain.w3.eth.get_balance(sink) == 3 * sum(1000 + i for i in range(10))
    for wallet in wallets:
        assert await _chain_nonce(chain, wallet.address) == 10


async def test_nonce_manager_resyncs_after_node_rejection(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    wallet = await make_wallet(eth=1, musd=0)
    sink = Account.create().address
    await wallet.send({"to": sink, "value": 1})  # the manager now counts locally
    await _send_behind_the_managers_back(chain, wallet)
    chain_nonce = await _chain_nonce(chain, wallet.address)
    assert chain_nonce == 2

    # The manager's stale nonce (1) is already used: the node refuses the transaction.
    with pytest.raises(TransactionError) as info:
        await wallet.send({"to": sink, "value": 2})
    assert not isinstance(info.value, ContractRevertError)
    assert "rejected by the node" in info.value.user_message
    assert await _chain_nonce(chain, wallet.address) == chain_nonce

    receipt = await wallet.send({"to": sink, "value": 3})

    assert receipt["status"] == 1
    assert await _tx_nonce(chain, receipt) == chain_nonce
    assert await chain.w3.eth.get_balance(sink) == 1 + 3


async def test_reset_nonces_makes_the_next_send_ask_the_chain(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    wallet = await make_wallet(eth=1, musd=0)
    sink = Account.create().address
    await wallet.send({"to": sink, "value": 1})
    await _send_behind_the_managers_back(chain, wallet)

    reset_nonces(chain.w3)
    receipt = await wallet.send({"to": sink, "value": 2})

    assert receipt["status"] == 1
    assert await _tx_nonce(chain, receipt) == 2
    assert await _chain_nonce(chain, wallet.address) == 3


async def test_send_cancelled_after_the_node_got_it_resyncs_the_nonce(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    eth = _AnswerLost(chain.w3.eth)
    wallet = _wallet_on(chain, await make_wallet(eth=1, musd=0), eth)
    sink = Account.create().address

    sending = asyncio.create_task(wallet.send({"to": sink, "value": Wei(1)}))
    await asyncio.wait_for(eth.submitted.wait(), timeout=10)
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    # Nonce 0 was used after all (the node mines it as it answers; under load the
    # answer can beat the block by a moment, so give it that moment).
    assert await eventually(lambda: _chain_nonce(chain, wallet.address), lambda n: n == 1) == 1

    receipt = await wallet.send({"to": sink, "value": Wei(2)})

    assert await _tx_nonce(chain, receipt) == 1
    assert await chain.w3.eth.get_balance(sink) == 1 + 2


# ---------------------------------------------------------------- fees


async def test_sent_transaction_offers_twice_the_next_base_fee_plus_the_nodes_tip(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    wallet = await make_wallet(eth=1, musd=0)
    base = await next_base_fee(chain.w3)
    tip = await suggested_tip(chain.w3)
    sending._fees.pop(chain.w3, None)  # no estimate cached from before

    receipt = await wallet.send({"to": Account.create().address, "value": Wei(1)})

    tx = await chain.w3.eth.get_transaction(receipt["transactionHash"])
    assert base > 0 and tip > 0
    assert (tx["maxFeePerGas"], tx["maxPriorityFeePerGas"]) == (2 * base + tip, tip)


async def test_fees_stop_at_the_cap_and_a_base_fee_above_it_is_refused(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    funded = await make_wallet(eth=1, musd=0)
    base = await next_base_fee(chain.w3)
    tip = await suggested_tip(chain.w3)
    capped = _wallet_on(chain, funded, _Eth(chain.w3.eth))
    cap = base + tip // 2  # room for the base fee and half the tip
    set_tx_policy(capped.w3, TxPolicy(max_fee_per_gas=cap))

    receipt = await capped.send({"to": Account.create().address, "value": Wei(1)})
    tx = await chain.w3.eth.get_transaction(receipt["transactionHash"])
    assert (tx["maxFeePerGas"], tx["maxPriorityFeePerGas"]) == (cap, cap - base)

    broke = _wallet_on(chain, funded, _Eth(chain.w3.eth))
    set_tx_policy(broke.w3, TxPolicy(max_fee_per_gas=base // 2))
    nonce = await _chain_nonce(chain, funded.address, "pending")
    with pytest.raises(FeeCapError) as info:
        await broke.send({"to": Account.create().address, "value": Wei(1)})
    assert "at or above this agent's cap" in info.value.user_message
    assert "max_fee_gwei" in info.value.user_message
    assert await _chain_nonce(chain, funded.address, "pending") == nonce  # nothing sent


async def test_fee_estimate_is_asked_again_only_once_its_ttl_has_passed(
    chain: Chain, make_wallet: WalletFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    wallet = _wallet_on(chain, await make_wallet(eth=1, musd=0), _Eth(chain.w3.eth))
    clock = SimpleNamespace(now=1_000.0)
    monkeypatch.setattr(
        "agentmesh.wallets.sending.time", SimpleNamespace(monotonic=lambda: clock.now)
    )
    asked = []
    real = sending.next_base_fee

    async def counted(w3: Any) -> int:
        asked.append(clock.now)
        return await real(w3)

    monkeypatch.setattr(sending, "next_base_fee", counted)
    sink = Account.create().address
    seen = []
    for offset in (0.0, sending.FEE_TTL_S / 2, sending.FEE_TTL_S, sending.FEE_TTL_S * 1.25):
        clock.now = 1_000.0 + offset
        await wallet.send({"to": sink, "value": Wei(1)})
        seen.append(len(asked))

    # The estimate asked at t serves every send up to t + FEE_TTL_S inclusive.
    assert seen == [1, 1, 1, 2]


# ---------------------------------------------------------------- failures


async def test_revert_names_the_custom_error(chain: Chain, make_wallet: WalletFactory) -> None:
    stranger = await make_wallet(eth=1, musd=0)
    token = token_for(chain, stranger)
    supply = await token.total_supply()

    with pytest.raises(ContractRevertError) as info:
        await token.mint(stranger.address, ONE_MUSD)

    error = info.value
    assert error.error_name == "OwnableUnauthorizedAccount"
    assert error.error_args == (stranger.address,)
    assert f"OwnableUnauthorizedAccount({stranger.address})" in error.user_message
    assert await token.total_supply() == supply
    assert await _chain_nonce(chain, stranger.address) == 0  # refused before sending


async def test_mined_revert_is_replayed_and_named(chain: Chain, make_wallet: WalletFactory) -> None:
    stranger = await make_wallet(eth=1, musd=0)
    token = token_for(chain, stranger)
    mint = token.contract.functions.mint(stranger.address, ONE_MUSD)

    # An explicit gas limit skips the estimate, so the transaction is mined and fails.
    with pytest.raises(ContractRevertError) as info:
        await stranger.transact(mint, gas=200_000)

    assert info.value.error_name == "OwnableUnauthorizedAccount"
    assert info.value.error_args == (stranger.address,)
    assert await _chain_nonce(chain, stranger.address) == 1  # it was mined
    # The nonce manager is still in step with the chain.
    receipt = await stranger.send({"to": stranger.address, "value": 1})
    assert await _tx_nonce(chain, receipt) == 1


async def test_erc20_revert_on_transfer_beyond_allowance(
    chain: Chain, make_wallet: WalletFactory, token: TokenClient
) -> None:
    owner = await make_wallet(musd=5)
    spender = await make_wallet(musd=0)
    spender_token = token_for(chain, spender)
    pull = spender_token.contract.functions.transferFrom(owner.address, spender.address, 1)

    with pytest.raises(ContractRevertError) as info:
        await spender.transact(pull)

    assert info.value.error_name == "ERC20InsufficientAllowance"
    assert info.value.error_args == (spender.address, 0, 1)


async def test_eth_beyond_balance_is_refused_before_sending(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    wallet = await make_wallet(eth=1, musd=0)
    sink = Account.create().address
    balance = await wallet.eth_balance()

    with pytest.raises(InsufficientFundsError) as info:
        await wallet.send({"to": sink, "value": 2 * ETHER})

    assert wallet.address in info.value.user_message
    assert isinstance(info.value, AgentMeshValueError)
    assert await _chain_nonce(chain, wallet.address, "pending") == 0
    assert await wallet.eth_balance() == balance
    assert await chain.w3.eth.get_balance(sink) == 0


async def test_whole_balance_leaves_nothing_for_gas(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    wallet = await make_wallet(eth=1, musd=0)
    sink = Account.create().address
    balance = await wallet.eth_balance()

    with pytest.raises(InsufficientFundsError) as info:
        await wallet.send({"to": sink, "value": balance})

    assert wallet.address in info.value.user_message
    assert "holds" in info.value.user_message
    assert await _chain_nonce(chain, wallet.address, "pending") == 0
    # The wallet can still send what it can afford afterwards.
    receipt = await wallet.send({"to": sink, "value": balance // 2})
    assert await _tx_nonce(chain, receipt) == 0
    assert await chain.w3.eth.get_balance(sink) == balance // 2


async def test_token_transfer_beyond_balance_is_refused_before_sending(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    wallet = await make_wallet(musd=3)
    token = token_for(chain, wallet)

    with pytest.raises(InsufficientFundsError) as info:
        await token.transfer(Account.create().address, 4 * ONE_MUSD)

    assert "holds 3 mUSD" in info.value.user_message
    assert "cannot spend 4 mUSD" in info.value.user_message
    assert await _chain_nonce(chain, wallet.address, "pending") == 0


async def test_balance_of_exactly_value_plus_max_fee_may_send(
    chain: Chain, deployer: Wallet
) -> None:
    wallet = Wallet(Account.create(), chain.w3)
    sink = Account.create().address
    block = await chain.w3.eth.get_block("latest")
    max_fee = 2 * int(block["baseFeePerGas"]) + GWEI
    value = 12_345
    cost = value + INTRINSIC_GAS * max_fee
    tx: Any = {
        "to": sink,
        "value": value,
        "gas": INTRINSIC_GAS,
        "maxFeePerGas": max_fee,
        "maxPriorityFeePerGas": GWEI,
    }
    await deployer.send({"to": wallet.address, "value": Wei(cost - 1)})

    with pytest.raises(InsufficientFundsError):  # one wei short: refused before sending
        await wallet.send(tx)
    assert await _chain_nonce(chain, wallet.address, "pending") == 0

    await deployer.send({"to": wallet.address, "value": Wei(1)})
    receipt = await wallet.send(tx)

    assert receipt["status"] == 1
    assert await chain.w3.eth.get_balance(sink) == value
    paid = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert await wallet.eth_balance() == cost - value - paid


async def test_receipt_that_never_comes_is_a_transaction_error(chain: Chain) -> None:
    wallet = Wallet(Account.create(), chain.w3)
    tx_hash = os.urandom(32)  # a transaction the node never mines
    pending = Pending(
        wallet,
        {"nonce": 0},
        [Attempt(tx_hash, b"", (GWEI, GWEI))],
        policy=TxPolicy(timeout_s=1, replace_after_s=60),
    )

    with pytest.raises(TransactionError) as info:
        await pending.settle()

    assert not isinstance(info.value, ContractRevertError)
    assert info.value.user_message == (
        f"0x{tx_hash.hex()} (nonce 0) is not mined and confirmed yet after 1s; "
        "it may still be mined"
    )


async def test_estimate_refused_by_the_node_is_a_transaction_error(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    refusal = "gas required exceeds allowance (21000)"
    wallet = _wallet_on(
        chain, await make_wallet(eth=1, musd=0), _RefusedEstimate(chain.w3.eth, refusal)
    )

    with pytest.raises(TransactionError) as info:
        await wallet.send({"to": Account.create().address, "value": Wei(1)})

    assert not isinstance(info.value, ContractRevertError | InsufficientFundsError)
    assert info.value.user_message.startswith("transaction would fail: ")
    assert refusal in info.value.user_message
    assert await _chain_nonce(chain, wallet.address, "pending") == 0


async def test_estimate_refused_for_lack_of_funds_names_the_balance(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    refusal = "insufficient funds for gas * price + value: have 1 want 2"
    wallet = _wallet_on(
        chain, await make_wallet(eth=1, musd=0), _RefusedEstimate(chain.w3.eth, refusal)
    )

    with pytest.raises(InsufficientFundsError) as info:
        await wallet.send({"to": Account.create().address, "value": Wei(2 * ETHER)})

    assert f"{wallet.address} holds 1 ETH" in info.value.user_message
    assert await _chain_nonce(chain, wallet.address, "pending") == 0


async def test_revert_without_data_carries_the_nodes_message(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    wallet = await make_wallet(eth=1, musd=0)

    # MeshUSD has no receive(): sending it ETH reverts without any error data.
    with pytest.raises(ContractRevertError) as info:
        await wallet.send({"to": chain.token_address, "value": Wei(1)})

    assert info.value.error_name is None
    assert info.value.user_message == "transaction reverted: execution reverted"


def test_revert_from_keeps_the_nodes_message_not_the_data() -> None:
    error = revert_from(ContractLogicError("execution reverted: paused", data="0x"))

    assert error.error_name is None
    assert error.user_message == "transaction reverted: execution reverted: paused"


# ---------------------------------------------------------------- mined reverts
# A transaction sent with its own gas limit skips the estimate: it is mined and fails.
# The wallet asks the node for its trace, or, where the node has no debug_traceTransaction,
# replays the call on the state before its block, at that block's time and number.

NO_DEBUG = {"debug_traceTransaction": "reply"}


@pytest.mark.parametrize("refusal", ["reply", "http"], ids=["method-not-found", "http-403"])
async def test_mined_revert_is_named_by_the_replay_without_debug_trace(
    chain: Chain, make_wallet: WalletFactory, monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    stranger = await make_wallet(eth=1, musd=0)
    mint = token_for(chain, stranger).contract.functions.mint(stranger.address, ONE_MUSD)
    asked = _node_refusing(monkeypatch, chain, {"debug_traceTransaction": refusal})

    with pytest.raises(ContractRevertError) as info:
        await stranger.transact(mint, gas=200_000)

    assert info.value.error_name == "OwnableUnauthorizedAccount"
    assert info.value.error_args == (stranger.address,)
    assert "debug_traceTransaction" in asked
    assert "eth_call" in asked
    assert await _chain_nonce(chain, stranger.address) == 1  # it was mined


async def test_replay_names_an_error_without_arguments(
    chain: Chain, make_wallet: WalletFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_wallet(eth=1, musd=0)
    open_nothing = escrow_for(chain, client).contract.functions.open(
        Account.create().address,
        chain.token_address,
        0,  # ZeroAmount(): revert data is the 4-byte selector alone
        2**40,
        3_600,
        Account.create().address,
        bytes(32),
    )
    _node_refusing(monkeypatch, chain, NO_DEBUG)

    with pytest.raises(ContractRevertError) as info:
        await client.transact(open_nothing, gas=300_000)

    assert (info.value.error_name, info.value.error_args) == ("ZeroAmount", ())


async def test_replay_runs_on_the_state_just_before_the_failed_block(
    chain: Chain, make_wallet: WalletFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    wallet = await make_wallet(eth=1, musd=5)
    token = token_for(chain, wallet)
    sink = Account.create().address
    await token.transfer(sink, 5 * ONE_MUSD)  # the block before empties the balance
    _node_refusing(monkeypatch, chain, NO_DEBUG)

    with pytest.raises(ContractRevertError) as info:
        await wallet.transact(token.contract.functions.transfer(sink, 1), gas=100_000)

    assert info.value.error_name == "ERC20InsufficientBalance"
    assert info.value.error_args == (wallet.address, 0, 1)


async def test_wait_replays_a_call_given_without_value_as_value_zero(
    chain: Chain, make_wallet: WalletFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """wait(tx_hash, tx) for a transaction sent by other means, described without value."""
    stranger = await make_wallet(eth=1, musd=0)
    mint = token_for(chain, stranger).contract.functions.mint(stranger.address, ONE_MUSD)
    call = {"from": stranger.address, "to": mint.address, "data": mint._encode_transaction_data()}
    block = await chain.w3.eth.get_block("latest")
    signed = stranger.account.sign_transaction(
        {
            "to": call["to"],
            "data": call["data"],
            "value": 0,
            "gas": 200_000,
            "maxFeePerGas": int(block["baseFeePerGas"]) * 2 + GWEI,
            "maxPriorityFeePerGas": GWEI,
            "nonce": 0,
            "chainId": await chain.w3.eth.chain_id,
        }
    )
    tx_hash = await chain.w3.eth.send_raw_transaction(signed.raw_transaction)
    _node_refusing(monkeypatch, chain, NO_DEBUG)

    with pytest.raises(ContractRevertError) as info:
        await stranger.wait(bytes(tx_hash), call)

    assert info.value.error_name == "OwnableUnauthorizedAccount"


async def test_replay_that_fails_too_still_reports_the_failed_transaction(
    chain: Chain, make_wallet: WalletFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    stranger = await make_wallet(eth=1, musd=0)
    mint = token_for(chain, stranger).contract.functions.mint(stranger.address, ONE_MUSD)
    _node_refusing(monkeypatch, chain, {"debug_traceTransaction": "reply", "eth_call": "http"})

    with pytest.raises(ContractRevertError) as info:
        await stranger.transact(mint, gas=200_000)

    assert info.value.error_name is None
    assert info.value.user_message.startswith("transaction reverted: status 0 (403")
    assert await _chain_nonce(chain, stranger.address) == 1


async def test_out_of_gas_is_reported_as_such(chain: Chain, make_wallet: WalletFactory) -> None:
    wallet = await make_wallet(eth=1, musd=5)
    token = token_for(chain, wallet)

    # Enough gas to be mined, too little to run: the trace has no output and the replay
    # (with the node's own gas limit) passes.
    transfer = token.contract.functions.transfer(Account.create().address, 1)
    with pytest.raises(ContractRevertError) as info:
        await wallet.transact(transfer, gas=30_000)

    assert info.value.error_name is None
    assert info.value.user_message == "transaction reverted: status 0 in receipt (out of gas?)"
    assert await _chain_nonce(chain, wallet.address) == 1
    assert await token.balance_of(wallet.address) == 5 * ONE_MUSD


async def test_revert_decided_by_an_earlier_transaction_of_its_block_is_named(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    """Only the trace sees the state inside a block: replayed on the state before the
    block, the failed transfer below would pass."""
    wallet = await make_wallet(eth=1, musd=5)
    token = token_for(chain, wallet)
    sink = Account.create().address

    async def pending() -> int:
        return await _chain_nonce(chain, wallet.address, "pending")

    def reached(count: int) -> Callable[[int], bool]:
        return lambda seen: seen == count

    await rpc(chain, "evm_setAutomine", False)
    tasks: list[asyncio.Task[Any]] = []
    try:
        tasks.append(asyncio.create_task(token.transfer(sink, 5 * ONE_MUSD)))
        assert await eventually(pending, reached(1)) == 1
        transfer = token.contract.functions.transfer(sink, 1)
        tasks.append(asyncio.create_task(wallet.transact(transfer, gas=100_000)))
        assert await eventually(pending, reached(2)) == 2
        await rpc(chain, "evm_mine")
        emptied = await tasks[0]
        with pytest.raises(ContractRevertError) as info:
            await tasks[1]
    finally:
        await rpc(chain, "evm_setAutomine", True)
        for task in tasks:
            task.cancel()

    block = await chain.w3.eth.get_block(emptied["blockNumber"])
    assert len(block["transactions"]) == 2
    assert info.value.error_name == "ERC20InsufficientBalance"
    assert info.value.error_args == (wallet.address, 0, 1)


# ---------------------------------------------------------------- lost chain


async def _raise(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize(
    "exc",
    [aiohttp.ClientConnectionError("refused"), ConnectionResetError("reset"), TimeoutError()],
    ids=["client-error", "connection-reset", "timeout"],
)
async def test_guard_rpc_turns_connection_failures_into_chain_unavailable(
    exc: BaseException,
) -> None:
    with pytest.raises(ChainUnavailableError) as info:
        await guard_rpc(_raise(exc), "http://127.0.0.1:9")

    assert "http://127.0.0.1:9" in info.value.user_message
    assert "agentmesh devnet status" in info.value.user_message
    assert info.value.__cause__ is exc


async def test_guard_rpc_passes_other_errors_and_values_through() -> None:
    async def answer() -> int:
        return 42

    assert await guard_rpc(answer()) == 42
    with pytest.raises(KeyError):
        await guard_rpc(_raise(KeyError("not a connection problem")))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_wallet_on_a_dead_endpoint_raises_chain_unavailable() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    w3 = AsyncWeb3(AsyncHTTPProvider(url, exception_retry_configuration=None))
    wallet = Wallet(Account.create(), w3)
    try:
        with pytest.raises(ChainUnavailableError) as info:
            await wallet.eth_balance()
        with pytest.raises(ChainUnavailableError):
            await wallet.send({"to": wallet.address, "value": 1})
    finally:
        await w3.provider.disconnect()

    assert url in info.value.user_message


# ---------------------------------------------------------------- decode_revert


def _selector(signature: str) -> bytes:
    return function_signature_to_4byte_selector(signature)


def test_decode_error_string() -> None:
    data = _selector("Error(string)") + abi_encode(["string"], ["not enough coffee"])

    error = decode_revert(data)

    assert error.error_name == "Error"
    assert error.error_args == ("not enough coffee",)
    assert error.user_message == "transaction reverted: Error(not enough coffee)"
    assert error.raw == data
    assert decode_revert("0x" + data.hex()).user_message == error.user_message


def test_decode_panic_overflow() -> None:
    data = _selector("Panic(uint256)") + abi_encode(["uint256"], [0x11])

    error = decode_revert(data)

    assert error.error_name == "Panic"
    assert "0x11 arithmetic overflow or underflow" in error.user_message


def test_decode_unknown_panic_code() -> None:
    error = decode_revert(_selector("Panic(uint256)") + abi_encode(["uint256"], [0x99]))

    assert "0x99 unknown panic" in error.user_message


def test_decode_unknown_selector_keeps_raw_data() -> None:
    data = bytes.fromhex("deadbeef") + abi_encode(["uint256"], [1])

    error = decode_revert(data)

    assert error.error_name is None
    assert error.raw == data
    assert "0xdeadbeef" in error.user_message


@pytest.mark.parametrize("data", [b"", b"\x08\xc3\x79", None, "0x", "0x08c3"])
def test_decode_short_or_missing_data(data: bytes | str | None) -> None:
    error = decode_revert(data, detail="execution reverted")

    assert error.error_name is None
    assert error.user_message == "transaction reverted: execution reverted"


def test_decode_missing_data_without_detail() -> None:
    assert decode_revert(None).user_message == "transaction reverted: no reason given"


def test_decode_non_hex_string_keeps_detail() -> None:
    error = decode_revert("0xnothex", detail="")

    assert error.error_name is None
    assert "0xnothex" in error.user_message


def test_decode_known_selector_with_malformed_arguments() -> None:
    data = _selector("Error(string)") + b"\x01\x02"

    error = decode_revert(data)

    assert error.error_name == "Error"
    assert error.error_args == ()


def test_decode_custom_error_with_address_argument() -> None:
    who = Account.create().address
    data = _selector("OwnableUnauthorizedAccount(address)") + abi_encode(["address"], [who])

    error = decode_revert(data)

    assert error.error_name == "OwnableUnauthorizedAccount"
    assert error.error_args == (who,)  # checksummed, as users see addresses
    assert who in error.user_message


def test_decode_call_failed_shows_the_inner_error() -> None:
    target = Account.create().address
    holder = Account.create().address
    inner = _selector("ERC20InsufficientBalance(address,uint256,uint256)") + abi_encode(
        ["address", "uint256", "uint256"], [holder, 5, 9]
    )
    data = _selector("CallFailed(address,bytes)") + abi_encode(
        ["address", "bytes"], [target, inner]
    )

    error = decode_revert(data)

    assert error.error_name == "CallFailed"
    assert error.contract == "AgentWallet"
    assert error.error_args[0] == target
    assert "ERC20InsufficientBalance(" in error.error_args[1]
    assert f"ERC20InsufficientBalance({holder}, 5, 9)" in error.user_message
    assert f"AgentWallet.CallFailed({target}, " in error.user_message


def test_decode_call_failed_with_inner_error_string() -> None:
    target = Account.create().address
    inner = _selector("Error(string)") + abi_encode(["string"], ["UniswapV2: K"])
    data = _selector("CallFailed(address,bytes)") + abi_encode(
        ["address", "bytes"], [target, inner]
    )

    assert "Error(UniswapV2: K)" in decode_revert(data).user_message


def test_decode_call_failed_with_empty_reason() -> None:
    target = Account.create().address
    data = _selector("CallFailed(address,bytes)") + abi_encode(["address", "bytes"], [target, b""])

    error = decode_revert(data)

    assert error.error_name == "CallFailed"
    assert error.user_message.endswith(f"CallFailed({target}, 0x)")


# ---------------------------------------------------------------- checksum


def test_checksum_accepts_lowercase_and_uppercase() -> None:
    account = Account.create().address
    body = account[2:]

    assert checksum(account.lower()) == account
    assert checksum("0x" + body.upper()) == account
    assert checksum(account) == account
    assert checksum(f"  {account}\n") == account


def _flip_one_letter_case(address: str) -> str:
    body = list(address[2:])
    for i, ch in enumerate(body):
        if ch.isalpha():
            body[i] = ch.lower() if ch.isupper() else ch.upper()
            break
    return "0x" + "".join(body)


def test_checksum_rejects_a_bad_checksum() -> None:
    # An address whose body has both cases, so it is read as checksummed.
    good = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    bad = _flip_one_letter_case(good)
    assert bad != good and bad.lower() == good.lower()

    with pytest.raises(InvalidAddressError) as info:
        checksum(bad)

    assert "checksum does not match" in info.value.user_message
    assert bad in info.value.user_message
    assert checksum(good) == good


@pytest.mark.parametrize(
    "text",
    [
        "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beae",  # 39 digits
        "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed00",  # 42 digits
        "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaeg",  # not hex
        "0x",
        "",
        "alice.eth",
    ],
    ids=["short", "long", "non-hex", "prefix-only", "empty", "ens-name"],
)
def test_checksum_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidAddressError) as info:
        checksum(text)

    assert repr(text) in info.value.user_message
    assert isinstance(info.value, ValueError)


def test_client_rejects_bad_recipient_before_sending(chain: Chain, deployer: Wallet) -> None:
    with pytest.raises(InvalidAddressError):
        TokenClient(deployer, "0x1234")


# ---------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("text", "decimals", "units"),
    [
        ("1", MUSD_DECIMALS, 1_000_000),
        ("1.5", MUSD_DECIMALS, 1_500_000),
        ("0.000001", MUSD_DECIMALS, 1),
        ("0", MUSD_DECIMALS, 0),
        ("  2.25 ", MUSD_DECIMALS, 2_250_000),
        ("1.500000000", MUSD_DECIMALS, 1_500_000),  # trailing zeros are not precision
        ("1e3", MUSD_DECIMALS, 1_000_000_000),
        (3, MUSD_DECIMALS, 3_000_000),
        (Decimal("0.1"), ETH_DECIMALS, 10**17),
        ("0.000000000000000001", ETH_DECIMALS, 1),
        ("1000000", ETH_DECIMALS, 10**24),
    ],
)
def test_parse_amount(text: str | int | Decimal, decimals: int, units: int) -> None:
    assert parse_amount(text, decimals) == units


@pytest.mark.parametrize(
    ("units", "decimals", "text"),
    [
        (1_500_000, MUSD_DECIMALS, "1.5"),
        (1_000_000, MUSD_DECIMALS, "1"),
        (10_000_000, MUSD_DECIMALS, "10"),
        (1, MUSD_DECIMALS, "0.000001"),
        (0, MUSD_DECIMALS, "0"),
        (120_000, MUSD_DECIMALS, "0.12"),
        (10**18, ETH_DECIMALS, "1"),
        (1, ETH_DECIMALS, "0.000000000000000001"),
        (5, 0, "5"),
        (500, 0, "500"),
    ],
)
def test_format_amount_trims_zeros(units: int, decimals: int, text: str) -> None:
    assert format_amount(units, decimals) == text


def test_format_amount_with_symbol() -> None:
    assert format_amount(2_500_000, MUSD_DECIMALS, "mUSD") == "2.5 mUSD"
    assert format_amount(0, MUSD_DECIMALS, "mUSD") == "0 mUSD"


@pytest.mark.parametrize(
    ("units", "decimals"),
    [
        (0, 6),
        (1, 6),
        (999_999, 6),
        (1_000_000, 6),
        (123_456_789, 6),
        (1, 18),
        (10**18, 18),
        (123 * 10**15, 18),
        (10**27 + 7, 6),
    ],
)
def test_round_trip_small_and_medium(units: int, decimals: int) -> None:
    assert parse_amount(format_amount(units, decimals), decimals) == units


@pytest.mark.parametrize(
    ("units", "decimals"),
    [
        (123456789012123456789012345678, ETH_DECIMALS),  # ~1.2e11 tokens, full precision
        (2**256 - 1, ETH_DECIMALS),  # uint256 max
        (2**128 + 1, MUSD_DECIMALS),
    ],
    ids=["30-digits", "uint256-max", "2**128+1"],
)
def test_round_trip_beyond_28_significant_digits(units: int, decimals: int) -> None:
    """Token balances are uint256: 18-decimal amounts easily exceed Decimal's default
    28-digit context, and must neither be displayed nor parsed rounded."""
    whole, fraction = divmod(units, 10**decimals)
    exact = f"{whole}.{fraction:0{decimals}d}".rstrip("0").rstrip(".")

    text = format_amount(units, decimals)

    assert text == exact
    assert parse_amount(exact, decimals) == units


def test_parse_amount_does_not_round_large_inputs() -> None:
    text = "123456789012.123456789012345678"

    assert parse_amount(text, ETH_DECIMALS) == 123456789012123456789012345678


def test_parse_amount_rejects_hidden_excess_precision() -> None:
    # 25 integer digits + 7 decimals: the 7th decimal must be refused for mUSD, not
    # rounded away by the decimal context.
    with pytest.raises(AgentMeshValueError, match="at most 6 decimal places"):
        parse_amount("1000000000000000000000000.0000001", MUSD_DECIMALS)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("-1", "zero or positive"),
        ("-0.5", "zero or positive"),
        ("NaN", "zero or positive"),
        ("sNaN", "zero or positive"),
        ("Infinity", "zero or positive"),
        ("-inf", "zero or positive"),
        ("abc", "not a number"),
        ("", "not a number"),
        ("1,5", "not a number"),
        ("0x10", "not a number"),
        ("1.0000001", "at most 6 decimal places"),
        ("0.0000005", "at most 6 decimal places"),
    ],
)
def test_parse_amount_rejects(text: str, reason: str) -> None:
    with pytest.raises(AgentMeshValueError) as info:
        parse_amount(text, MUSD_DECIMALS)

    assert reason in info.value.user_message
    assert repr(text) in info.value.user_message


def test_parse_amount_error_names_the_symbol() -> None:
    with pytest.raises(AgentMeshValueError, match="at most 6 decimal places mUSD"):
        parse_amount("0.1234567", MUSD_DECIMALS, symbol="mUSD")


async def test_connect_keeps_one_connection_for_many_requests() -> None:
    """web3's own sessions close the connection after every request; ``connect`` keeps
    it open (a real HTTP server counts the connections it accepts)."""
    from aiohttp import web

    from agentmesh.wallets.chain import connect

    peers: list[object] = []

    async def rpc(request: web.Request) -> web.Response:
        body = await request.json()
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": "0x2a"})

    server = web.Application()
    server.router.add_post("/", rpc)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    w3 = connect(f"http://127.0.0.1:{port}")
    try:
        numbers = [await w3.eth.block_number for _ in range(20)]
    finally:
        await w3.provider.disconnect()
        await runner.cleanup()
    assert numbers == [42] * 20
    assert len(peers) == 20
    assert len(set(peers)) == 1  # one TCP connection (one client port) for all twenty


async def test_a_stuck_transaction_above_the_fee_cap_goes_again_unchanged(
    chain: Chain, make_wallet: WalletFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """With the base fee at or above the cap, a higher-fee replacement could not get in
    either: the same signed transaction is sent again (the node may have dropped it)."""
    wallet = _wallet_on(chain, await make_wallet(eth=1, musd=0), _Eth(chain.w3.eth))
    set_tx_policy(wallet.w3, TxPolicy(max_fee_per_gas=1))  # below any base fee
    last = Attempt(os.urandom(32), b"", (GWEI, GWEI))
    pending = Pending(wallet, {"nonce": 0, "gas": 21_000, "value": 0}, [last])
    pending.policy = tx_policy(wallet.w3)

    assert await pending._replacement_fees(last) is None
    assert "sent again as it is" in caplog.text and "at or above this agent's cap" in caplog.text
    # A balance that cannot pay a higher maximum: also sent again as it is.
    set_tx_policy(wallet.w3, TxPolicy(max_fee_per_gas=10**30))
    pending.policy = tx_policy(wallet.w3)
    poor = Pending(wallet, {"nonce": 0, "gas": 21_000, "value": ETHER}, [last])
    poor.policy = pending.policy
    assert await poor._replacement_fees(last) is None
    assert "the balance cannot cover a higher maximum fee" in caplog.text
