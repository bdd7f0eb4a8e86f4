"""``agentmesh demo validation``: staked validators score three providers, a jury
settles a dispute.

Starts a throw-away devnet; three providers sell ``embed`` on the local model (an honest
one, one answering garbage, one declaring the model but answering something else), each
staking 20 mUSD; three validators stake 40, 30 and 20 mUSD and register for permits; a
buyer names the jury as its arbiter. For each epoch (at least two) every validator
probes every provider through the market as a fresh buyer (canaries, re-execution),
commits its scores, reveals them after the epoch, and the epoch is finalized: the
consensus score and incentive of each provider and the rewards of the epoch's pool
(the protocol fees, plus a treasury's grant standing in for a busy market's) are
printed. Between the epochs the buyer buys an embedding from the garbage provider,
rejects it and disputes it: a jury of the validators decides, and the provider is
slashed. The chain's clock is moved to the end of each window instead of waiting.

Ends with the conservation check across every holder (wallets, probe identities,
escrow, channels, staking, jury, reward pool), before = after. Exit 1 if it fails, the
dispute was not decided against the garbage provider, or the honest provider does not
hold most of the last epoch's incentive.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from agentmesh.cli.console.homes import demo_folder
from agentmesh.cli.context import console, err_console, print_json
from agentmesh.errors import AgentMeshError

PROVIDERS = ("honest", "garbage", "impostor")
VALIDATORS = {"validator-a": 40, "validator-b": 30, "validator-c": 20}  # whole mUSD staked
BUYER = "buyer"
PROVIDER_STAKE = 20
TREASURY_GRANT = 3  # whole mUSD added to the reward pool each epoch
SCRYPT_N = 2**14
TICKET = "The parcel arrived two weeks late and the box was crushed."
ONE = 10**18


def _musd(units: int) -> str:
    from agentmesh.wallets.units import MUSD_DECIMALS, format_amount

    return format_amount(units, MUSD_DECIMALS)


async def _advance_to(chain: Any, when: int) -> None:
    """Move the devnet's clock to ``when`` (chain time) and mine a block there."""
    from agentmesh.wallets.chain_clock import ChainClock

    now = await ChainClock(chain.w3).now()
    if when > now:
        await chain.w3.provider.make_request("evm_increaseTime", [when - now])
    await chain.w3.provider.make_request("evm_mine", [])


@dataclass
class Stage:
    """The demo's devnet, contracts (as the treasury: the devnet deployer) and cast."""

    chain: Any
    home: Path
    out: Any
    token: Any
    consensus: Any
    jury: Any
    accounts: dict[str, Any]
    holders: dict[str, str] = field(default_factory=dict)
    cast: dict[str, Any] = field(default_factory=dict)
    validators: dict[str, Any] = field(default_factory=dict)
    model: Any = None


async def _demo(app_home: Path, epochs: int, json_out: bool) -> dict[str, Any]:
    from agentmesh.config import Config, DevnetConfig, WalletConfig
    from agentmesh.wallets.chain import open_chain

    out = err_console if json_out else console
    started = time.monotonic()
    with demo_folder(app_home, "validation") as home:
        config = Config(
            devnet=DevnetConfig(dev_account_musd=0), wallet=WalletConfig(scrypt_n=SCRYPT_N)
        )
        async with contextlib.AsyncExitStack() as stack:
            with out.status("starting devnet and deploying contracts..."):
                chain = await stack.enter_async_context(open_chain(home, config))
            out.print(f"[green]✓[/] devnet {chain.rpc_url}, contracts deployed")
            st = await _wallets(chain, home, out, epochs)
            first = await st.consensus.current_epoch() + 1
            _probe_identities(st, range(first, first + epochs))
            before = {n: await st.token.balance_of(a) for n, a in st.holders.items()}
            await _start_cast(st, stack)
            epoch_rows: list[dict[str, Any]] = []
            disputes: list[dict[str, Any]] = []
            for epoch in range(first, first + epochs):
                epoch_rows.append(await _run_epoch(st, epoch))
                if epoch == first:
                    disputes.append(await _dispute(st))
            purchase = await _ranked_purchase(st)
            for agent in st.cast.values():  # everyone takes its rewards home
                if await st.consensus.claimable(agent.address) > 0:
                    await st.consensus.as_wallet(agent.wallet).claim()
            after = {n: await st.token.balance_of(a) for n, a in st.holders.items()}
            report: dict[str, Any] = {
                "epochs": epoch_rows,
                "disputes": disputes,
                "purchase": purchase,
                "balances": {n: {"before": before[n], "after": after[n]} for n in st.holders},
                "conservation": {
                    "before": sum(before.values()),
                    "after": sum(after.values()),
                    "holders": len(st.holders),
                    "ok": sum(before.values()) == sum(after.values()),
                },
                "seconds": round(time.monotonic() - started, 1),
            }
        if json_out:
            print_json(report)
        else:
            _print(report)
        _check(report)
    return report


async def _wallets(chain: Any, home: Path, out: Any, epochs: int) -> Stage:
    """Keystores for the cast, funded and staked; the treasury's grants minted."""
    from web3.types import Wei

    from agentmesh.wallets.clients import TokenClient
    from agentmesh.wallets.consensus import ConsensusClient
    from agentmesh.wallets.deployer import dev_deployer
    from agentmesh.wallets.jury import JuryClient
    from agentmesh.wallets.keystore import Keystore
    from agentmesh.wallets.staking import StakingClient
    from agentmesh.wallets.units import MUSD_DECIMALS
    from agentmesh.wallets.wallet import Wallet

    chain.deployment.save(home / "deployments" / f"{chain.deployment.chain_id}.json")
    (home / "config.toml").write_text(
        f'[chain]\nrpc_url = "{chain.rpc_url}"\n[wallet]\nscrypt_n = {SCRYPT_N}\n'
        '[agent]\nfaucet = false\narbiter = "jury"\n[mesh]\nheartbeat_s = 0.5\n'
    )
    unit = 10**MUSD_DECIMALS
    treasury = dev_deployer(chain.w3)
    password = secrets.token_urlsafe(16)
    keystore = Keystore(home, scrypt_n=SCRYPT_N)
    names = [*PROVIDERS, *VALIDATORS, BUYER]
    for name in names:
        keystore.create(name, password)
    st = Stage(
        chain=chain,
        home=home,
        out=out,
        token=TokenClient(treasury, chain.token_address),
        consensus=ConsensusClient(treasury, chain.deployment.address("Consensus")),
        jury=JuryClient(treasury, chain.deployment.address("Jury")),
        accounts={name: keystore.load(name, password) for name in names},
    )
    for account in st.accounts.values():
        await treasury.send({"to": account.address, "value": Wei(10**19)})
        await st.token.mint(account.address, 60 * unit)
    await st.token.mint(treasury.address, epochs * TREASURY_GRANT * unit)
    staking = StakingClient(treasury, chain.deployment.address("Staking"))
    for name in PROVIDERS:
        await staking.as_wallet(Wallet(st.accounts[name], chain.w3)).stake(PROVIDER_STAKE * unit)
    for name, whole in VALIDATORS.items():
        mine = staking.as_wallet(Wallet(st.accounts[name], chain.w3))
        await mine.stake(whole * unit)
        await mine.register_validator()
    out.print(
        f"[green]✓[/] staked: providers {PROVIDER_STAKE} mUSD each; validators "
        + ", ".join(f"{n} {w}" for n, w in VALIDATORS.items())
        + " mUSD (permits)"
    )
    st.holders = {name: account.address for name, account in st.accounts.items()}
    st.holders["treasury"] = treasury.address
    for contract in ("TaskEscrow", "PaymentChannel", "Staking", "Jury", "Consensus"):
        st.holders[contract] = chain.deployment.address(contract)
    return st


def _probe_identities(st: Stage, epochs: range) -> None:
    """Count the validators' probe identities (fresh each epoch, emptied after probing)
    among the holders."""
    from eth_account import Account

    from agentmesh.agents.validator import probe_key

    for v in VALIDATORS:
        key = bytes(st.accounts[v].key)
        for e in epochs:
            probe = Account.from_key(probe_key(key, st.consensus.address, e))
            st.holders[f"probe {v} e{e}"] = probe.address


async def _start_cast(st: Stage, stack: contextlib.AsyncExitStack) -> None:
    from agentmesh.agents.agent import Agent
    from agentmesh.agents.validation_cast import (
        garbage_embedder,
        honest_embedder,
        impostor_embedder,
    )
    from agentmesh.agents.validator import Validator, ValidatorSettings
    from agentmesh.config import load_config
    from agentmesh.llm import LocalModel

    with st.out.status("loading the model and starting agents..."):
        st.model = model = LocalModel.default()
        stack.callback(model.close)
        config = load_config(st.home)
        st.cast = {
            "honest": honest_embedder("honest", model=model),
            "garbage": garbage_embedder("garbage"),
            "impostor": impostor_embedder("impostor", model=model),
            **{v: Agent(v, model=model) for v in VALIDATORS},
            BUYER: Agent(BUYER, model=model),
        }
        for name, agent in st.cast.items():
            agent.bind(home=st.home, config=config, wallet=st.accounts[name])
            await stack.enter_async_context(agent)
        settings = ValidatorSettings(canaries=2, reexec=2)
        st.validators = {v: Validator(st.cast[v], settings) for v in VALIDATORS}
        for role in st.validators.values():
            stack.callback(role.close)
        await st.cast[BUYER].wait_for_providers("embed", count=3, timeout=60)
    st.out.print("[green]✓[/] three providers of embed on the mesh; three validators")


async def _run_epoch(st: Stage, epoch: int) -> dict[str, Any]:
    """One epoch: the treasury's grant, probes and commits, reveals, finalization."""
    from agentmesh.wallets.units import MUSD_DECIMALS

    consensus = st.consensus
    await _advance_to(st.chain, await consensus.epoch_end(epoch - 1) + 1)
    await consensus.fund(TREASURY_GRANT * 10**MUSD_DECIMALS)
    probe_s = 0.0
    with st.out.status(f"epoch {epoch}: validators probe the providers..."):
        for role in st.validators.values():
            probe_s += (await role.score_and_commit(epoch)).seconds
    await _advance_to(st.chain, await consensus.epoch_end(epoch) + 1)
    for role in st.validators.values():
        await role.reveal_due(await role.agent.clock.now())
    window = await consensus.reveal_window()
    await _advance_to(st.chain, await consensus.epoch_end(epoch) + window + 1)
    pool = await consensus.pool()
    await consensus.finalize(epoch)
    row = await _epoch_row(consensus, epoch, st.cast, st.validators, pool, probe_s)
    st.out.print(f"[green]✓[/] epoch {epoch} finalized")
    return row


async def _epoch_row(
    consensus: Any,
    epoch: int,
    cast: dict[str, Any],
    validators: dict[str, Any],
    pool: int,
    probe_s: float,
) -> dict[str, Any]:
    """What finalizing ``epoch`` decided, from the contract's records and events."""
    finalized = await consensus.contract.events.ProviderScored().get_logs(
        from_block=0, argument_filters={"epoch": epoch}
    )
    rewarded = await consensus.contract.events.ValidatorRewarded().get_logs(
        from_block=0, argument_filters={"epoch": epoch}
    )
    provider_reward = {e["args"]["provider"]: int(e["args"]["reward"]) for e in finalized}
    validator_reward = {e["args"]["validator"]: int(e["args"]["reward"]) for e in rewarded}
    providers = {}
    for name in PROVIDERS:
        address = cast[name].address
        providers[name] = {
            "address": address,
            "score": await consensus.consensus_of(epoch, address),
            "incentive": (await consensus.incentive_of(epoch, address)) / ONE,
            "reward": provider_reward.get(address, 0),
        }
    rows = {}
    for name, role in validators.items():
        address = cast[name].address
        record = role.store.get(epoch)
        rows[name] = {
            "address": address,
            "scores": dict(
                zip(
                    [_name(cast, p) for p in record.sheet.providers],
                    record.sheet.scores,
                    strict=True,
                )
            )
            if record
            else {},
            "dividend": (await consensus.dividend_of(epoch, address)) / ONE,
            "reward": validator_reward.get(address, 0),
        }
    return {
        "epoch": epoch,
        "pool": pool,
        "providers": providers,
        "validators": rows,
        "probe_seconds_per_provider": round(probe_s / (len(validators) * len(PROVIDERS)), 3),
    }


def _name(cast: dict[str, Any], address: str) -> str:
    return next((n for n, a in cast.items() if a.address.lower() == address.lower()), address)


async def _dispute(st: Stage) -> dict[str, Any]:
    """The buyer buys an embedding from the garbage provider, rejects and disputes it;
    the parties' and the jurors' agents take it from there (their jury steps are run
    here in turn instead of on their timers)."""
    from agentmesh.agents.outcome import TaskFailed
    from agentmesh.agents.probes import cosine
    from agentmesh.wallets.jury import Verdict

    cast, jury, out = st.cast, st.jury, st.out
    buyer = cast[BUYER]
    own = await st.model.embed(TICKET)
    with out.status("dispute: the buyer buys from the garbage provider..."):
        try:
            await buyer.buy(
                "embed",
                text=TICKET,
                budget="0.01",
                providers=[cast["garbage"].address],
                check=lambda v: cosine(v, own) >= 0.99,
            )
        except TaskFailed as exc:
            job_id = exc.outcome.job_id
        else:
            raise AgentMeshError("the buyer accepted a garbage embedding")
    if job_id is None:
        raise AgentMeshError("the disputed purchase has no escrow job")
    with out.status(f"dispute: job {job_id} before a jury of validators..."):
        parties = [buyer, cast["garbage"], *(cast[v] for v in VALIDATORS)]
        for _ in range(20):
            for agent in parties:
                if agent.jury_duty is not None:
                    await agent.jury_duty.tick()
            case = await jury.case(job_id)
            if case.verdict != Verdict.NONE:
                break
        else:
            raise AgentMeshError(f"the jury did not decide job {job_id}")
    votes = {}
    for juror in case.jurors:
        _, vote = await jury.vote_of(job_id, juror)
        votes[_name(cast, juror)] = vote.name.lower()
    out.print(f"[green]✓[/] job {job_id}: the jury decided {case.verdict.label}")
    return {
        "job": job_id,
        "provider": "garbage",
        "jurors": [_name(cast, j) for j in case.jurors],
        "votes": votes,
        "verdict": case.verdict.label,
        "slashed": case.slashed,
        "compensation": case.compensation,
    }


async def _ranked_purchase(st: Stage) -> dict[str, Any]:
    """One ordinary purchase after the epochs: the buyer ranks the three proposals by
    price, reputation, latency and the validators' consensus score."""
    outcome = await st.cast[BUYER].buy("embed", text=TICKET, budget="0.01")
    winner = _name(st.cast, outcome.provider)
    st.out.print(f"[green]✓[/] an ordinary purchase of an embedding went to {winner}")
    return {"winner": winner, "price": outcome.price, "settled": outcome.settled}


def _print(report: dict[str, Any]) -> None:
    for row in report["epochs"]:
        table = Table(title=f"epoch {row['epoch']}: reward pool {_musd(row['pool'])} mUSD")
        for column in ("provider", "consensus score", "incentive", "reward (mUSD)"):
            table.add_column(column, justify="right")
        for name, p in row["providers"].items():
            table.add_row(name, f"{p['score']:,}", f"{p['incentive']:.1%}", _musd(p["reward"]))
        console.print(table)
        validators = Table(title=f"epoch {row['epoch']}: validators")
        for column in ("validator", "scores given", "dividend", "reward (mUSD)"):
            validators.add_column(column, justify="right")
        for name, v in row["validators"].items():
            scores = ", ".join(f"{p} {s:,}" for p, s in sorted(v["scores"].items()))
            validators.add_row(name, scores, f"{v['dividend']:.1%}", _musd(v["reward"]))
        console.print(validators)
        console.print(
            f"probing took {row['probe_seconds_per_provider']} s per provider per validator"
        )
    for d in report["disputes"]:
        votes = ", ".join(f"{j}: {v}" for j, v in d["votes"].items())
        console.print(
            f"dispute over job {d['job']} ({d['provider']}): jurors {votes}; verdict "
            f"[bold]{d['verdict']}[/]; slashed {_musd(d['slashed'])} mUSD, of which "
            f"{_musd(d['compensation'])} compensated the buyer"
        )
    bought = report["purchase"]
    console.print(
        f"a buyer ranking by consensus score too bought from {bought['winner']} "
        f"({_musd(bought['price'])} mUSD)"
    )
    c = report["conservation"]
    mark = "[green]✓[/]" if c["ok"] else "[red]✗[/]"
    console.print(
        f"{mark} conservation across {c['holders']} holders (wallets, probe identities, escrow, "
        f"channels, staking, jury, reward pool): {_musd(c['before'])} mUSD before = "
        f"{_musd(c['after'])} after"
    )


def _check(report: dict[str, Any]) -> None:
    if not report["conservation"]["ok"]:
        raise AgentMeshError("conservation check failed: see the balances (--json)")
    dispute = report["disputes"][0]
    if dispute["verdict"] != "refund" or dispute["slashed"] <= 0:
        raise AgentMeshError(f"the dispute ended {dispute['verdict']}, not refund with a slash")
    last = report["epochs"][-1]["providers"]
    if (
        last["honest"]["incentive"] <= 0.5
        or max(last["garbage"]["incentive"], last["impostor"]["incentive"]) > 0.05
    ):
        raise AgentMeshError("the honest provider does not hold most of the incentive")
    if report["purchase"]["winner"] != "honest" or not report["purchase"]["settled"]:
        raise AgentMeshError(f"the ranked purchase went to {report['purchase']['winner']}")


def run_demo(app_home: Path, epochs: int, json_out: bool) -> None:
    from agentmesh.cli.context import run

    run(_demo(app_home, epochs, json_out))
