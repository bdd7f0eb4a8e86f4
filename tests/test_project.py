"""`agentmesh.toml` (what `agentmesh new` writes): valid files load, bad ones say why."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmesh.agents.project import load_project
from agentmesh.errors import ConfigError

GOOD = """
[agent]
name = "shop"
wallet = "till"
[mesh]
port = 7100
bootstrap = []
[chain]
rpc_url = "http://127.0.0.1:8545"
[prices]
summarize = "0.05 mUSD"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agentmesh.toml"
    path.write_text(text)
    return path


def test_a_valid_project_builds_its_agent(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, GOOD))
    assert project.price("summarize") == "0.05 mUSD"
    agent = project.make_agent()
    assert agent.name == "shop" and agent._wallet_spec == "till"
    assert agent._mesh_option is not None and agent._mesh_option.port == 7100
    assert agent._rpc_url_option == "http://127.0.0.1:8545"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[agent\nname = 'x'", "not valid TOML"),
        ("[agent]\nname = 'x'\ncolour = 'red'\n", "unknown key 'agent.colour'"),
        ("[mesh]\nport = 1\n", "missing key 'agent'"),
        ("[agent]\nname = 'bad name!'\n", "invalid value for 'agent.name'"),
        ("[agent]\nname = 'x'\n[mesh]\nport = 70000\n", "invalid value for 'mesh.port'"),
        ("[agent]\nname = 'x'\n[buy]\ncount = 0\n", "invalid value for 'buy.count'"),
    ],
)
def test_bad_project_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_project(write(tmp_path, text))


def test_missing_file_and_missing_price(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_project(tmp_path / "agentmesh.toml")
    project = load_project(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match="no price for service 'translate'"):
        project.price("translate")
