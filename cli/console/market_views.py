"""What the market pages show, as plain data (the JSON API returns it as is): the
agents of a home, the mesh, tasks, one task, approvals.

Everything comes from files the agents already write (their records, mesh stores and
LangGraph checkpoints) and from the chain; nothing here writes but ``decide``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any

from agentmesh.cli.channel_rows import musd
from agentmesh.cli.console.chain_view import ChainUnavailable, ChainView
from agentmesh.cli.console.homes import Home

MAX_PAYLOAD_CHARS = 4_000  # a message shown on a task page is cut after this


def _now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------------- agents


def _mesh_selves(home: Path) -> dict[str, dict[str, Any]]:
    """Each agent's own card and counters, by name, from the mesh stores."""
    from agentmesh.store import Store

    found: dict[str, dict[str, Any]] = {}
    for path in sorted((home / "mesh").glob("0x*.db")):
        store = Store(path, readonly=True)
        try:
            stats = store.stats()
            with contextlib.closing(store.engine.raw_connection()) as raw:
                updated = raw.cursor().execute("SELECT max(updated_ms) FROM stats").fetchone()[0]
            for row in store.peers():
                if row.source != "self":
                    continue
                found[row.name] = {
                    "address": row.address,
                    "endpoint": row.endpoint,
                    "services": json.loads(row.services_json),
                    "model_sha256": row.model_sha256,
                    "stats": stats,
                    "stats_ms": updated or 0,
                    "store": path,
                }
        finally:
            store.close()
    return found


async def agents(home: Home, chain: ChainView) -> dict[str, Any]:
    """Every agent in the home: running or not, address, balances, services, model."""
    # Files first, off the event loop (hashing a large model file takes a while once).
    rows, model = await asyncio.to_thread(_agent_rows, home.path)
    problem = ""
    try:
        c = await chain.get()
        token = c.contract("MeshUSD")
        for row in rows:
            if not row["address"]:
                continue
            address = c.w3.to_checksum_address(row["address"])
            eth = await chain.call(c.w3.eth.get_balance(address))
            units = await chain.call(token.functions.balanceOf(address).call())
            row["eth"] = f"{eth / 10**18:.4f} ETH"
            row["musd"] = musd(int(units))
    except ChainUnavailable as exc:
        problem = exc.user_message
    return {"agents": rows, "chain_problem": problem, "model": model}


def _agent_rows(path: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    folders = sorted(p.name for p in (path / "agents").glob("*") if p.is_dir())
    selves = _mesh_selves(path)
    rows = []
    for name in folders:
        own = selves.get(name, {})
        rows.append(
            {
                "name": name,
                "address": own.get("address", ""),
                "running": _running(path / "agents" / name),
                "last_active_ms": own.get("stats_ms") or None,
                "services": [
                    {**s, "price_text": musd(int(s["price"]))} for s in own.get("services", [])
                ],
                "model_sha256": own.get("model_sha256", ""),
                "eth": None,
                "musd": None,
            }
        )
    return rows, _default_model()


def _running(folder: Path) -> bool:
    """The agent's process runs: its pid file is there (removed on a clean stop) and
    names a live process (a pid left by ``kill -9`` names none)."""
    from agentmesh.agents.agent import RUNNING_FILE
    from agentmesh.chain.devnet import pid_alive

    try:
        pid = int((folder / RUNNING_FILE).read_text().strip())
    except (OSError, ValueError):
        return False
    return pid_alive(pid)


def _default_model() -> dict[str, str]:
    """The default model's file name and sha256 (hashed once, cached across runs)."""
    from agentmesh.errors import AgentMeshError
    from agentmesh.llm import default_model_path, file_sha256

    try:
        path = default_model_path()
        return {"name": path.name, "sha256": file_sha256(path)}
    except (AgentMeshError, OSError):
        return {"name": "", "sha256": ""}


# ---------------------------------------------------------------------- mesh


def mesh(home: Home) -> dict[str, Any]:
    """Peers as each local agent knows them (nodes and edges), and each one's counters."""
    from agentmesh.store import Store

    now = _now_ms()
    peers: dict[str, dict[str, Any]] = {}
    edges: list[dict[str, str]] = []
    counters: dict[str, dict[str, int]] = {}
    for path in sorted((home.path / "mesh").glob("0x*.db")):
        store = Store(path, readonly=True)
        try:
            rows = store.peers()
            me = next((r for r in rows if r.source == "self"), None)
            own = me.address if me is not None else path.stem
            counters[me.name if me is not None else path.stem] = {
                **store.stats(),
                **{f"stored.{k}": v for k, v in store.message_counts().items()},
            }
            for row in rows:
                seen = peers.get(row.address)
                if seen is None or seen["last_seen_ms"] < row.last_seen_ms:
                    peers[row.address] = {
                        "address": row.address,
                        "name": row.name,
                        "endpoint": row.endpoint,
                        "state": row.state,
                        "source": row.source if seen is None else seen["source"],
                        "local": row.source == "self" or (seen or {}).get("local", False),
                        "services": json.loads(row.services_json),
                        "last_seen_ms": row.last_seen_ms,
                        "seen_s_ago": max(0.0, (now - row.last_seen_ms) / 1000),
                    }
                if row.source == "self":
                    peers[row.address]["local"] = True
                elif row.address != own:
                    edges.append({"from": own, "to": row.address, "state": row.state})
        finally:
            store.close()
    rejected = {
        agent: {k.removeprefix("rejected."): v for k, v in c.items() if k.startswith("rejected.")}
        for agent, c in counters.items()
    }
    return {
        "peers": sorted(peers.values(), key=lambda p: (not p["local"], p["name"])),
        "edges": edges,
        "counters": counters,
        "rejected": rejected,
    }


# ---------------------------------------------------------------------- tasks


def tasks(home: Home) -> dict[str, Any]:
    """Every task of every agent in the home, newest first (records only: no chain
    reads, so a home with thousands of tasks lists at once)."""
    from agentmesh.agents.records import each_agent

    rows: list[dict[str, Any]] = []
    for agent, records in each_agent(home.path, readonly=True):
        for t in records.tasks():
            rows.append(
                {
                    "task": t.conversation[2:],
                    "agent": agent,
                    "role": t.role,
                    "service": t.service,
                    "phase": t.state,
                    "status": t.status,
                    "price": t.price,
                    "price_text": musd(t.price) if t.price else "",
                    "peer": t.peer,
                    "job_id": t.job_id,
                    "detail": t.detail,
                    "created_ms": t.created_ms,
                    "updated_ms": t.updated_ms,
                }
            )
    rows.sort(key=lambda r: r["created_ms"], reverse=True)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return {"tasks": rows, "counts": counts}


def _messages(home: Path, agent_address: str, conversation: str) -> list[dict[str, Any]]:
    """The conversation's messages in the agent's mesh store, in order, decoded."""
    from sqlmodel import Session, select

    from agentmesh.envelope import Envelope
    from agentmesh.protocols.negotiation import NEGOTIATION
    from agentmesh.store import MessageRow, Store

    path = home / "mesh" / f"{agent_address}.db"
    if not agent_address or not path.exists():
        return []
    names = {m.schema_digest(): m.__name__ for m in NEGOTIATION.messages}
    store = Store(path, readonly=True)
    try:
        with Session(store.engine) as session:
            rows = list(
                session.exec(
                    select(MessageRow)
                    .where(MessageRow.conversation == bytes.fromhex(conversation[2:]))
                    .order_by(MessageRow.created_ms)  # type: ignore[arg-type]
                )
            )
    finally:
        store.close()
    shown: list[dict[str, Any]] = []
    for row in rows:
        try:
            envelope = Envelope.from_frame(row.frame)
        except Exception:  # noqa: BLE001 - a stored frame that no longer parses is shown as such
            shown.append({"direction": row.direction, "kind": "unreadable frame", "payload": ""})
            continue
        payload = envelope.payload.decode(errors="replace")
        with contextlib.suppress(ValueError):
            payload = json.dumps(json.loads(payload), indent=1)
        shown.append(
            {
                "direction": row.direction,
                "peer": row.peer,
                "kind": names.get(envelope.schema_digest, envelope.protocol),
                "protocol": f"{envelope.protocol}@{envelope.protocol_version}",
                "status": row.status,
                "created_ms": row.created_ms,
                "payload": payload[:MAX_PAYLOAD_CHARS],
            }
        )
    return shown


async def task(home: Home, chain: ChainView, agent: str, task_id: str) -> dict[str, Any] | None:
    """One task: record, trace, messages, escrow job, transactions with gas, the
    delivered result and its check. None if the home has no such task."""
    from agentmesh.canonical import sha256_hex

    local = await asyncio.to_thread(_task_files, home.path, agent, task_id)
    if local is None:
        return None
    data, txs, values = local
    try:
        c = await chain.get()
        for step, tx in txs.items():
            receipt = await chain.call(c.w3.eth.get_transaction_receipt(tx))
            data["txs"].append(
                {
                    "step": step,
                    "hash": tx,
                    "gas": int(receipt["gasUsed"]),
                    "block": int(receipt["blockNumber"]),
                    "ok": int(receipt["status"]) == 1,
                }
            )
        if data["job_id"] is not None:
            data["job"] = await _job(c, chain, data["job_id"])
    except ChainUnavailable as exc:
        data["chain_problem"] = exc.user_message
        data["txs"] = [{"step": s, "hash": h, "gas": None} for s, h in txs.items()]
    result = data["result"]
    if isinstance(result, str) and result:
        expected = values.get("result_sha256") or ""
        onchain = (data["job"] or {}).get("result_hash", "").removeprefix("0x")
        data["check"] = {
            "result_sha256": sha256_hex(result),
            "matches_delivery": bool(expected) and sha256_hex(result) == expected,
            "matches_chain": bool(onchain) and sha256_hex(result) == onchain,
        }
    return data


def _task_files(
    path: Path, agent: str, task_id: str
) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]] | None:
    """What a task's page shows from files: (the page's data without the chain's part,
    the task's transactions by step, its checkpointed state)."""
    from agentmesh.agents.agent import AGENT_NAME
    from agentmesh.agents.records import AgentRecords
    from agentmesh.cli.task_results import checkpoint_values
    from agentmesh.protocols.negotiation import Role

    if not re.fullmatch(AGENT_NAME, agent) or not re.fullmatch(r"[0-9a-f]{1,64}", task_id):
        return None
    db = path / "agents" / agent / "agent.db"
    if not db.exists():
        return None
    records = AgentRecords(db, readonly=True)
    try:
        # An agent keys its side of a conversation by its role ("r:<hex>", "p:<hex>").
        found = (records.task(role.task_id(task_id)) for role in Role)
        row = next((r for r in found if r is not None), None)
    finally:
        records.close()
    if row is None:
        return None
    checkpoints = path / "agents" / agent / "checkpoints.db"
    values = checkpoint_values(checkpoints, row.conversation, readonly=True)
    address = _mesh_selves(path).get(agent, {}).get("address", "")
    data: dict[str, Any] = {
        "task": task_id,
        "agent": agent,
        "role": row.role,
        "service": row.service,
        "phase": row.state,
        "status": row.status,
        "peer": row.peer,
        "price_text": musd(row.price) if row.price else "",
        "job_id": row.job_id,
        "detail": row.detail,
        "trace": json.loads(row.trace or "[]"),
        "input": values.get("input"),
        "result": values.get("result"),
        "check": None,
        "messages": _messages(path, address, row.conversation),
        "txs": [],
        "job": None,
        "chain_problem": "",
        "created_ms": row.created_ms,
        "updated_ms": row.updated_ms,
    }
    return data, json.loads(row.txs or "{}"), values


async def _job(c: Any, chain: ChainView, job_id: int) -> dict[str, Any]:
    from eth_account import Account

    from agentmesh.wallets.clients import EscrowClient
    from agentmesh.wallets.wallet import Wallet

    escrow = EscrowClient(Wallet(Account.create(), c.w3), c.deployment.address("TaskEscrow"))
    job = await chain.call(escrow.get_job(job_id))
    return {
        "id": job_id,
        "status": job.status.name.lower(),
        "client": job.client,
        "provider": job.provider,
        "arbiter": job.arbiter,
        "amount_text": musd(job.amount),
        "deadline": job.deadline,
        "result_hash": "0x" + job.result_hash.hex(),
    }


# ---------------------------------------------------------------------- approvals


def approvals(home: Home) -> dict[str, Any]:
    """Pending spends first, then past decisions, newest first."""
    from agentmesh.agents.records import ApprovalStatus, each_agent

    rows: list[dict[str, Any]] = []
    for agent, records in each_agent(home.path, readonly=True):
        for a in records.approvals():
            rows.append(
                {
                    "id": a.id,
                    "agent": agent,
                    "task": a.conversation[2:],
                    "status": a.status,
                    "applied": a.applied,
                    "amount_text": musd(a.amount),
                    "description": a.description,
                    "created_ms": a.created_ms,
                    "decided_ms": a.decided_ms,
                }
            )
    pending = [r for r in rows if r["status"] == ApprovalStatus.PENDING]
    decided = [r for r in rows if r["status"] != ApprovalStatus.PENDING]
    decided.sort(key=lambda r: r["decided_ms"] or 0, reverse=True)
    pending.sort(key=lambda r: r["created_ms"])
    return {"pending": pending, "decided": decided}


def decide(home: Home, approval_id: str, approved: bool) -> dict[str, Any]:
    """What ``agentmesh approve|reject`` do: record the decision for the owning agent,
    which resumes (or cancels) the paused purchase."""
    from agentmesh.agents.records import find_approval

    records, _ = find_approval(home.path, approval_id)
    try:
        row = records.decide(approval_id, approved)
    finally:
        records.close()
    return {"id": row.id, "status": row.status, "description": row.description}
