"""What a task cost on chain: its transactions and their gas."""

from __future__ import annotations

from typing import Any

STEP_ORDER = ("approve", "open", "accept", "submit", "release", "feedback")


async def task_gas(chain: Any, job_id: int, own_txs: dict[str, str]) -> tuple[int, dict[str, str]]:
    """Gas of every transaction of an escrow job, and each step's transaction hash.

    ``own_txs`` are the requester's (approve, open, release, feedback); the provider's
    accept and submit are found in the escrow's events for the job.
    """
    escrow = chain.contract("TaskEscrow")
    labelled = {step: tx for step, tx in own_txs.items() if tx}
    for step, event in (("accept", "JobAccepted"), ("submit", "ResultSubmitted")):
        logs = await getattr(escrow.events, event)().get_logs(
            argument_filters={"jobId": job_id}, from_block=0
        )
        for entry in logs:
            labelled[step] = "0x" + bytes(entry["transactionHash"]).hex()
    gas = 0
    for tx in set(labelled.values()):
        gas += int((await chain.w3.eth.get_transaction_receipt(tx))["gasUsed"])
    ordered = dict(
        sorted(
            labelled.items(),
            key=lambda item: STEP_ORDER.index(item[0]) if item[0] in STEP_ORDER else 99,
        )
    )
    return gas, ordered


async def channel_gas(chain: Any, channel_id: bytes, open_tx: str) -> tuple[int, int]:
    """Gas of a payment channel's whole life and how many transactions that was: the
    payer's approve (its last ``Approval`` of the contract before the open) and open,
    every top-up, claim and close (the contract's events for the channel)."""
    contract = chain.contract("PaymentChannel")
    txs = {open_tx}
    for event in ("ToppedUp", "Claimed", "Closed"):
        logs = await getattr(contract.events, event)().get_logs(
            argument_filters={"id": channel_id}, from_block=0
        )
        txs.update("0x" + bytes(entry["transactionHash"]).hex() for entry in logs)
    opened = await chain.w3.eth.get_transaction_receipt(open_tx)
    approvals = (
        await chain.contract("MeshUSD")
        .events.Approval()
        .get_logs(
            argument_filters={"owner": opened["from"], "spender": contract.address},
            from_block=0,
            to_block=opened["blockNumber"],
        )
    )
    if approvals:
        txs.add("0x" + bytes(approvals[-1]["transactionHash"]).hex())
    gas = 0
    for tx in txs:
        gas += int((await chain.w3.eth.get_transaction_receipt(tx))["gasUsed"])
    return gas, len(txs)
