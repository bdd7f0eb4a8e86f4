"""The files `agentmesh new` writes, per template (``{name}`` is the project name)."""

from __future__ import annotations

PYPROJECT = """[project]
name = "{name}"
version = "0.1.0"
description = "An agentmesh agent"
requires-python = ">=3.11"
dependencies = ["agentmesh"]

[project.optional-dependencies]
test = ["pytest>=8"]

[tool.pytest.ini_options]
# Plain pytest: the tests run their async parts with asyncio.run, no plugin needed.
pythonpath = ["."]
testpaths = ["tests"]
"""

GITIGNORE = "__pycache__/\n.pytest_cache/\n"

TOML_HEAD = """# Settings of this agent; `agentmesh run agent.py` reads them.
[agent]
name = "{name}"
wallet = "{wallet}"      # encrypted keystore in the agentmesh home; AGENTMESH_PASSWORD unlocks it

[mesh]
host = "127.0.0.1"       # interface to bind; 0.0.0.0 (plus advertise_host) to reach other machines
port = 0                 # 0 = a free port
bootstrap = []           # "<curve key>@tcp://host:port" of agents to join through

[chain]
rpc_url = ""             # "" = a running `agentmesh devnet up`, else a throw-away anvil

[model]
path = ""                # "" = the default SmolLM2-135M; or a path to any GGUF
n_ctx = 2048
"""

TOML = {
    "provider": TOML_HEAD
    + """
[prices]
summarize = "0.05 mUSD"
""",
    "requester": TOML_HEAD
    + """
[buy]
service = "summarize"
budget = "0.2"           # mUSD at most per purchase
count = 1
""",
    "blank": TOML_HEAD,
}

AGENT = {
    "provider": '''"""{name}: sells summaries written by the local model.

    agentmesh run agent.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from agentmesh import ServiceContext, load_project

project = load_project(Path(__file__).with_name("agentmesh.toml"))
agent = project.make_agent(model=project.local_model())
SYSTEM = "Summarize the user's text in one or two sentences. Reply with the summary only."


@agent.service("summarize", price=project.price("summarize"))
async def summarize(
    ctx: ServiceContext, text: Annotated[str, Field(min_length=1, max_length=20_000)]
) -> str:
    """Summarize a text in one or two sentences."""
    summary = await ctx.model.chat(
        [{{"role": "system", "content": SYSTEM}}, {{"role": "user", "content": text}}],
        max_tokens=96,
    )
    return summary.strip() or text.strip()[:200]  # never deliver an empty result
''',
    "requester": '''"""{name}: buys a service on the mesh, then stops.

    agentmesh run agent.py
"""

from __future__ import annotations

from pathlib import Path

from agentmesh import Agent, TaskOutcome, load_project

project = load_project(Path(__file__).with_name("agentmesh.toml"))
agent = project.make_agent()
TEXT = (
    "Agents on a mesh find each other, agree on a price, and settle through an escrow "
    "contract, so neither side has to trust the other."
)


@agent.main
async def buy(me: Agent) -> list[TaskOutcome]:
    """Buy [buy] count runs of [buy] service from the best provider."""
    await me.wait_for_providers(project.buy.service, timeout=60)
    outcomes = []
    for _ in range(project.buy.count):
        outcome = await me.buy(project.buy.service, text=TEXT, budget=project.buy.budget)
        print(f"bought from {{outcome.provider}} for {{outcome.price}} units: {{outcome.result}}")
        outcomes.append(outcome)
    return outcomes
''',
    "blank": '''"""{name}: an agent with one protocol of its own.

    agentmesh run agent.py
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from agentmesh import HandlerContext, Message, load_project

project = load_project(Path(__file__).with_name("agentmesh.toml"))
agent = project.make_agent()
PROTOCOL, VERSION = "{name}.greet", "1"


class Hello(Message):
    text: str = Field(max_length=200)


class Hi(Message):
    text: str


@agent.on(Hello, protocol=PROTOCOL, version=VERSION, replies=(Hi,))
async def greet(ctx: HandlerContext, hello: Hello) -> Hi:
    """Answer every signed Hello with a Hi."""
    return Hi(text=f"hi {{hello.text}}, from {{agent.name}}")
''',
}

TEST = {
    "provider": '''"""It sells a summary once on a throw-away devnet (real chain, mesh, model).

Plain pytest: the async part runs under ``asyncio.run``, so no plugin is needed.
"""

import asyncio
from pathlib import Path

from agent import agent

from agentmesh import TaskOutcome, local_market

TEXT = "Agents trade services and settle on chain."


async def sell_once(root: Path) -> tuple[TaskOutcome, int, int]:
    """Start the agent, buy one summary from it; the outcome, what it earned and the
    protocol fee taken on the way (it funds the validators' reward pool)."""
    async with local_market(root) as market:
        async with market.adopt(agent), market.buyer() as buyer:
            before = await agent.token.balance_of(agent.address)
            await buyer.wait_for_providers("summarize", timeout=30)
            outcome = await buyer.buy("summarize", text=TEXT, budget="1")
            earned = await agent.token.balance_of(agent.address) - before
            fee = await agent.escrow.fee_on(agent.token_address, outcome.price)
    return outcome, earned, fee


def test_sells_a_summary(tmp_path: Path) -> None:
    outcome, earned, fee = asyncio.run(sell_once(tmp_path))
    assert outcome.settled and outcome.provider == agent.address
    assert isinstance(outcome.result, str) and outcome.result.strip()
    assert earned == outcome.price - fee > 0  # paid on chain through the escrow
''',
    "requester": '''"""It buys once from a seller on a throw-away devnet (real chain and mesh).

Plain pytest: the async part runs under ``asyncio.run``, so no plugin is needed.
"""

import asyncio
from pathlib import Path

from agent import agent, buy

from agentmesh import TaskOutcome, local_market


async def buy_once(root: Path) -> tuple[list[TaskOutcome], str, int]:
    """Start a test seller and the agent, run its main; outcomes, seller, amount spent."""
    async with local_market(root) as market:
        seller = market.seller("summarize", lambda text: text.split(",")[0])
        async with seller, market.adopt(agent):
            before = await agent.token.balance_of(agent.address)
            outcomes = await buy(agent)
            spent = before - await agent.token.balance_of(agent.address)
    return outcomes, seller.address, spent


def test_buys_once(tmp_path: Path) -> None:
    outcomes, seller, spent = asyncio.run(buy_once(tmp_path))
    assert [o.settled for o in outcomes] == [True]
    assert outcomes[0].provider == seller
    assert outcomes[0].result == "Agents on a mesh find each other"
    assert spent == outcomes[0].price > 0  # paid on chain through the escrow
''',
    "blank": '''"""It answers its own protocol on a throw-away devnet (real chain and mesh).

Plain pytest: the async part runs under ``asyncio.run``, so no plugin is needed.
"""

import asyncio
from pathlib import Path

from agent import PROTOCOL, VERSION, Hello, Hi, agent

from agentmesh import local_market


async def greet_once(root: Path) -> tuple[str, str]:
    """Start the agent; a second agent finds it through the on-chain AgentRegistry and
    says Hello over the mesh. The name on the registry card and the reply."""
    async with local_market(root) as market:
        async with market.adopt(agent), market.buyer("caller") as caller:
            card = await caller.registry.get_agent(agent.address)  # it registered itself
            for _ in range(300):  # discovery reads the registry, then the signed card
                if agent.address in caller.node.peers:
                    break
                await asyncio.sleep(0.1)
            reply = await caller.node.request(
                agent.address,
                Hello(text="tester"),
                protocol=PROTOCOL,
                version=VERSION,
                expect=(Hi,),
            )
    return card.name, reply.text


def test_answers_hello(tmp_path: Path) -> None:
    registered_as, text = asyncio.run(greet_once(tmp_path))
    assert registered_as == agent.name
    assert text == f"hi tester, from {agent.name}"
''',
}

README = {
    "provider": """# {name}

An agentmesh agent that sells summaries written by a local model.

```sh
pip install pytest                       # the tests need only pytest (the [test] extra)
pytest                                   # sells one summary on a throw-away devnet
AGENTMESH_PASSWORD=... agentmesh run agent.py   # sell on the mesh (the password unlocks the wallet)
agentmesh task request summarize --text "..." --budget 0.2   # buy from it, from another shell
```

Prices, mesh, chain and model settings are in `agentmesh.toml`; the service is in
`agent.py`.
""",
    "requester": """# {name}

An agentmesh agent that buys a service from the best provider on the mesh.

```sh
pip install pytest                       # the tests need only pytest (the [test] extra)
pytest                                   # buys once from a test seller on a throw-away devnet
AGENTMESH_PASSWORD=... agentmesh run agent.py   # buy on the mesh (the password unlocks the wallet)
agentmesh task list                      # what it bought, with the escrow jobs' on-chain state
```

What to buy, and for how much, is under `[buy]` in `agentmesh.toml`.
""",
    "blank": """# {name}

An agentmesh agent with one protocol of its own (`Hello` -> `Hi`).

```sh
pip install pytest                       # the tests need only pytest (the [test] extra)
pytest                                   # found via the on-chain registry, answers a Hello
AGENTMESH_PASSWORD=... agentmesh run agent.py   # join the mesh (the password unlocks the wallet)
agentmesh mesh peers                     # the agents it sees
```

Add services with `@agent.service("name", price="0.05 mUSD")` in `agent.py`.
""",
}
