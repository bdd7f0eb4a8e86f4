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
