"""The payer side of payment channels: ``Agent.call`` pays each call with a voucher.

``PayerDesk`` opens one channel per payee (on the first call, with
``channel_deposit``), fixes each service's price on it once (``JoinChannel``), then
sends each call with the next cumulative voucher. A voucher is signed and its call
queued on the connection without yielding in between, so concurrent calls reach the
payee in the order of their amounts: no two calls share an amount and none is skipped.
When the deposit would be passed it tops the channel up by ``channel_deposit``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from eth_account.signers.local import LocalAccount

from agentmesh.envelope import EnvelopeSigner
from agentmesh.errors import AgentMeshError, PaymentError, SignatureError
from agentmesh.mesh.card import AgentCard
from agentmesh.protocols.payment import (
    PROTOCOL,
    VERSION,
    CallRefused,
    CallResult,
    ChannelClosed,
    ChannelPhase,
    ChannelTerms,
    CloseChannel,
    JoinChannel,
    PaidCall,
    Refusal,
)
from agentmesh.wallets.channel import PaymentChannelClient, VoucherDomain

from .channel_store import ChannelStore, PayerChannel

if TYPE_CHECKING:
    from collections import Counter

    from agentmesh.mesh.node import MeshNode

log = logging.getLogger("agentmesh.channels")


class PaidCallRefused(PaymentError):
    """The payee refused a paid call (``code``: a ``Refusal``); nothing was done."""

    def __init__(self, code: str, detail: str, payee: str = "") -> None:
        super().__init__(f"{payee or 'payee'} refused the call ({code}): {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class PayerSettings:
    deposit: int  # base units a channel is opened and topped up with
    timeout_s: float  # per try of a call
    close_timeout_s: float  # for a cooperative close (the payee sends a transaction)


class PayerDesk:
    """Channels one agent pays from."""

    def __init__(
        self,
        *,
        client: PaymentChannelClient,
        domain: VoucherDomain,
        account: LocalAccount,
        token: str,
        node: MeshNode,
        store: ChannelStore,
        settings: PayerSettings,
        counters: Counter[str],
    ) -> None:
        self.client = client
        self.domain = domain
        self.signer = EnvelopeSigner(bytes(account.key))  # the key, once, for every voucher
        self.address = account.address
        self.token = token
        self.node = node
        self.store = store
        self.settings = settings
        self.counters = counters
        self.channels: dict[bytes, PayerChannel] = {ch.id: ch for ch in store.payer_channels()}
        self._payee_locks: dict[str, asyncio.Lock] = {}

    def channel_to(self, payee: str) -> PayerChannel | None:
        """The open channel this agent pays ``payee`` through (the latest opened)."""
        found = [
            ch
            for ch in self.channels.values()
            if ch.payee.lower() == payee.lower() and ch.phase is ChannelPhase.OPEN
        ]
        return found[-1] if found else None

    # ------------------------------------------------------------------ calls

    async def call(
        self, peer: AgentCard, service: str, text: str, *, max_price: int | None = None
    ) -> str:
        """One paid call of ``service`` on ``peer`` with JSON ``text``; the result's
        JSON. ``PaidCallRefused`` when the payee refuses it (before any work, except
        ``service_failed``)."""
        ch = await self.ready(peer, service, max_price)
        price = ch.prices[service]
        for attempt in range(2):
            if ch.unsure:
                await self._recount(peer, ch, service)
            if ch.signed + price > ch.deposit:
                await self._top_up(ch, price)
            # From here to the send nothing yields: this call's amount is unique and
            # reaches the payee in order (see the module docstring).
            cumulative = ch.signed + price
            signature = self.domain.sign(self.signer, ch.id, cumulative)
            ch.signed = cumulative
            self.store.note_signed(ch)
            ch.in_flight += 1
            try:
                reply: CallResult | CallRefused = await self.node.request(
                    peer,
                    PaidCall(
                        channel="0x" + ch.id.hex(),
                        service=service,
                        input=text,
                        cumulative=cumulative,
                        signature="0x" + signature.hex(),
                    ),
                    protocol=PROTOCOL,
                    version=VERSION,
                    expect=(CallResult, CallRefused),
                    timeout=self.settings.timeout_s,
                )
            except AgentMeshError:
                # No answer: the voucher may never have reached the payee (or not its
                # disk). Before the next call, ask the payee what it holds.
                ch.unsure = True
                raise
            finally:
                ch.in_flight -= 1
            if isinstance(reply, CallResult):
                ch.calls += 1
                self.store.note_signed(ch)
                return reply.result
            self.counters["channel.call_refused"] += 1
            if reply.code == Refusal.NOT_OPEN:
                # The payer asked to close (here or from the CLI): the next call opens a
                # new channel instead of failing on this one for ever.
                ch.phase = ChannelPhase.CLOSING
                self.store.save_payer(ch)
            if attempt == 0 and reply.code == Refusal.STALE_VOUCHER:
                # Not served, so not paid: sign again above the count, or above the
                # payee's latest voucher if this payer lost count (a restart).
                self._resync(ch, reply)
                continue
            raise PaidCallRefused(reply.code, reply.detail, peer.name or peer.address)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _recount(self, peer: AgentCard, ch: PayerChannel, service: str) -> None:
        """After a call that got no answer: count on from the latest voucher the payee
        holds, when it holds less than this payer signed (vouchers lost on the way, or
        with a payee that crashed before storing them: it never worked for them, so
        they are not paid). Only with no other call in flight, whose voucher the payee
        may be about to take. Lowering the count can only cost the payee: a payee that
        says it holds less than it does is sent vouchers below what it holds."""
        async with ch.lock:
            if not ch.unsure or ch.in_flight:
                return
            reply: ChannelTerms | CallRefused = await self.node.request(
                peer,
                JoinChannel(channel="0x" + ch.id.hex(), service=service, price=ch.prices[service]),
                protocol=PROTOCOL,
                version=VERSION,
                expect=(ChannelTerms, CallRefused),
                timeout=self.settings.timeout_s,
            )
            if isinstance(reply, ChannelTerms) and reply.cumulative < ch.signed:
                log.info(
                    "channel 0x%s: the payee holds %d of the %d signed; counting on from it",
                    ch.id.hex(),
                    reply.cumulative,
                    ch.signed,
                )
                ch.signed = reply.cumulative
                self.store.note_signed(ch)
            elif isinstance(reply, ChannelTerms):
                self._resync(ch, reply)
            ch.unsure = False

    def _resync(self, ch: PayerChannel, reply: CallRefused | ChannelTerms) -> None:
        """Take the payee's latest voucher as this payer's count when it is above the
        count, within the deposit, and signed by this payer (a restart lost the count);
        otherwise (a reordered or retried call: the count is already past it; or a
        voucher this payer never signed) keep the count."""
        if reply.cumulative <= ch.signed or reply.cumulative > ch.deposit or not reply.signature:
            return
        try:
            signer = self.domain.signer(ch.id, reply.cumulative, bytes.fromhex(reply.signature[2:]))
        except SignatureError:
            return
        if signer.lower() != self.address.lower():
            return
        ch.signed = reply.cumulative
        self.store.note_signed(ch)
        log.info("channel 0x%s: resumed from the payee's voucher %d", ch.id.hex(), ch.signed)

    # ------------------------------------------------------------------ channels

    async def ready(self, peer: AgentCard, service: str, max_price: int | None) -> PayerChannel:
        """The open channel to ``peer`` with a price fixed for ``service`` (opening one
        and joining as needed)."""
        ch = self.channel_to(peer.address)
        if ch is not None and service in ch.prices:
            return ch
        lock = self._payee_locks.setdefault(peer.address.lower(), asyncio.Lock())
        async with lock:
            ch = self.channel_to(peer.address)
            if ch is not None and service in ch.prices:
                return ch
            listed = next((s.price for s in peer.services if s.name == service), None)
            if listed is None:
                raise PaidCallRefused(
                    Refusal.UNKNOWN_SERVICE,
                    f"{peer.name or peer.address} does not sell {service!r}",
                    peer.name,
                )
            offer = listed if max_price is None else min(listed, max_price)
            if ch is None:
                ch = await self.open(peer.address, max(self.settings.deposit, offer))
            await self._join(peer, ch, service, offer)
            return ch

    async def open(self, payee: str, deposit: int) -> PayerChannel:
        """Open a channel to ``payee`` with ``deposit`` base units of mUSD."""
        channel_id, receipt = await self.client.open(payee, self.token, deposit)
        ch = PayerChannel(
            id=channel_id,
            payee=self.client.wallet.w3.to_checksum_address(payee),
            token=self.token,
            deposit=deposit,
            open_tx="0x" + bytes(receipt["transactionHash"]).hex(),
        )
        self.channels[ch.id] = ch
        self.store.save_payer(ch)
        self.counters["channel.opened"] += 1
        return ch

    async def _join(self, peer: AgentCard, ch: PayerChannel, service: str, offer: int) -> None:
        reply: ChannelTerms | CallRefused = await self.node.request(
            peer,
            JoinChannel(channel="0x" + ch.id.hex(), service=service, price=offer),
            protocol=PROTOCOL,
            version=VERSION,
            expect=(ChannelTerms, CallRefused),
            timeout=self.settings.timeout_s,
        )
        if isinstance(reply, CallRefused):
            raise PaidCallRefused(reply.code, reply.detail, peer.name or peer.address)
        if reply.price > offer or reply.channel != "0x" + ch.id.hex():
            # A payee fixes the first price it was offered; it may not raise it.
            raise PaidCallRefused(
                Refusal.PRICE_TOO_LOW,
                f"the payee names {reply.price} base units a call for {service} on "
                f"{reply.channel}; this payer offered {offer} on 0x{ch.id.hex()}",
                peer.name or peer.address,
            )
        ch.prices[service] = reply.price
        self._resync(ch, reply)
        self.store.save_payer(ch)

    async def _top_up(self, ch: PayerChannel, price: int) -> None:
        async with ch.lock:
            if ch.signed + price <= ch.deposit:
                return  # another call topped it up meanwhile
            # The chain's figure: a top-up from the CLI may have been made meanwhile.
            ch.deposit = (await self.client.channel(ch.id)).deposit
            if ch.signed + price > ch.deposit:
                await self.client.top_up(ch.id, self.settings.deposit)
                ch.deposit += self.settings.deposit
            self.store.save_payer(ch)

    async def close(self, ch: PayerChannel, peer: AgentCard | None) -> str:
        """Close ``ch``: with the payee's cooperation at once (paid out and refunded in
        one transaction); without it (unreachable, refusing), ask the contract to close,
        which refunds the rest after the challenge delay (``withdraw``). Returns what
        happened: ``"closed"`` or ``"close requested"``."""
        if peer is not None:
            try:
                reply: ChannelClosed | CallRefused = await self.node.request(
                    peer,
                    CloseChannel(channel="0x" + ch.id.hex()),
                    protocol=PROTOCOL,
                    version=VERSION,
                    expect=(ChannelClosed, CallRefused),
                    timeout=self.settings.close_timeout_s,
                )
            except AgentMeshError as exc:
                log.info("payee did not close channel 0x%s: %s", ch.id.hex(), exc)
            else:
                if isinstance(reply, ChannelClosed):
                    state = await self.client.channel(ch.id)
                    if state.closed:  # believed only once the chain says so
                        ch.phase, ch.claimed = ChannelPhase.CLOSED, state.claimed
                        self.store.save_payer(ch)
                        return "closed"
        state = await self.client.channel(ch.id)
        if state.closed:
            ch.phase, ch.claimed = ChannelPhase.CLOSED, state.claimed
        elif not state.close_requested_at:
            await self.client.request_close(ch.id)
            ch.phase = ChannelPhase.CLOSING
        else:
            ch.phase = ChannelPhase.CLOSING
        self.store.save_payer(ch)
        return "closed" if ch.phase is ChannelPhase.CLOSED else "close requested"
