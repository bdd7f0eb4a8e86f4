"""``agentmesh chain deploy | status | use | mint``: agentmesh on any EVM chain.

The devnet deploys itself; any other chain gets the suite from ``chain deploy``, paid by
a keystore wallet, which writes the deployment record agents read
(``<home>/deployments/<chain id>.json``). ``chain use`` points the home at the chain,
``chain status`` shows where it stands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from agentmesh.chain.deployment import Deployment
from agentmesh.chain.rpc import rpc_call
from agentmesh.cli.context import AppState, JsonOption, console, password, print_json, run, state
from agentmesh.config import CONFIG_FILE_NAME, check_config_text
from agentmesh.errors import AgentMeshValueError, DevnetError

app = typer.Typer(
    help="Deploy agentmesh to any EVM chain, point this home at it, and check it.",
    no_args_is_help=True,
)

UrlOption = Annotated[
    str | None,
    typer.Option("--rpc-url", help="the chain's JSON-RPC URL (default: [chain] rpc_url)"),
]


def record_path(home: Path, chain_id: int) -> Path:
    """Where a home keeps the deployment record of chain ``chain_id``."""
    return home / "deployments" / f"{chain_id}.json"


def load_record(path: Path, chain_id: int) -> Deployment | None:
    """The record at ``path`` (None if there is none); refused if it is another chain's."""
    if not path.exists():
        return None
    record = Deployment.load(path)
    if record.chain_id != chain_id:
        raise DevnetError(
            f"{path} records a deployment on chain {record.chain_id}, but the chain there "
            f"answers chain id {chain_id}: wrong URL, or a record copied under the wrong name"
        )
    return record


def _url(app_state: AppState, given: str | None) -> str:
    url = given or app_state.config.chain.rpc_url
    if not url:
        raise AgentMeshValueError("no chain: give --rpc-url URL (or set [chain] rpc_url)")
    if not url.startswith(("http://", "https://")):
        raise AgentMeshValueError(f"--rpc-url {url!r} is not an http:// or https:// URL")
    return url


def _gwei(wei: int) -> str:
    """Wei in gwei, to the wei (a quiet chain's base fee falls far below one gwei)."""
    from decimal import Decimal

    return f"{Decimal(wei) / 10**9:f}"


@app.command()
def deploy(
    ctx: typer.Context,
    wallet: Annotated[str, typer.Option("--wallet", help="keystore wallet that pays the fees")],
    rpc_url: UrlOption = None,
    confirmations: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="blocks each transaction waits for (default: [chain])"),
    ] = None,
    chain_id: Annotated[
        int | None, typer.Option("--chain-id", help="refuse unless the chain has this id")
    ] = None,
    router: Annotated[
        str | None,
        typer.Option(help="an existing Uniswap V2 Router02 for DeFi intents (none: no DeFi)"),
    ] = None,
    pool_eth: Annotated[
        str | None, typer.Option(help="with --router: open the WETH/mUSD pool with this ETH")
    ] = None,
    pool_musd: Annotated[
        str | None, typer.Option(help="... and this much mUSD, minted by the wallet")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="deploy a new suite even if the recorded one is live")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Deploy the agentmesh contracts from WALLET and write the deployment record."""
    from agentmesh.wallets.keystore import Keystore
    from agentmesh.wallets.units import ETH_DECIMALS, MUSD_DECIMALS, parse_amount

    app_state = state(ctx)
    url = _url(app_state, rpc_url)
    if (pool_eth is None) != (pool_musd is None):
        raise AgentMeshValueError("give --pool-eth and --pool-musd together")
    if pool_eth is not None and router is None:
        raise AgentMeshValueError("--pool-eth/--pool-musd open a pool on --router: give it")
    pool = None
    if pool_eth is not None and pool_musd is not None:
        pool = (parse_amount(pool_eth, ETH_DECIMALS), parse_amount(pool_musd, MUSD_DECIMALS))
        if not all(pool):
            raise AgentMeshValueError("--pool-eth and --pool-musd must be above zero")
    if router is not None:
        from agentmesh.wallets.clients import checksum

        router = checksum(router)
    keystore = Keystore(app_state.home, scrypt_n=app_state.config.wallet.scrypt_n)
    keystore.entry(wallet)  # a missing wallet fails before the password prompt
    account = keystore.load(wallet, password(f"Password for {wallet}"))
    info = run(
        _deploy(app_state, url, account, wallet, confirmations, chain_id, router, pool, force)
    )
    if json_out:
        print_json(info)
        return
    table = Table(title=f"agentmesh on chain {info['chain_id']}", show_header=True)
    table.add_column("contract")
    table.add_column("address")
    table.add_column("code")
    for name, address in info["contracts"].items():
        table.add_row(name, address, info["code"].get(name, ""))
    console.print(table)
    console.print(
        f"paid {info['paid_eth']} ETH in fees (the suite's {info['transactions']} "
        f"transactions were estimated at most {info['estimated_eth']} ETH)\n"
        f"record {info['record']}\n"
        f"next: agentmesh chain use {url}"
    )


async def _deploy(
    app_state: AppState,
    url: str,
    account: Any,
    wallet_name: str,
    confirmations: int | None,
    expected_chain: int | None,
    router: str | None,
    pool: tuple[int, int] | None,
    force: bool,
) -> dict[str, Any]:
    from agentmesh.wallets.chain import connect, is_anvil, tx_policy_for
    from agentmesh.wallets.chain_deploy import (
        check_funds,
        deploy_to_chain,
        estimate_suite,
        require_matching,
        verify_code,
    )
    from agentmesh.wallets.sending import set_tx_policy
    from agentmesh.wallets.units import ETH_DECIMALS, format_amount
    from agentmesh.wallets.wallet import Wallet, guard_rpc

    config = app_state.config
    w3 = connect(url, config.chain.request_timeout_s)
    try:
        chain_id = int(await guard_rpc(w3.eth.chain_id, url))
        if expected_chain is not None and chain_id != expected_chain:
            raise DevnetError(
                f"the chain at {url} has id {chain_id}, not {expected_chain} (--chain-id): "
                "nothing deployed"
            )
        path = record_path(app_state.home, chain_id)
        recorded = load_record(path, chain_id)
        if recorded is not None and not force:
            states = await verify_code(w3, recorded, url)
            if all(state == "matches" for state in states.values()):
                raise DevnetError(
                    f"the suite recorded in {path} is live on chain {chain_id}; "
                    "--force deploys a new one (agents on the old one will not see it)"
                )
        if confirmations is not None:
            settings = config.chain.model_copy(update={"confirmations": confirmations})
            config = config.model_copy(update={"chain": settings})
        policy = await tx_policy_for(w3, config, anvil=await is_anvil(w3, url), rpc_url=url)
        set_tx_policy(w3, policy)
        payer = Wallet(account, w3, name=wallet_name)
        pool_wei = pool[0] if pool is not None else 0
        with console.status("estimating the cost..."):
            cost = await estimate_suite(payer, url)
            before = await check_funds(payer, cost, also=pool_wei)
        with console.status(
            f"deploying from {payer.address} ({policy.confirmations} confirmation(s) each)..."
        ):
            deployment = await deploy_to_chain(payer, url, router=router, pool=pool, record=path)
        with console.status("checking the code on chain..."):
            code = await verify_code(w3, deployment, url)
        require_matching(code, url)
        deployment.save(path)
        paid = before - await payer.eth_balance() - pool_wei  # fees only
        return {
            "chain_id": chain_id,
            "rpc_url": url,
            "deployer": payer.address,
            "record": str(path),
            "contracts": {name: c.address for name, c in deployment.contracts.items()},
            "exchange": deployment.exchange.model_dump() if deployment.exchange else None,
            "code": code,
            "confirmations": policy.confirmations,
            "transactions": cost.transactions,
            "estimated_gas": cost.gas,
            "estimated_eth": format_amount(cost.wei, ETH_DECIMALS),
            "paid_eth": format_amount(paid, ETH_DECIMALS),
        }
    finally:
        await w3.provider.disconnect()


@app.command()
def status(ctx: typer.Context, rpc_url: UrlOption = None, json_out: JsonOption = False) -> None:
    """Chain id, head, fee levels, the deployment record and whether its code matches."""
    app_state = state(ctx)
    url = _url(app_state, rpc_url)
    info = run(_status(app_state, url))
    if json_out:
        print_json(info)
        return
    console.print(
        f"chain {info['chain_id']} at {url} ({info['client']})\n"
        f"  head      block {info['head']} ({info['head_age_s']}s ago)\n"
        f"  base fee  {info['base_fee_gwei']} gwei, tip {info['tip_gwei']} gwei "
        f"(this home pays at most {info['max_fee_gwei']} gwei)\n"
        f"  sending   {info['confirmations']} confirmation(s); stuck transactions replaced "
        f"after {info['replace_after_s']}s"
    )
    if info["record"] is None:
        console.print(
            f"  record    none in {info['record_path']}: deploy with "
            f"`agentmesh chain deploy --rpc-url {url} --wallet NAME`"
        )
        return
    table = Table(title=f"record {info['record_path']}")
    table.add_column("contract")
    table.add_column("address")
    table.add_column("code on chain")
    for name, address in info["record"]["contracts"].items():
        table.add_row(name, address, info["code"][name])
    console.print(table)
    if not info["code_matches"]:
        console.print("[red]the code on chain does not match the record[/red]")


async def _status(app_state: AppState, url: str) -> dict[str, Any]:
    import time

    from agentmesh.wallets.chain import connect, tx_policy_for
    from agentmesh.wallets.chain_deploy import verify_code
    from agentmesh.wallets.sending import next_base_fee, suggested_tip
    from agentmesh.wallets.wallet import guard_rpc

    config = app_state.config
    w3 = connect(url, config.chain.request_timeout_s)
    try:
        chain_id = int(await guard_rpc(w3.eth.chain_id, url))
        head = await guard_rpc(w3.eth.get_block("latest"), url)
        base = await guard_rpc(next_base_fee(w3), url)
        tip = await guard_rpc(suggested_tip(w3), url)
        client = str(await guard_rpc(w3.client_version, url))
        anvil = "anvil" in client.lower()  # what is_anvil asks, without asking twice
        policy = await tx_policy_for(w3, config, anvil=anvil, rpc_url=url)
        path = record_path(app_state.home, chain_id)
        record = load_record(path, chain_id)
        code = await verify_code(w3, record, url) if record is not None else {}
        return {
            "chain_id": chain_id,
            "rpc_url": url,
            "client": client,
            "head": int(head["number"]),
            "head_age_s": max(0, int(time.time()) - int(head["timestamp"])),
            "base_fee_wei": base,
            "tip_wei": tip,
            "base_fee_gwei": _gwei(base),
            "tip_gwei": _gwei(tip),
            "max_fee_gwei": f"{config.chain.max_fee_gwei:g}",
            "confirmations": policy.confirmations,
            "replace_after_s": f"{policy.replace_after_s:g}",
            "record_path": str(path),
            "record": None
            if record is None
            else {
                "deployer": record.deployer,
                "block": record.block_number,
                "contracts": {name: c.address for name, c in record.contracts.items()},
                "exchange": record.exchange.router if record.exchange else None,
            },
            "code": code,
            "code_matches": bool(code) and all(s == "matches" for s in code.values()),
        }
    finally:
        await w3.provider.disconnect()


@app.command()
def use(
    ctx: typer.Context,
    rpc_urls: Annotated[
        list[str], typer.Argument(help="the chain's endpoints, in the order to try them")
    ],
) -> None:
    """Point this home at a chain: writes [chain] rpc_url (and fallback_rpc_urls) to
    config.toml, once the chain answers and the recorded suite's code matches."""
    import tomlkit

    app_state = state(ctx)
    for url in rpc_urls:
        if not url.startswith(("http://", "https://")):
            raise AgentMeshValueError(f"{url!r} is not an http:// or https:// URL")
    info = run(_status(app_state, rpc_urls[0]))
    for url in rpc_urls[1:]:
        # A fallback of another chain (or a fork) would answer with other state.
        other = int(
            rpc_call(url, "eth_chainId", timeout=app_state.config.chain.request_timeout_s), 16
        )
        if other != info["chain_id"]:
            raise DevnetError(
                f"{url} is chain {other}, not chain {info['chain_id']} like {rpc_urls[0]}: "
                "every endpoint given must serve the same chain"
            )
    if info["record"] is None:
        raise DevnetError(
            f"no deployment record for chain {info['chain_id']} in {info['record_path']}: "
            f"deploy first (`agentmesh chain deploy --rpc-url {rpc_urls[0]} --wallet NAME`) "
            "or copy the record of the suite you want to use there"
        )
    if not info["code_matches"]:
        raise DevnetError(
            f"the code on chain {info['chain_id']} does not match {info['record_path']}: "
            f"{info['code']}"
        )
    path = app_state.home / CONFIG_FILE_NAME
    document = (
        tomlkit.parse(path.read_text(encoding="utf-8")) if path.exists() else tomlkit.document()
    )
    section = document.get("chain")
    if section is None:
        section = tomlkit.table()
        document["chain"] = section
    section["rpc_url"] = rpc_urls[0]
    if rpc_urls[1:]:
        section["fallback_rpc_urls"] = rpc_urls[1:]
    elif "fallback_rpc_urls" in section:
        del section["fallback_rpc_urls"]
    text = tomlkit.dumps(document)
    check_config_text(text, path)  # a bad edit is named here, before the file changes
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    console.print(
        f"{path}: agents of this home now use chain {info['chain_id']} at "
        f"{', '.join(rpc_urls)} (record {info['record_path']})"
    )


@app.command()
def mint(
    ctx: typer.Context,
    who: Annotated[str, typer.Argument(help="wallet name or address")],
    amount: Annotated[str, typer.Argument(help="mUSD, e.g. 100")],
    wallet: Annotated[str, typer.Option("--wallet", help="the suite's deployer (MeshUSD owner)")],
) -> None:
    """Mint mUSD as the suite's deployer (the owner of MeshUSD on a `chain deploy` chain)."""
    from agentmesh.cli.context import musd_amount
    from agentmesh.cli.wallet import _load_wallet, _resolve_address

    app_state = state(ctx)
    units = musd_amount(amount, "amount")
    address = _resolve_address(app_state, who)
    account = _load_wallet(app_state, wallet)

    async def body() -> str:
        from agentmesh.wallets.chain import open_chain
        from agentmesh.wallets.clients import TokenClient
        from agentmesh.wallets.wallet import Wallet

        async with open_chain(app_state.home, app_state.config, allow_embedded=False) as chain:
            owner = Wallet(account, chain.w3, name=wallet)
            if owner.address.lower() != chain.deployment.deployer.lower():
                raise AgentMeshValueError(
                    f"{wallet} ({owner.address}) did not deploy this suite: only its deployer "
                    f"{chain.deployment.deployer} owns MeshUSD"
                )
            with console.status("minting..."):
                receipt = await TokenClient(owner, chain.token_address).mint(address, units)
            return "0x" + bytes(receipt["transactionHash"]).hex()

    tx = run(body())
    console.print(f"minted {amount} mUSD to {who} {address}\ntx {tx}")
