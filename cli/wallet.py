"""``agentmesh wallet new | import | list | show | balance | send | fund``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from agentmesh.cli.context import AppState, JsonOption, console, password, print_json, run, state
from agentmesh.errors import AgentMeshValueError, DevnetError

if TYPE_CHECKING:
    from agentmesh.wallets.chain import Chain
    from agentmesh.wallets.keystore import Keystore

app = typer.Typer(
    help="Encrypted wallets: create, import, inspect, pay, fund.", no_args_is_help=True
)

PRIVATE_KEY_ENV = "AGENTMESH_PRIVATE_KEY"


def _keystore(app_state: AppState) -> Keystore:
    from agentmesh.wallets.keystore import Keystore

    return Keystore(app_state.home, scrypt_n=app_state.config.wallet.scrypt_n)


def _resolve_address(app_state: AppState, who: str) -> str:
    """A wallet name in this home, or an address."""
    from agentmesh.wallets.clients import checksum

    if who.startswith("0x"):
        return checksum(who)
    return _keystore(app_state).entry(who).address


@app.command()
def new(ctx: typer.Context, name: str) -> None:
    """Create a wallet with a fresh key, encrypted with your password."""
    app_state = state(ctx)
    keystore = _keystore(app_state)
    if keystore.path_for(name).exists():  # fail before asking for a password
        from agentmesh.errors import WalletExistsError

        raise WalletExistsError(f"wallet {name!r} already exists in {keystore.directory}")
    secret = password("New password", confirm=True)
    with console.status("encrypting keystore (scrypt)..."):
        entry = keystore.create(name, secret)
    console.print(f"created wallet [bold]{entry.name}[/] {entry.address}")
    console.print(f"keystore: {entry.path} (mode 0600)")


@app.command("import")
def import_(
    ctx: typer.Context,
    name: str,
    key_file: Annotated[Path | None, typer.Option(help="file holding the hex private key")] = None,
) -> None:
    """Import a private key (from --key-file, AGENTMESH_PRIVATE_KEY, or a hidden prompt)."""
    app_state = state(ctx)
    keystore = _keystore(app_state)
    keystore.path_for(name)
    if key_file is not None:
        try:
            key = key_file.read_text().strip()
        except OSError as exc:
            raise AgentMeshValueError(f"cannot read key file {key_file}: {exc.strerror}") from None
    elif os.environ.get(PRIVATE_KEY_ENV):
        key = os.environ[PRIVATE_KEY_ENV]
    else:
        key = typer.prompt("Private key (hex)", hide_input=True)
    secret = password("New password", confirm=True)
    with console.status("encrypting keystore (scrypt)..."):
        entry = keystore.import_key(name, key, secret)
    console.print(f"imported wallet [bold]{entry.name}[/] {entry.address}")


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """List the wallets in this home."""
    entries = _keystore(state(ctx)).list()
    if json_out:
        print_json([{"name": e.name, "address": e.address, "path": str(e.path)} for e in entries])
        return
    if not entries:
        console.print("no wallets yet: create one with `agentmesh wallet new NAME`")
        return
    table = Table("name", "address", "keystore")
    table.columns[1].no_wrap = True
    table.columns[1].min_width = 42
    for e in entries:
        table.add_row(e.name, e.address, str(e.path))
    console.print(table)


@app.command()
def show(ctx: typer.Context, name: str, json_out: JsonOption = False) -> None:
    """Show a wallet's address and keystore file (no password needed)."""
    entry = _keystore(state(ctx)).entry(name)
    if json_out:
        print_json({"name": entry.name, "address": entry.address, "path": str(entry.path)})
        return
    console.print(f"[bold]{entry.name}[/]  {entry.address}\nkeystore: {entry.path}")


async def _balances(chain: Chain, address: str) -> dict[str, Any]:
    from agentmesh.wallets.clients import checksum
    from agentmesh.wallets.units import ETH_DECIMALS, MUSD_DECIMALS, format_amount
    from agentmesh.wallets.wallet import guard_rpc

    eth = int(await guard_rpc(chain.w3.eth.get_balance(checksum(address)), chain.rpc_url))
    contract = chain.contract("MeshUSD")
    musd = int(await guard_rpc(contract.functions.balanceOf(address).call(), chain.rpc_url))
    return {
        "address": address,
        "eth": format_amount(eth, ETH_DECIMALS),
        "musd": format_amount(musd, MUSD_DECIMALS),
        "eth_wei": eth,
        "musd_units": musd,
    }


@app.command()
def balance(ctx: typer.Context, who: str, json_out: JsonOption = False) -> None:
    """ETH and mUSD balance of a wallet (by name) or an address."""
    from agentmesh.wallets.chain import open_chain

    app_state = state(ctx)
    address = _resolve_address(app_state, who)

    async def body() -> dict[str, Any]:
        async with open_chain(app_state.home, app_state.config, allow_embedded=False) as chain:
            return await _balances(chain, address)

    info = run(body())
    if json_out:
        print_json(info)
    else:
        console.print(f"{who}  {address}\n  ETH   {info['eth']}\n  mUSD  {info['musd']}")


def _load_wallet(app_state: AppState, name: str) -> Any:
    keystore = _keystore(app_state)
    keystore.entry(name)  # fail on a missing wallet before asking for a password
    secret = password(f"Password for {name}")
    with console.status("decrypting keystore..."):
        return keystore.load(name, secret)


@app.command()
def send(
    ctx: typer.Context,
    name: str,
    to: Annotated[str, typer.Argument(help="recipient address or wallet name")],
    amount: Annotated[str, typer.Argument(help="amount in whole units, e.g. 1.5")],
    token: Annotated[str, typer.Option(help="musd or eth")] = "musd",
) -> None:
    """Send mUSD (default) or ETH from a wallet, and wait for the receipt."""
    from agentmesh.wallets.chain import open_chain
    from agentmesh.wallets.clients import TokenClient
    from agentmesh.wallets.units import ETH_DECIMALS, MUSD_DECIMALS, parse_amount
    from agentmesh.wallets.wallet import Wallet

    app_state = state(ctx)
    kind = token.lower()
    if kind not in ("musd", "eth"):
        raise AgentMeshValueError(f"unknown token {token!r}: use musd or eth")
    units = parse_amount(amount, MUSD_DECIMALS if kind == "musd" else ETH_DECIMALS)
    if units == 0:
        raise AgentMeshValueError("amount must be greater than zero")
    recipient = _resolve_address(app_state, to)
    account = _load_wallet(app_state, name)

    async def body() -> str:
        from web3.types import Wei

        async with open_chain(app_state.home, app_state.config, allow_embedded=False) as chain:
            wallet = Wallet(account, chain.w3, name=name)
            with console.status("waiting for the receipt..."):
                if kind == "musd":
                    receipt = await TokenClient(wallet, chain.token_address).transfer(
                        recipient, units
                    )
                else:
                    if await wallet.eth_balance() < units:
                        from agentmesh.errors import InsufficientFundsError

                        raise InsufficientFundsError(
                            f"{wallet.address} holds less than {amount} ETH"
                        )
                    receipt = await wallet.send({"to": recipient, "value": Wei(units)})
            return "0x" + bytes(receipt["transactionHash"]).hex()

    tx = run(body())
    console.print(
        f"sent {amount} {kind.upper() if kind == 'eth' else 'mUSD'} "
        f"from {name} to {recipient}\ntx {tx}"
    )


@app.command()
def fund(
    ctx: typer.Context,
    who: Annotated[str, typer.Argument(help="wallet name or address")],
    eth: Annotated[str, typer.Option(help="ETH to send")] = "10",
    musd: Annotated[str, typer.Option(help="mUSD to mint")] = "1000",
) -> None:
    """Devnet faucet: give a wallet ETH for gas and freshly minted mUSD."""
    from agentmesh.wallets.chain import open_chain
    from agentmesh.wallets.clients import TokenClient
    from agentmesh.wallets.deployer import dev_deployer
    from agentmesh.wallets.units import ETH_DECIMALS, MUSD_DECIMALS, parse_amount

    app_state = state(ctx)
    address = _resolve_address(app_state, who)
    eth_units = parse_amount(eth, ETH_DECIMALS)
    musd_units = parse_amount(musd, MUSD_DECIMALS)

    async def body() -> dict[str, Any]:
        from web3.types import Wei

        async with open_chain(app_state.home, app_state.config, allow_embedded=False) as chain:
            if not chain.devnet:
                raise DevnetError(
                    "`wallet fund` works only on an anvil devnet whose contracts the dev "
                    "key deployed; on another chain send from a funded wallet with "
                    "`wallet send` (and mint mUSD with `chain mint` as the deployer)"
                )
            faucet = dev_deployer(chain.w3)
            with console.status("funding..."):
                if eth_units:
                    await faucet.send({"to": address, "value": Wei(eth_units)})
                if musd_units:
                    await TokenClient(faucet, chain.token_address).mint(address, musd_units)
            return await _balances(chain, address)

    info = run(body())
    console.print(f"funded {who} {address}\n  ETH   {info['eth']}\n  mUSD  {info['musd']}")
