"""The validator role: probe providers through the market each epoch, commit scores,
reveal them after the epoch, finalize.

Any agent with a validator permit in ``Staking`` (``agentmesh stake add --validator``)
can take the role: ``Validator(agent).run()`` in its ``@agent.main``, or one
``await validator.step()`` at a time. Each epoch of ``Consensus``:

1. **Probe.** It samples the live providers of the service and buys from each, through
   the normal market (paid calls over a payment channel, ``agentmesh.payment@1``),
   canaries and re-executions (``agentmesh.agents.probes``).
2. **Commit** the scores (``ScoreSheet``), written to ``validator.db`` before the
   commit transaction is sent: after a ``kill -9`` the validator reveals that sheet and
   never scores or commits the epoch again.
3. **Reveal** in the window after the epoch, then **finalize** it (anyone may; the
   first validator that sees it due does).

Probes cannot be told from ordinary buyers: each epoch the calls come from a fresh
identity (key, wallet address, mesh key and an ordinary-looking name), an in-process
buyer agent funded by the validator for the epoch and emptied back into its wallet
afterwards. Its key is derived from the validator's key and the epoch, never stored: a
restarted validator re-derives it to recover what the probe still holds. Limits: the
funding transfer links the probe to the validator on chain for whoever traces it, and a
provider that answers every buyer honestly is exactly what the probes want.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_account import Account
from web3.types import Wei

from agentmesh.errors import AgentMeshError, AgentMeshValueError
from agentmesh.wallets.consensus import ConsensusClient, score_sheet
from agentmesh.wallets.jury import Vote
from agentmesh.wallets.staking import StakingClient

from .jury_duty import Judge
from .probes import ProbeOutcome, ProbePlan, canary_passes, plan_probes, reexec_passes
from .service import parse_price
from .validator_store import EpochRecord, ValidatorStore

if TYPE_CHECKING:
    from agentmesh.mesh.card import AgentCard
    from agentmesh.wallets.clients import TokenClient
    from agentmesh.wallets.wallet import Wallet

    from .agent import Agent

log = logging.getLogger(__name__)

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
PROBED_SERVICES = frozenset({"embed"})  # services whose canaries agents.probes knows
PROBE_ETH = 10**16  # 0.01 ETH: gas for a channel per provider and the sweep back


@dataclass(frozen=True, slots=True)
class ValidatorSettings:
    """How a validator probes."""

    service: str = "embed"
    sample: int = 16  # providers probed per epoch, at most
    canaries: int = 2  # canary triples per provider
    reexec: int = 2  # re-executions per provider (when it has the provider's model)
    probe_deposit: str = "0.05"  # mUSD per provider channel
    commit_margin_s: int = 30  # do not start probing with less epoch left than this
    poll_s: float = 1.0


def probe_name(key: bytes) -> str:
    """The probe identity's agent name: ordinary-looking, derived from its key (so a
    restarted validator finds the same folder and the channels opened from it)."""
    return "buyer-" + hashlib.sha256(key).hexdigest()[:6]


def probe_key(validator_key: bytes, consensus: str, epoch: int) -> bytes:
    """The probe identity's private key for ``epoch``: derived, so it is never stored."""
    for counter in range(256):
        digest = hashlib.sha256(
            b"agentmesh.validator.probe"
            + validator_key
            + bytes.fromhex(consensus.removeprefix("0x"))
            + epoch.to_bytes(32, "big")
            + counter.to_bytes(1, "big")
        ).digest()
        if 0 < int.from_bytes(digest, "big") < SECP256K1_N:
            return digest
    raise AgentMeshError("no valid probe key derived")  # pragma: no cover - odds 2^-128


class Validator:
    """The validator role of ``agent`` (started) for one service."""

    def __init__(self, agent: Agent, settings: ValidatorSettings | None = None) -> None:
        self.agent = agent
        self.settings = settings or ValidatorSettings()
        if self.settings.service not in PROBED_SERVICES:
            raise AgentMeshValueError(
                f"no probes for service {self.settings.service!r}: a validator can score "
                f"{', '.join(sorted(PROBED_SERVICES))}"
            )
        if not agent.started:
            raise AgentMeshError(f"start agent {agent.name} before giving it the validator role")
        deployment = agent.chain.deployment
        self.consensus = ConsensusClient(agent.wallet, deployment.address("Consensus"))
        self.staking = StakingClient(agent.wallet, deployment.address("Staking"))
        self.store = ValidatorStore(agent.agent_dir / "validator.db")
        self._rng = random.Random(secrets.randbits(64))
        self._no_permit: int | None = None  # the epoch it last said so (said once)
        # As a juror, it judges a disputed embedding by re-running it.
        self.duty = agent.jury_duty
        if self.duty is not None and agent.model is not None and hasattr(agent.model, "embed"):
            self.duty.judge = embedding_judge(agent.model)

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Step until ``stop`` is set; a failed step is logged and retried."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await self.step()
            except AgentMeshError as exc:
                log.warning("validator %s: %s", self.agent.name, exc.user_message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.poll_s)

    async def step(self) -> None:
        """Whatever is due now: reveal and finalize past epochs, then score and commit
        the current one."""
        if self.duty is not None:
            await self.duty.tick()
        await self.reclaim()
        now = await self.agent.clock.now()
        current = await self.consensus.current_epoch()
        await self.reveal_due(now)
        await self.finalize_due(now, current)
        end = await self.consensus.epoch_end(current)
        record = self.store.get(current)
        if (record is None or record.commit_tx is None) and (
            record is not None or end - now > self.settings.commit_margin_s
        ):
            if not await self.staking.has_permit(self.agent.address):
                if self._no_permit != current:  # probing would be spent for nothing
                    log.warning(
                        "validator %s holds no permit in epoch %d: stake more "
                        "(`agentmesh stake add AMOUNT --validator`)",
                        self.agent.name,
                        current,
                    )
                    self._no_permit = current
                return
            await self.score_and_commit(current)

    # ------------------------------------------------------------------ epochs

    async def score_and_commit(self, epoch: int) -> EpochRecord:
        """Probe, score and commit ``epoch`` once: a sheet already recorded (a restart)
        is committed as it is, or not at all when the chain already holds it."""
        record = self.store.get(epoch)
        if record is None:
            started = time.monotonic()
            outcomes = await self.probe(epoch)
            seconds = time.monotonic() - started
            sheet = score_sheet(epoch, {o.provider: o.score for o in outcomes})
            record = self.store.save_sheet(sheet, tuple(outcomes), seconds)
        if record.commit_tx is None:
            on_chain = await self.consensus.commit_of(epoch, self.agent.address)
            if on_chain == record.sheet.commitment(self.agent.address):
                self.store.mark(epoch, "commit", "on chain")  # mined before a crash
            elif not record.sheet.providers:
                log.info("validator %s: no provider to score in epoch %d", self.agent.name, epoch)
                self.store.mark(epoch, "commit", "none")
            elif await self.consensus.current_epoch() != epoch:
                # Probing outlasted the epoch: a commit now would count for the next one.
                log.warning(
                    "validator %s: epoch %d ended before its commit", self.agent.name, epoch
                )
                self.store.mark(epoch, "commit", "late")
            else:
                receipt = await self.consensus.commit(record.sheet)
                self.store.mark(epoch, "commit", receipt["transactionHash"].to_0x_hex())
        found = self.store.get(epoch)
        assert found is not None
        return found

    async def reveal_due(self, now: int) -> list[int]:
        """Reveal every committed epoch whose reveal window is open."""
        revealed = []
        window = await self.consensus.reveal_window()
        for record in self.store.epochs():
            if record.commit_tx in (None, "none", "late") or record.reveal_tx is not None:
                continue
            end = await self.consensus.epoch_end(record.epoch)
            if end <= now < end + window:
                receipt = await self.consensus.reveal(record.sheet)
                self.store.mark(record.epoch, "reveal", receipt["transactionHash"].to_0x_hex())
                revealed.append(record.epoch)
        return revealed

    async def finalize_due(self, now: int, current: int) -> list[int]:
        """Finalize the epochs this validator took part in whose reveal window closed."""
        done = []
        window = await self.consensus.reveal_window()
        for record in self.store.epochs():
            if record.finalize_tx is not None or record.epoch >= current:
                continue
            if now < await self.consensus.epoch_end(record.epoch) + window:
                continue
            if await self.consensus.finalized(record.epoch):
                self.store.mark(record.epoch, "finalize", "by another")
            else:
                receipt = await self.consensus.finalize(record.epoch)
                self.store.mark(record.epoch, "finalize", receipt["transactionHash"].to_0x_hex())
            done.append(record.epoch)
        return done

    async def reclaim(self) -> int:
        """Recover what past epochs' probe identities left behind: a channel whose payee
        did not close it with them (a close request, then the withdrawal once the
        challenge delay is over), then their wallets swept back. Returns how many probe
        identities are still waiting."""
        from agentmesh.protocols.payment import ChannelPhase
        from agentmesh.wallets.channel import PaymentChannelClient
        from agentmesh.wallets.clients import TokenClient
        from agentmesh.wallets.wallet import Wallet

        from .channel_store import ChannelStore

        waiting = 0
        left = {p.name for p in (self.agent.home / "agents").glob("buyer-*")}
        if not left:
            return 0  # the usual case: every probe identity settled and forgotten
        current = await self.consensus.current_epoch()
        for record in self.store.epochs():
            key = self._probe_key(record.epoch)
            folder = self.agent.home / "agents" / probe_name(key)
            if (
                folder.name not in left
                or record.epoch >= current
                or not (folder / "channels.db").exists()
            ):
                continue
            account = Account.from_key(key)
            wallet = Wallet(account, self.agent.chain.w3, name="probe")
            client = PaymentChannelClient(
                wallet, self.agent.chain.deployment.address("PaymentChannel")
            )
            store = ChannelStore(folder / "channels.db")
            try:
                now = await self.agent.clock.now()
                delay = await client.challenge_delay()
                for ch in store.payer_channels():
                    if ch.phase == ChannelPhase.CLOSED:
                        continue
                    state = await client.channel(ch.id)
                    if not state.closed and state.close_requested_at == 0:
                        await client.request_close(ch.id)
                        continue  # the payee's time to claim starts
                    if not state.closed and now <= state.close_requested_at + delay:
                        continue  # and still runs
                    if not state.closed:
                        await client.withdraw(ch.id)
                    ch.phase = ChannelPhase.CLOSED
                    store.save_payer(ch)
                pending = [c for c in store.payer_channels() if c.phase != ChannelPhase.CLOSED]
            finally:
                store.close()
            if pending:
                waiting += 1
                continue
            await sweep(wallet, TokenClient(wallet, self.agent.token_address), self.agent.address)
            _forget_folder(folder, self.agent.home, account.address)
        return waiting

    # ------------------------------------------------------------------ probing

    def _probe_key(self, epoch: int) -> bytes:
        return probe_key(bytes(self.agent.wallet.account.key), self.consensus.address, epoch)

    def providers(self) -> list[AgentCard]:
        """Up to ``sample`` live providers of the service (not this agent), at random."""
        cards = [
            card
            for card in self.agent.node.find(self.settings.service)
            if card.address.lower() != self.agent.address.lower()
        ]
        self._rng.shuffle(cards)
        return cards[: self.settings.sample]

    async def probe(self, epoch: int) -> list[ProbeOutcome]:
        """Buy from each sampled provider as a fresh buyer; what each answer showed."""
        await self.agent.discovery.refresh()
        cards = self.providers()
        if not cards:
            return []
        async with self._probe_agent(epoch, len(cards)) as buyer:
            outcomes = []
            for card in cards:
                outcomes.append(await self._probe_one(buyer, card))
                with contextlib.suppress(AgentMeshError):
                    await buyer.close_channel(card.address)
        return outcomes

    @contextlib.asynccontextmanager
    async def _probe_agent(self, epoch: int, providers: int) -> Any:
        """A started buyer agent with this epoch's probe identity, funded for
        ``providers`` channels; emptied back into the validator's wallet on the way out."""
        from agentmesh.wallets.clients import TokenClient
        from agentmesh.wallets.wallet import Wallet

        from .agent import Agent

        key = self._probe_key(epoch)
        account = Account.from_key(key)
        deposit = parse_price(self.settings.probe_deposit)
        config = self.agent.config.model_copy(
            update={
                "agent": self.agent.config.agent.model_copy(
                    update={
                        "channel_deposit": self.settings.probe_deposit,
                        "channel_max_price": self.settings.probe_deposit,
                        "faucet": False,
                    }
                ),
                "mesh": self.agent.node.config.model_copy(update={"port": 0, "presence_port": 0}),
            }
        )
        await self.agent.wallet.send({"to": account.address, "value": Wei(PROBE_ETH)})
        await self.agent.token.transfer(account.address, deposit * providers)
        # The name is derived from the key too: a validator restarted mid-probe gets the
        # same agent folder, so its buyer finds (and closes) the channels it opened.
        buyer = Agent(
            probe_name(key),
            wallet=account,
            home=self.agent.home,
            config=config,
            rpc_url=self.agent.chain.rpc_url,
            throwaway_devnet=False,
        )
        try:
            async with buyer:
                yield buyer
        finally:
            probe_wallet = Wallet(account, self.agent.chain.w3, name="probe")
            await sweep(
                probe_wallet,
                TokenClient(probe_wallet, self.agent.token_address),
                self.agent.address,
            )
        if not buyer.started and _all_closed(buyer):
            _forget_folder(buyer.agent_dir, buyer.home, buyer.address)

    async def _probe_one(self, buyer: Agent, card: AgentCard) -> ProbeOutcome:
        model = self.agent.model
        can_reexecute = bool(
            model is not None
            and card.model_sha256
            and card.model_sha256 == model.sha256
            and hasattr(model, "embed")
        )
        plan = plan_probes(
            self._rng,
            canaries=self.settings.canaries,
            reexec=self.settings.reexec,
            can_reexecute=can_reexecute,
        )
        answers, failures = await self._ask(buyer, card, plan)
        passed = sum(
            canary_passes(
                answers.get((i, 0)), answers.get((i, 1)), answers.get((i, 2)), answers.get((i, 3))
            )
            for i in range(len(plan.canaries))
        )
        matched = 0
        for j, text in enumerate(plan.reexec):
            own = await model.embed(text)  # type: ignore[union-attr]
            matched += reexec_passes(answers.get((-1, j)), own)
        return ProbeOutcome(
            provider=card.address,
            canaries_passed=passed,
            canaries=len(plan.canaries),
            reexec_passed=matched,
            reexec=len(plan.reexec),
            failures=tuple(failures),
        )

    async def _ask(
        self, buyer: Agent, card: AgentCard, plan: ProbePlan
    ) -> tuple[dict[tuple[int, int], Any], list[str]]:
        """Every call of ``plan`` in a random order (an anchor is asked twice, apart)."""
        calls: list[tuple[tuple[int, int], str]] = []
        for i, (anchor, paraphrase, unrelated) in enumerate(plan.canaries):
            calls += [((i, 0), anchor), ((i, 1), anchor), ((i, 2), paraphrase), ((i, 3), unrelated)]
        calls += [((-1, j), text) for j, text in enumerate(plan.reexec)]
        self._rng.shuffle(calls)
        answers: dict[tuple[int, int], Any] = {}
        failures: list[str] = []
        for key, text in calls:
            try:
                answers[key] = await buyer.call(card, self.settings.service, text=text)
            except AgentMeshError as exc:
                failures.append(exc.user_message)
        return answers, failures


def _all_closed(buyer: Agent) -> bool:
    """Whether every channel the probe identity opened is settled on chain."""
    from agentmesh.protocols.payment import ChannelPhase

    desk = getattr(buyer, "payer", None)
    return desk is not None and all(
        ch.phase == ChannelPhase.CLOSED for ch in desk.channels.values()
    )


def _forget_folder(folder: Path, home: Path, address: str) -> None:
    """Drop a finished probe identity's folders (its channels are all closed and its
    wallet swept), so a validator does not pile up one per epoch."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    for path in (home / "mesh").glob(f"{address}.db*"):
        path.unlink(missing_ok=True)


def embedding_judge(model: Any) -> Judge:
    """A juror's judgement of a disputed ``embed`` job: the result must be what
    ``model`` computes for the input (re-execution); other services: abstain."""

    async def judge(service: str, input_text: str, result_text: str) -> Vote | None:
        if service != "embed":
            return None
        try:
            text = json.loads(input_text)["text"]
            answer = json.loads(result_text)
        except (ValueError, KeyError, TypeError):
            return Vote.REFUND  # a result that is not even JSON is no delivery
        own = await model.embed(str(text))
        return Vote.RELEASE if reexec_passes(answer, own) else Vote.REFUND

    return judge


async def sweep(wallet: Wallet, token: TokenClient, to: str) -> None:
    """Send everything ``wallet`` holds (mUSD, then ETH less the gas) to ``to``."""
    balance = await token.balance_of(wallet.address)
    if balance > 0:
        await token.transfer(to, balance)
    await wallet.sweep_eth(to)
