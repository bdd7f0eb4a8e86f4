"""PaymentChannel against a real anvil: open, vouchers, claims, close, the payer's way out
through the challenge delay, and every rule's failure path (stale voucher, over the
deposit, another channel, contract or chain, after close, malleable or forged
signatures). Every test that moves money checks it is conserved."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from eth_account import Account

from agentmesh.errors import ContractRevertError
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.channel import (
    PaymentChannelClient,
    sign_voucher,
    voucher_data,
    voucher_signer,
)
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import ONE_MUSD, WalletFactory, advance_time

DELAY = 3600
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@dataclass
class Pair:
    chain: Chain
    payer: Wallet
    payee: Wallet
    as_payer: PaymentChannelClient
    as_payee: PaymentChannelClient
    token: TokenClient
    channel: bytes

    async def voucher(self, cumulative: int, channel: bytes | None = None) -> bytes:
        return await sign_voucher(
            self.payer, self.as_payer.address, channel or self.channel, cumulative
        )

    async def total(self) -> int:
        holders = (self.payer.address, self.payee.address, self.as_payer.address)
        return sum([await self.token.balance_of(h) for h in holders])


@pytest.fixture
async def p(chain: Chain, make_wallet: WalletFactory) -> Pair:
    payer = await make_wallet(eth=5, musd=100, name="payer")
    payee = await make_wallet(eth=5, musd=0, name="payee")
    as_payer = await PaymentChannelClient.deploy(payer, DELAY)
    channel, _ = await as_payer.open(payee.address, chain.token_address, 10 * ONE_MUSD)
    return Pair(
        chain,
        payer,
        payee,
        as_payer,
        as_payer.as_wallet(payee),
        TokenClient(payer, chain.token_address),
        channel,
    )


def error(exc: pytest.ExceptionInfo[ContractRevertError]) -> str:
    return str(exc.value.error_name)


async def test_claims_pay_only_the_increase_and_close_returns_the_rest(p: Pair) -> None:
    before = await p.total()
    await p.as_payee.claim(p.channel, 3 * ONE_MUSD, await p.voucher(3 * ONE_MUSD))
    await p.as_payee.claim(p.channel, 5 * ONE_MUSD, await p.voucher(5 * ONE_MUSD))
    assert await p.token.balance_of(p.payee.address) == 5 * ONE_MUSD
    state = await p.as_payer.channel(p.channel)
    assert (state.deposit, state.claimed, state.closed) == (10 * ONE_MUSD, 5 * ONE_MUSD, False)
    await p.as_payee.close(p.channel, 7 * ONE_MUSD, await p.voucher(7 * ONE_MUSD))
    assert await p.token.balance_of(p.payee.address) == 7 * ONE_MUSD
    assert await p.token.balance_of(p.payer.address) == 93 * ONE_MUSD
    assert await p.token.balance_of(p.as_payer.address) == 0
    assert await p.total() == before
    with pytest.raises(ContractRevertError) as exc:
        await p.as_payee.claim(p.channel, 8 * ONE_MUSD, await p.voucher(8 * ONE_MUSD))
    assert error(exc) == "ChannelClosed"


async def test_a_voucher_is_checked_off_chain_as_on_chain(p: Pair) -> None:
    signature = await p.voucher(ONE_MUSD)
    signer = voucher_signer(p.as_payer.address, 31337, p.channel, ONE_MUSD, signature)
    assert signer == p.payer.address
    assert voucher_signer(p.as_payer.address, 1, p.channel, ONE_MUSD, signature) != signer


async def test_stale_and_over_deposit_vouchers_revert(p: Pair) -> None:
    await p.as_payee.claim(p.channel, 4 * ONE_MUSD, await p.voucher(4 * ONE_MUSD))
    for stale in (4 * ONE_MUSD, 3 * ONE_MUSD):  # the same or an older voucher
        with pytest.raises(ContractRevertError) as exc:
            await p.as_payee.claim(p.channel, stale, await p.voucher(stale))
        assert (error(exc), exc.value.error_args) == ("StaleVoucher", (stale, 4 * ONE_MUSD))
    over = 10 * ONE_MUSD + 1
    with pytest.raises(ContractRevertError) as exc:
        await p.as_payee.claim(p.channel, over, await p.voucher(over))
    assert (error(exc), exc.value.error_args) == ("OverDeposit", (over, 10 * ONE_MUSD))


async def test_vouchers_of_another_channel_contract_or_chain_and_forgeries_revert(
    p: Pair, make_wallet: WalletFactory
) -> None:
    other, _ = await p.as_payer.open(p.payee.address, p.chain.token_address, ONE_MUSD)
    cases = {
        "another channel": await p.voucher(ONE_MUSD, channel=other),
        "another chain": bytes(
            p.payer.account.sign_message(
                voucher_data(p.as_payer.address, 1, p.channel, ONE_MUSD)
            ).signature
        ),
        "another contract": bytes(
            p.payer.account.sign_message(
                voucher_data(Account.create().address, 31337, p.channel, ONE_MUSD)
            ).signature
        ),
        "a stranger's key": await sign_voucher(
            await make_wallet(eth=0, musd=0), p.as_payer.address, p.channel, ONE_MUSD
        ),
    }
    for what, signature in cases.items():
        with pytest.raises(ContractRevertError) as exc:
            await p.as_payee.claim(p.channel, ONE_MUSD, signature)
        assert error(exc) == "WrongSigner", what
        assert exc.value.error_args[1] == p.payer.address
    assert await p.token.balance_of(p.payee.address) == 0


async def test_malleable_and_malformed_signatures_revert(p: Pair) -> None:
    good = await p.voucher(ONE_MUSD)
    r, s, v = good[:32], int.from_bytes(good[32:64], "big"), good[64]
    flipped = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([27 + 28 - v])
    with pytest.raises(ContractRevertError) as exc:
        await p.as_payee.claim(p.channel, ONE_MUSD, flipped)
    assert error(exc) == "ECDSAInvalidSignatureS"
    with pytest.raises(ContractRevertError) as exc:
        await p.as_payee.claim(p.channel, ONE_MUSD, good[:64])
    assert error(exc) == "ECDSAInvalidSignatureLength"
    await p.as_payee.claim(p.channel, ONE_MUSD, good)  # the canonical one is fine


async def test_the_payers_way_out_respects_the_challenge_delay(p: Pair) -> None:
    before = await p.total()
    voucher = await p.voucher(6 * ONE_MUSD)
    await p.as_payer.request_close(p.channel)
    with pytest.raises(ContractRevertError) as exc:
        await p.as_payer.withdraw(p.channel)
    assert error(exc) == "ChallengePeriodOpen"
    with pytest.raises(ContractRevertError) as exc:
        await p.as_payer.top_up(p.channel, ONE_MUSD)
    assert error(exc) == "CloseAlreadyRequested"
    # Served right before asking to close: the payee claims within the delay, in full.
    await advance_time(p.chain, DELAY // 2)
    await p.as_payee.claim(p.channel, 6 * ONE_MUSD, voucher)
    await advance_time(p.chain, DELAY)
    with pytest.raises(ContractRevertError) as exc:
        await p.as_payee.claim(p.channel, 7 * ONE_MUSD, await p.voucher(7 * ONE_MUSD))
    assert error(exc) == "ChallengePeriodOver"
    await p.as_payer.withdraw(p.channel)
    assert await p.token.balance_of(p.payee.address) == 6 * ONE_MUSD
    assert await p.token.balance_of(p.payer.address) == 94 * ONE_MUSD
    assert (await p.as_payer.channel(p.channel)).closed
    assert await p.total() == before
    with pytest.raises(ContractRevertError) as exc:
        await p.as_payer.withdraw(p.channel)
    assert error(exc) == "ChannelClosed"


async def test_only_the_parties_act_and_bad_opens_are_refused(
    p: Pair, make_wallet: WalletFactory
) -> None:
    stranger = p.as_payer.as_wallet(await make_wallet(eth=1, musd=5))
    with pytest.raises(ContractRevertError) as exc:
        await stranger.claim(p.channel, ONE_MUSD, await p.voucher(ONE_MUSD))
    assert (error(exc), exc.value.error_args) == ("NotPayee", (stranger.wallet.address,))
    for act in (stranger.request_close(p.channel), stranger.withdraw(p.channel)):
        with pytest.raises(ContractRevertError) as exc:
            await act
        assert error(exc) == "NotPayer"
    with pytest.raises(ContractRevertError) as exc:
        await p.as_payer.open(p.payer.address, p.chain.token_address, ONE_MUSD)
    assert error(exc) == "InvalidPayee"
    with pytest.raises(ContractRevertError) as exc:
        await p.as_payer.open(p.payee.address, p.chain.token_address, 0)
    assert error(exc) == "ZeroAmount"
    salt = b"\x01" * 32
    await p.as_payer.open(p.payee.address, p.chain.token_address, ONE_MUSD, salt=salt)
    with pytest.raises(ContractRevertError) as exc:
        await p.as_payer.open(p.payee.address, p.chain.token_address, ONE_MUSD, salt=salt)
    assert error(exc) == "ChannelExists"
    with pytest.raises(ContractRevertError) as exc:
        await p.as_payer.request_close(b"\x02" * 32)
    assert error(exc) == "UnknownChannel"


async def test_a_top_up_raises_what_can_be_paid(p: Pair) -> None:
    await p.as_payer.top_up(p.channel, 5 * ONE_MUSD)
    await p.as_payee.claim(p.channel, 15 * ONE_MUSD, await p.voucher(15 * ONE_MUSD))
    assert await p.token.balance_of(p.payee.address) == 15 * ONE_MUSD
    with pytest.raises(ContractRevertError) as exc:
        await p.as_payee.top_up(p.channel, ONE_MUSD)
    assert error(exc) == "NotPayer"
