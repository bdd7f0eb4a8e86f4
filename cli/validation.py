"""`agentmesh validators`, `agentmesh epoch show [N]`, `agentmesh dispute show ID`: what
the staked validators decided, read from the chain (no wallet, no password).

- ``validators``: every registered validator, its active stake, whether it holds a
  permit, and its agreement with consensus (its dividend share) in the last finalized
  epoch.
- ``epoch show [N]``: an epoch's phase (running, revealing, finalizable, finalized), who
  committed and revealed, and once finalized each provider's consensus score, incentive
  and reward and each validator's dividend and reward. ``N`` defaults to the last
  finalized epoch (or the current one if none is).
- ``dispute show ID``: a jury case (escrow job ``ID``): the parties, the jurors and
  their votes, the windows, what was shown, the verdict and the slash.

Amounts are mUSD in tables and base units (6 decimals) in ``--json``; incentives and
dividends are fractions (1.0 = all); times are chain time.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from agentmesh.errors import AgentMeshValueError

from .channel_rows import musd
from .context import AppState, JsonOption, console, print_json, run, state

if TYPE_CHECKING:
    from agentmesh.wallets.chain import Chain
    from agentmesh.wallets.consensus import ConsensusClient
    from agentmesh.wallets.jury import JuryClient
    from agentmesh.wallets.staking import StakingClient

ONE = 10**18
epoch_app = typer.Typer(help="Consensus epochs: scores, incentives, rewards.", no_args_is_help=True)
dispute_app = typer.Typer(help="Disputes decided by a jury of validators.", no_args_is_help=True)


@dataclass(slots=True)
class Readers:
    chain: Chain
    staking: StakingClient
    consensus: ConsensusClient
    jury: JuryClient

    async def now(self) -> int:
        from agentmesh.wallets.chain_clock import ChainClock

        return await ChainClock(self.chain.w3).now()


@contextlib.asynccontextmanager
async def readers(app_state: AppState) -> AsyncIterator[Readers]:
    """The chain and the suite's Staking, Consensus and Jury, read with a throw-away key."""
    from agentmesh.wallets.chain import open_chain

    async with open_chain(app_state.home, app_state.config, allow_embedded=False) as chain:
        yield readers_on(chain)


def readers_on(chain: Chain) -> Readers:
    """Readers of ``chain``'s Staking, Consensus and Jury (an error naming any missing)."""
    from eth_account import Account

    from agentmesh.wallets.consensus import ConsensusClient
    from agentmesh.wallets.jury import JuryClient
    from agentmesh.wallets.staking import StakingClient
    from agentmesh.wallets.wallet import Wallet

    missing = [n for n in ("Staking", "Consensus", "Jury") if n not in chain.deployment.contracts]
    if missing:
        raise AgentMeshValueError(
            f"this chain's agentmesh deployment has no {', '.join(missing)}: restart the "
            "devnet (`agentmesh devnet up`) to add them"
        )
    wallet = Wallet(Account.create(), chain.w3)
    deployment = chain.deployment
    return Readers(
        chain,
        StakingClient(wallet, deployment.address("Staking")),
        ConsensusClient(wallet, deployment.address("Consensus")),
        JuryClient(wallet, deployment.address("Jury")),
    )


async def last_finalized(r: Readers) -> int | None:
    return await r.consensus.last_finalized(r.chain.deployment.block_number)


# ---------------------------------------------------------------------- validators


def validators(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Registered validators: stake, permit, and agreement in the last finalized epoch."""
    app_state = state(ctx)

    async def body() -> dict[str, Any]:
        async with readers(app_state) as r:
            current = await r.consensus.current_epoch()
            epoch = await last_finalized(r)
            rows: list[dict[str, Any]] = []
            for address in await r.staking.validators():
                info = await r.staking.stake_of(address)
                rows.append(
                    {
                        "address": address,
                        "active": info.active,
                        "unbonding": info.unbonding,
                        "permit": await r.staking.has_permit(address),
                        "agreement": (await r.consensus.dividend_of(epoch, address)) / ONE
                        if epoch is not None
                        else None,
                    }
                )
            rows.sort(key=lambda row: -row["active"])
            return {"current_epoch": current, "last_finalized": epoch, "validators": rows}

    info = run(body())
    if json_out:
        print_json(info)
        return
    where = f"epoch {info['last_finalized']}" if info["last_finalized"] is not None else "none yet"
    table = Table(title=f"validators (agreement: last finalized epoch, {where})")
    for column in ("validator", "active stake", "unbonding", "permit", "agreement"):
        table.add_column(column, justify="right")
    for row in info["validators"]:
        agreement = "" if row["agreement"] is None else f"{row['agreement']:.1%}"
        table.add_row(
            row["address"],
            musd(row["active"]),
            musd(row["unbonding"]),
            "yes" if row["permit"] else "no",
            agreement,
        )
    console.print(table)
    if not info["validators"]:
        console.print("no validator registered: `agentmesh stake add AMOUNT --validator`")


# ---------------------------------------------------------------------- epochs


@epoch_app.command("show")
def epoch_show(
    ctx: typer.Context,
    epoch: Annotated[
        int | None, typer.Argument(help="the epoch (default: the last finalized)", min=0)
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """An epoch: phase, commits and reveals; once finalized, scores, incentives, rewards."""
    app_state = state(ctx)

    async def body() -> dict[str, Any]:
        async with readers(app_state) as r:
            current = await r.consensus.current_epoch()
            n = epoch
            if n is None:
                n = await last_finalized(r)
                n = current if n is None else n
            if n > current:
                raise AgentMeshValueError(f"epoch {n} has not started (current: {current})")
            return await epoch_report(r, n, current)

    info = run(body())
    if json_out:
        print_json(info)
        return
    console.print(
        f"epoch {info['epoch']}: {info['phase']} (ends {info['ends']}, reveals until "
        f"{info['reveal_until']}); reward pool now {musd(info['pool'])} mUSD"
    )
    table = Table(title="validators")
    for column in ("validator", "committed", "revealed", "stake", "dividend", "reward"):
        table.add_column(column, justify="right")
    for v in info["validators"]:
        table.add_row(
            v["address"],
            "yes" if v["committed"] else "no",
            "yes" if v["revealed"] else "no",
            musd(v["stake"]),
            "" if v["dividend"] is None else f"{v['dividend']:.1%}",
            musd(v["reward"]),
        )
    console.print(table)
    if info["finalized"]:
        providers = Table(title="providers")
        for column in ("provider", "consensus score", "incentive", "reward"):
            providers.add_column(column, justify="right")
        for p in info["providers"]:
            providers.add_row(
                p["address"], f"{p['score']:,}", f"{p['incentive']:.1%}", musd(p["reward"])
            )
        console.print(providers)


async def epoch_report(r: Readers, epoch: int, current: int) -> dict[str, Any]:
    ends = await r.consensus.epoch_end(epoch)
    window = await r.consensus.reveal_window()
    now = await r.now()
    finalized = await r.consensus.finalized(epoch)
    if finalized:
        phase = "finalized"
    elif now < ends:
        phase = "running"
    elif now < ends + window:
        phase = "revealing"
    else:
        phase = "finalizable"
    contract = r.consensus.contract
    committed = await contract.events.Committed().get_logs(
        from_block=r.chain.deployment.block_number, argument_filters={"epoch": epoch}
    )
    rewarded = {
        e["args"]["validator"]: int(e["args"]["reward"])
        for e in await contract.events.ValidatorRewarded().get_logs(
            from_block=r.chain.deployment.block_number, argument_filters={"epoch": epoch}
        )
    }
    revealed = set(await r.consensus.contract.functions.revealedOf(epoch).call())
    validators = [
        {
            "address": e["args"]["validator"],
            "committed": True,
            "revealed": e["args"]["validator"] in revealed,
            "stake": int(e["args"]["stake"]),
            "dividend": (await r.consensus.dividend_of(epoch, e["args"]["validator"])) / ONE
            if finalized
            else None,
            "reward": rewarded.get(e["args"]["validator"], 0),
        }
        for e in committed
    ]
    providers = []
    if finalized:
        for e in await contract.events.ProviderScored().get_logs(
            from_block=r.chain.deployment.block_number, argument_filters={"epoch": epoch}
        ):
            providers.append(
                {
                    "address": e["args"]["provider"],
                    "score": int(e["args"]["consensus"]),
                    "incentive": int(e["args"]["incentive"]) / ONE,
                    "reward": int(e["args"]["reward"]),
                }
            )
    return {
        "epoch": epoch,
        "current_epoch": current,
        "phase": phase,
        "ends": ends,
        "reveal_until": ends + window,
        "finalized": finalized,
        "pool": await r.consensus.pool(),
        "validators": validators,
        "providers": providers,
    }


# ---------------------------------------------------------------------- disputes


@dispute_app.command("show")
def dispute_show(
    ctx: typer.Context,
    job: Annotated[int, typer.Argument(help="the escrow job id of the case", min=1)],
    json_out: JsonOption = False,
) -> None:
    """A jury case: parties, jurors and votes, windows, evidence, verdict and slash."""
    app_state = state(ctx)

    async def body() -> dict[str, Any]:
        async with readers(app_state) as r:
            case = await r.jury.case(job)
            if int(case.client, 16) == 0:
                raise AgentMeshValueError(f"job {job} was never brought before the jury")
            votes = []
            for juror in case.jurors:
                committed, vote = await r.jury.vote_of(job, juror)
                votes.append({"juror": juror, "committed": committed, "vote": vote.name.lower()})
            return {
                "job": job,
                "client": case.client,
                "provider": case.provider,
                "opened": case.opened,
                "drawn": case.drawn,
                "evidence_ends": case.evidence_ends,
                "commit_ends": case.commit_ends,
                "reveal_ends": case.reveal_ends,
                "input_shown": case.input_shown,
                "result_shown": case.result_shown,
                "jurors": votes,
                "verdict": case.verdict.label,
                "slashed": case.slashed,
                "compensation": case.compensation,
                "chain_time": await r.now(),
            }

    info = run(body())
    if json_out:
        print_json(info)
        return
    console.print(
        f"job {info['job']}: client {info['client']}, provider {info['provider']}; verdict "
        f"[bold]{info['verdict']}[/]"
    )
    shown = [k for k in ("input", "result") if info[f"{k}_shown"]]
    console.print(f"shown to the jury: {', '.join(shown) or 'nothing yet'}")
    if info["drawn"]:
        console.print(
            f"evidence until {info['evidence_ends']}, commits until {info['commit_ends']}, "
            f"reveals until {info['reveal_ends']} (now {info['chain_time']})"
        )
    table = Table(title="jurors")
    for column in ("juror", "committed", "vote"):
        table.add_column(column)
    for v in info["jurors"]:
        table.add_row(v["juror"], "yes" if v["committed"] else "no", v["vote"])
    console.print(table)
    if info["slashed"]:
        console.print(
            f"provider slashed {musd(info['slashed'])} mUSD; {musd(info['compensation'])} "
            "mUSD of it compensated the client"
        )
