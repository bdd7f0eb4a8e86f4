"""The payee side of payment channels: paid calls in, claims out.

``PayeeDesk`` answers ``agentmesh.payment@1`` (see the protocol's docstring for the
order of payment and work) and keeps the money it earned claimable:

- a call's voucher is checked without yielding (so vouchers are taken in the order they
  arrive) and committed to ``channels.db`` before the service runs;
- it claims once its unclaimed amount reaches ``channel_claim_threshold``;
- it watches the contract's events: a payer's close request makes it claim at once (and
  take no more calls on that channel), a top-up raises the deposit it accepts;
- on start it reads every channel it holds from the chain and claims anything
  unclaimed, so a payee that was down during part of a challenge delay claims as soon
  as it is back, if the delay has not run out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from agentmesh.canonical import canonical_json
from agentmesh.errors import AgentMeshError, ContractRevertError, SignatureError
from agentmesh.mesh.routes import HandlerContext
from agentmesh.protocols.payment import (
    ACCEPTS,
    PROTOCOL,
    REPLIES,
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
from agentmesh.wallets.channel import ChannelState, PaymentChannelClient, VoucherDomain

from .channel_store import ChannelStore, PayeeChannel
from .service import Service, ServiceContext

if TYPE_CHECKING:
    from collections import Counter

    from agentmesh.chat_model import ChatModel
    from agentmesh.mesh.node import MeshNode

log = logging.getLogger("agentmesh.channels")


class Refused(AgentMeshError):
    """A call or join this payee will not take."""

    def __init__(self, code: Refusal, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@dataclass(frozen=True, slots=True)
class PayeeSettings:
    claim_threshold: int  # base units
    poll_s: float
    min_challenge_s: int


class PayeeDesk:
    """Channels paying one agent: their vouchers, its claims."""

    def __init__(
        self,
        *,
        client: PaymentChannelClient,
        domain: VoucherDomain,
        token: str,
        services: dict[str, Service],
        store: ChannelStore,
        settings: PayeeSettings,
        spawn: Callable[[Any], asyncio.Task[Any]],
        counters: Counter[str],
        name: str,
        model: Callable[[], ChatModel | None],
    ) -> None:
        self.client = client
        self.domain = domain
        self.address = client.wallet.address
        self.token = token
        self.services = services
        self.store = store
        self.settings = settings
        self.spawn = spawn
        self.counters = counters
        self.name = name
        self.model = model
        self.channels: dict[bytes, PayeeChannel] = {}
        self._claim_locks: dict[bytes, asyncio.Lock] = {}
        self._challenge_delay = 0
        self._next_block = 0

    def install(self, node: MeshNode) -> None:
        for message_type, handler in (
            (JoinChannel, self.on_join),
            (PaidCall, self.on_call),
            (CloseChannel, self.on_close),
        ):
            node.on(
                message_type, protocol=PROTOCOL, version=VERSION, replies=REPLIES[message_type]
            )(handler)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the channels held, bring them up to date from the chain, claim what is
        unclaimed, then watch the contract."""
        self._challenge_delay = await self.client.challenge_delay()
        self._next_block = await self.client.wallet.w3.eth.block_number
        for ch in self.store.payee_channels():
            self.channels[ch.id] = ch
            if ch.phase is ChannelPhase.CLOSED:
                continue
            try:
                await self._refresh(ch)
            except AgentMeshError as exc:
                log.warning("channel 0x%s not read from the chain: %s", ch.id.hex(), exc)
                continue
            if ch.unclaimed > 0:
                await self._claim_logged(ch)
        self.spawn(self._watch())

    async def _refresh(self, ch: PayeeChannel) -> ChannelState:
        state = await self.client.channel(ch.id)
        ch.deposit, ch.claimed = state.deposit, max(ch.claimed, state.claimed)
        if state.closed:
            ch.phase = ChannelPhase.CLOSED
        elif state.close_requested_at:
            ch.phase = ChannelPhase.CLOSING
            ch.claim_until = state.close_requested_at + self._challenge_delay
        self.store.save_payee(ch)
        return state

    # ------------------------------------------------------------------ handlers

    async def on_join(self, ctx: HandlerContext, join: JoinChannel) -> ChannelTerms | CallRefused:
        try:
            ch = await self._joined(ctx.sender, join)
        except Refused as exc:
            return self._refusal(exc, self.channels.get(_id(join.channel)))
        except AgentMeshError as exc:
            return CallRefused(code=Refusal.CHAIN_UNAVAILABLE, detail=str(exc)[:500])
        return self._terms(ch, join.service)

    async def _joined(self, sender: str, join: JoinChannel) -> PayeeChannel:
        service = self.services.get(join.service)
        if service is None:
            raise Refused(Refusal.UNKNOWN_SERVICE, f"{self.name} sells no {join.service!r}")
        if join.price < service.floor:
            raise Refused(
                Refusal.PRICE_TOO_LOW,
                f"{join.service} costs at least {service.floor} base units a call",
            )
        if self._challenge_delay < self.settings.min_challenge_s:
            raise Refused(
                Refusal.NOT_PAYEE,
                f"the channel contract's challenge delay ({self._challenge_delay}s) is under "
                f"this payee's minimum ({self.settings.min_challenge_s}s)",
            )
        channel_id = _id(join.channel)
        ch = self.channels.get(channel_id)
        if ch is None:
            state = await self.client.channel(channel_id)
            if int(state.payer, 16) == 0:
                raise Refused(Refusal.UNKNOWN_CHANNEL, f"no channel {join.channel} on chain")
            if state.payee != self.address or state.token.lower() != self.token.lower():
                raise Refused(
                    Refusal.NOT_PAYEE,
                    f"channel {join.channel} pays {state.payee} in {state.token}, not "
                    f"{self.address} in mUSD",
                )
            ch = self.channels.get(channel_id) or PayeeChannel(
                id=channel_id,
                payer=state.payer,
                token=state.token,
                deposit=state.deposit,
                claimed=state.claimed,
                latest=state.claimed,
            )
            self.channels[channel_id] = ch
            if state.closed:
                ch.phase = ChannelPhase.CLOSED
            elif state.close_requested_at:
                ch.phase = ChannelPhase.CLOSING
        if sender.lower() != ch.payer.lower():
            raise Refused(Refusal.NOT_PAYER, f"{sender} is not the payer of {join.channel}")
        if ch.phase not in ACCEPTS[JoinChannel]:
            raise Refused(Refusal.NOT_OPEN, f"channel {join.channel} is {ch.phase}")
        # The price is fixed once per service: a second join keeps the first price.
        ch.prices.setdefault(join.service, join.price)
        self.store.save_payee(ch)
        return ch

    async def on_call(self, ctx: HandlerContext, call: PaidCall) -> CallResult | CallRefused:
        channel_id = _id(call.channel)
        ch = self.channels.get(channel_id)
        try:
            if ch is not None and call.cumulative > ch.deposit >= ch.latest:
                # Over the deposit this payee knew: read it again (a top-up).
                await self._refresh(ch)
            ch, price, service, arguments = self._accept(ctx.sender, channel_id, call)
        except Refused as exc:
            self.counters["channel.refused"] += 1
            return self._refusal(exc, ch)
        except AgentMeshError as exc:
            return CallRefused(code=Refusal.CHAIN_UNAVAILABLE, detail=str(exc)[:500])
        # Durable before the work: after a crash the payee still holds this voucher.
        await self.store.voucher_stored(ch)
        if ch.unclaimed >= self.settings.claim_threshold and not ch.claiming:
            ch.claiming = True
            self.spawn(self._claim_due(ch))
        context = ServiceContext(
            service=service.name,
            conversation=ctx.conversation.hex(),
            requester=ctx.sender,
            agent_name=self.name,
            chat_model=self.model(),
        )
        try:
            value = await service.fn(context, **dict(arguments))
            result = canonical_json(service.result.dump_python(value, mode="json"))
        except Exception as exc:  # the service's failure is answered, not raised
            self.counters["channel.service_failed"] += 1
            log.warning("paid call of %s failed: %r", service.name, exc)
            return CallRefused(
                code=Refusal.SERVICE_FAILED,
                detail=f"{type(exc).__name__}: {exc}"[:500],
                cumulative=ch.latest,
                signature=_hex(ch.signature),
            )
        self.counters["channel.answered"] += 1
        return CallResult(result=result, cumulative=call.cumulative)

    def _accept(
        self, sender: str, channel_id: bytes, call: PaidCall
    ) -> tuple[PayeeChannel, int, Service, BaseModel]:
        """Check a call and take its voucher (no await: vouchers are taken in arrival
        order); ``Refused`` with the rule it breaks."""
        ch = self.channels.get(channel_id)
        if ch is None:
            raise Refused(Refusal.UNKNOWN_CHANNEL, f"channel {call.channel} is not joined here")
        if sender.lower() != ch.payer.lower():
            raise Refused(Refusal.NOT_PAYER, f"{sender} is not the payer of {call.channel}")
        if ch.phase not in ACCEPTS[PaidCall]:
            raise Refused(Refusal.NOT_OPEN, f"channel {call.channel} is {ch.phase}")
        price = ch.prices.get(call.service)
        service = self.services.get(call.service)
        if price is None or service is None:
            raise Refused(Refusal.NOT_JOINED, f"no price fixed for {call.service} on this channel")
        if call.cumulative < ch.latest + price:
            raise Refused(
                Refusal.STALE_VOUCHER,
                f"voucher for {call.cumulative} is not above the latest held ({ch.latest}) "
                f"by the price ({price})",
            )
        if call.cumulative > ch.deposit:
            raise Refused(
                Refusal.OVER_DEPOSIT,
                f"voucher for {call.cumulative} is over the deposit ({ch.deposit})",
            )
        try:
            arguments = service.parse_input(call.input)
        except AgentMeshError as exc:
            raise Refused(Refusal.INVALID_INPUT, str(exc)) from None
        signature = bytes.fromhex(call.signature[2:])
        try:
            signer = self.domain.signer(channel_id, call.cumulative, signature)
        except SignatureError as exc:
            raise Refused(Refusal.BAD_SIGNATURE, str(exc)) from None
        if signer.lower() != ch.payer.lower():
            raise Refused(
                Refusal.BAD_SIGNATURE, f"voucher signed by {signer}, not the payer {ch.payer}"
            )
        ch.latest, ch.signature = call.cumulative, signature
        ch.calls += 1
        return ch, price, service, arguments

    async def on_close(
        self, ctx: HandlerContext, close: CloseChannel
    ) -> ChannelClosed | CallRefused:
        ch = self.channels.get(_id(close.channel))
        if ch is None:
            return CallRefused(code=Refusal.UNKNOWN_CHANNEL, detail=f"{close.channel} not joined")
        if ctx.sender.lower() != ch.payer.lower():
            return CallRefused(code=Refusal.NOT_PAYER, detail=f"{ctx.sender} is not the payer")
        tx = ""
        if ch.phase is not ChannelPhase.CLOSED:
            try:
                tx = await self.claim(ch, close=True) or ""
            except AgentMeshError as exc:
                return CallRefused(code=Refusal.CHAIN_UNAVAILABLE, detail=str(exc)[:500])
        if ch.phase is not ChannelPhase.CLOSED:
            return CallRefused(code=Refusal.NOT_OPEN, detail="the channel could not be closed")
        return ChannelClosed(channel=close.channel, cumulative=ch.claimed, tx=tx)

    # ------------------------------------------------------------------ claims

    async def _claim_logged(self, ch: PayeeChannel) -> None:
        """Claim, or log why not (the chain away, the wallet out of gas): a start or the
        event watch goes on, and tries again on the next event or start."""
        try:
            await self.claim(ch)
        except AgentMeshError as exc:
            log.warning("claim on channel 0x%s not sent: %s", ch.id.hex(), exc.user_message)

    async def _claim_due(self, ch: PayeeChannel) -> None:
        """Claim while the threshold is unclaimed (calls go on during a claim)."""
        try:
            while ch.unclaimed >= self.settings.claim_threshold:
                if await self.claim(ch) is None:
                    return
        finally:
            ch.claiming = False

    async def claim(self, ch: PayeeChannel, *, close: bool = False) -> str | None:
        """Claim (or close with) the latest voucher held; the transaction hash, or None
        when there was nothing to send. A revert is logged and the channel re-read."""
        lock = self._claim_locks.setdefault(ch.id, asyncio.Lock())
        async with lock:
            if ch.phase is ChannelPhase.CLOSED or (not close and ch.unclaimed <= 0):
                return None
            # Closing with nothing new to claim closes at what was claimed.
            cumulative, signature = max(ch.latest, ch.claimed), ch.signature
            send = self.client.close if close else self.client.claim
            try:
                receipt = await send(ch.id, cumulative, signature)
            except ContractRevertError as exc:
                log.warning("claim on channel 0x%s refused: %s", ch.id.hex(), exc)
                await self._refresh(ch)
                return None
            ch.claimed = max(ch.claimed, cumulative)
            if close:
                ch.phase = ChannelPhase.CLOSED
            self.store.save_payee(ch)
            self.counters["channel.claims"] += 1
            return "0x" + bytes(receipt["transactionHash"]).hex()

    async def _watch(self) -> None:
        """Follow the contract's events for the channels held."""
        events = self.client.contract.events
        w3 = self.client.wallet.w3
        while True:
            await asyncio.sleep(self.settings.poll_s)
            if all(ch.phase is ChannelPhase.CLOSED for ch in self.channels.values()):
                continue  # nothing to follow: no chain reads for an agent without channels
            try:
                head = await w3.eth.block_number
                if head < self._next_block:
                    continue
                span = {"from_block": self._next_block, "to_block": head}
                requested = await events.CloseRequested().get_logs(**span)
                topped = await events.ToppedUp().get_logs(**span)
                closed = await events.Closed().get_logs(**span)
            except Exception as exc:  # the chain may be away for a while: try again
                _reraise_cancel()  # a library may turn a cancellation into its own error
                log.info("channel events not read: %r", exc)
                continue
            self._next_block = head + 1
            for entry in topped:
                ch = self.channels.get(bytes(entry["args"]["id"]))
                if ch is not None:
                    ch.deposit = max(ch.deposit, int(entry["args"]["deposit"]))
                    self.store.save_payee(ch)
            for entry in closed:
                ch = self.channels.get(bytes(entry["args"]["id"]))
                if ch is not None and ch.phase is not ChannelPhase.CLOSED:
                    ch.phase = ChannelPhase.CLOSED
                    self.store.save_payee(ch)
            for entry in requested:
                ch = self.channels.get(bytes(entry["args"]["id"]))
                if ch is None or ch.phase is ChannelPhase.CLOSED:
                    continue
                ch.phase = ChannelPhase.CLOSING
                ch.claim_until = int(entry["args"]["claimUntil"])
                self.store.save_payee(ch)
                log.info("payer asked to close channel 0x%s: claiming", ch.id.hex())
                await self._claim_logged(ch)

    # ------------------------------------------------------------------ replies

    def _terms(self, ch: PayeeChannel, service: str) -> ChannelTerms:
        return ChannelTerms(
            channel="0x" + ch.id.hex(),
            service=service,
            price=ch.prices[service],
            phase=str(ch.phase),
            deposit=ch.deposit,
            cumulative=ch.latest,
            signature=_hex(ch.signature),
        )

    def _refusal(self, exc: Refused, ch: PayeeChannel | None) -> CallRefused:
        held = ch is not None and exc.code is not Refusal.NOT_PAYER
        return CallRefused(
            code=exc.code,
            detail=str(exc)[:500],
            cumulative=ch.latest if held and ch is not None else 0,
            signature=_hex(ch.signature) if held and ch is not None else "",
        )


def _reraise_cancel() -> None:
    """Raise ``CancelledError`` if this task is being cancelled (an HTTP client may have
    swallowed the cancellation and raised its own error instead)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _id(text: str) -> bytes:
    return bytes.fromhex(text[2:])


def _hex(signature: bytes) -> str:
    return "0x" + signature.hex() if signature else ""
