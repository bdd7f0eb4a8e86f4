from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from tests.conftest import ONE_MUSD, WalletFactory, token_for, escrow_for, chain_now, rpc, advance_time


async def test_probe(chain: Chain, make_wallet: WalletFactory, token: TokenClient) -> None:
    c = await make_wallet(); p = await make_wallet(); a = await make_wallet()
    e = escrow_for(chain, c); ep = escrow_for(chain, p)
    now = await chain_now(chain)
    jid, r = await e.open(provider=p.address, token=token_for(chain, c), amount=5, deadline=now+100, review_window=60, arbiter=a.address, terms_hash=b"\x01"*32)
    D = (await e.get_job(jid)).deadline
    await rpc(chain, "evm_setNextBlockTimestamp", D + 1)
    try:
        await ep.accept(jid)
    except Exception as exc:
        print("accept:", repr(exc), exc.error_name)
    blk = await chain.w3.eth.get_block("latest", full_transactions=True)
    tx = blk["transactions"][0]
    print("D", D, "mined ts", blk["timestamp"], "status", (await chain.w3.eth.get_transaction_receipt(tx["hash"]))["status"])
    call = {"from": tx["from"], "to": tx["to"], "data": "0x" + bytes(tx["input"]).hex()}
    r1 = await chain.w3.provider.make_request("eth_call", [call, hex(blk["number"] - 1), {}, {"time": hex(blk["timestamp"]), "number": hex(blk["number"])}])
    print("eth_call with blockOverrides:", r1)
    r2 = await chain.w3.provider.make_request("debug_traceTransaction", ["0x" + bytes(tx["hash"]).hex(), {"tracer": "callTracer"}])
    print("trace:", {k: v for k, v in r2.get("result", r2).items() if k in ("output", "error", "revertReason")})
