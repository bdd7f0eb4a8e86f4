"""`agentmesh demo channels` end to end (real devnet, the embedder as its own process,
the real model) and the reference embedder's services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentmesh.agents.service import ServiceContext
from tests.console_support import demo_in_browser
from tests.helpers import fee_of


async def test_demo_channels_pays_every_call_claims_closes_and_conserves(tmp_path: Path) -> None:
    # `make demo` runs it with 1,000 calls; 450 here passes the provider's claim
    # threshold (0.2 mUSD = 400 calls) once, so a claim happens before the close.
    # The console watches it: the channel shows up, on chain, with calls paid.
    result = await demo_in_browser(
        tmp_path / "home",
        ["demo", "channels", "--calls", "450", "--json"],
        "/channels",
        ['#channels tr[data-side="payer"][data-onchain="yes"]:not([data-paid="0"])'],
        "channels-live",
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    price = 500  # 0.0005 mUSD
    assert report["calls"] == report["requested"] == 450
    assert report["paid"] == 450 * price == report["claimed"]
    assert report["claimed_before_close"] == 400 * price  # the threshold's claim
    assert report["closed"] is True and report["refunded"] == 10**6 - 450 * price
    # approve, open, one claim, the close: and the gas is theirs, spread over the calls.
    assert report["transactions"] == 4
    assert report["gas_per_call"] == pytest.approx(report["gas"] / 450, abs=0.1)
    assert report["gas"] > 200_000
    balances = report["balances"]
    # Two payouts (the threshold's claim and the close), each less the protocol fee.
    fee = fee_of(400 * price) + fee_of(50 * price)
    assert report["protocol_fee"] == fee > 0
    assert balances["reward pool"]["after"] - balances["reward pool"]["before"] == fee
    assert balances["embedder"]["after"] - balances["embedder"]["before"] == report["paid"] - fee
    assert balances["caller"]["before"] - balances["caller"]["after"] == report["paid"]
    assert balances["PaymentChannel"]["after"] == 0
    assert report["conservation"]["ok"] is True
    assert report["conservation"]["before"] == report["conservation"]["after"] == 5 * 10**6
    # The calls bought real embeddings: the nearest ticket is about the same thing.
    similar = report["similar"]
    assert "parcel never arrived" in similar["nearest"] and similar["cosine"] > 0.9


@pytest.fixture(scope="module")
def embedder():  # type: ignore[no-untyped-def]
    from agentmesh.agents import embedder as module

    yield module
    module.MODEL.close()


def context() -> ServiceContext:
    return ServiceContext(service="classify", conversation="00", requester="0x" + "11" * 20)


async def test_the_embedder_classifies_by_nearest_label(embedder) -> None:  # type: ignore[no-untyped-def]
    labels = ["shipping and delivery", "billing and payments"]
    assert await embedder.classify(context(), "my parcel never arrived", labels) in labels
    vector = await embedder.embed(context(), "I was charged twice")
    assert len(vector) > 100 and all(round(v, 6) == v for v in vector)
    service = embedder.agent.services["classify"]
    with pytest.raises(Exception, match="labels"):
        service.parse_input(json.dumps({"text": "x", "labels": ["only one"]}))
