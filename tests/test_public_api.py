"""The public surface: ``from agentmesh import ...``, loaded lazily, typed."""

from __future__ import annotations

import importlib.resources
import inspect
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import agentmesh
from agentmesh import ChatMessage, ChatModel, LocalModel

# What `import agentmesh` and `agentmesh --help` must not load.
HEAVY = ("llama_cpp", "web3", "langgraph", "zmq")


def _as_chat_model(model: LocalModel) -> ChatModel:
    # Checked by mypy, not at run time: LocalModel satisfies ChatModel structurally.
    return model


def _loaded_after(code: str, cwd: Path) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; which heavy and agentmesh modules it loaded."""
    report = (
        "\nimport json, sys\n"
        f"print(json.dumps({{'heavy': [m for m in {HEAVY!r} if m in sys.modules], "
        "'agentmesh': sorted(m for m in sys.modules if m.startswith('agentmesh'))}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code + report], cwd=cwd, capture_output=True, text=True, check=True
    )
    loaded: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def test_every_public_name_resolves_to_its_module() -> None:
    exports: dict[str, str] = agentmesh._EXPORTS
    assert set(agentmesh.__all__) == set(exports) | {"__version__"}
    assert len(agentmesh.__all__) == len(set(agentmesh.__all__))
    for name in agentmesh.__all__:
        value = getattr(agentmesh, name)
        assert value is not None, name
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__ == exports[name], name
    assert agentmesh.__version__ and agentmesh.__version__[0].isdigit()


def test_the_issue_names_import() -> None:
    from agentmesh import (
        Agent,
        AgentMeshError,
        LocalModel,
        Message,
        ServiceContext,
        TaskFailed,
        TaskOutcome,
        local_market,
    )

    assert issubclass(TaskFailed, AgentMeshError)
    assert callable(local_market) and callable(LocalModel.default)
    assert all(inspect.isclass(c) for c in (Agent, Message, ServiceContext, TaskOutcome))


def test_every_error_is_exported_and_derives_from_the_root() -> None:
    from agentmesh import errors

    declared = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, Exception)
        and value.__module__ == errors.__name__
    }
    assert declared <= set(agentmesh.__all__), declared - set(agentmesh.__all__)
    for name in declared:
        assert issubclass(getattr(agentmesh, name), agentmesh.AgentMeshError), name


def test_a_name_is_cached_after_first_use() -> None:
    first = agentmesh.Message
    assert vars(agentmesh)["Message"] is first is agentmesh.Message


def test_unknown_attribute_is_a_clear_attribute_error() -> None:
    with pytest.raises(
        AttributeError, match=r"module 'agentmesh' has no attribute 'Nope'.*__all__"
    ):
        agentmesh.Nope  # type: ignore[attr-defined]  # noqa: B018
    assert not hasattr(agentmesh, "AlsoMissing")
    with pytest.raises(ImportError, match="Nope"):
        from agentmesh import Nope  # type: ignore[attr-defined]  # noqa: F401


def test_dir_lists_the_public_names() -> None:
    assert set(agentmesh.__all__) <= set(dir(agentmesh))


def test_py_typed_is_installed() -> None:
    assert importlib.resources.files("agentmesh").joinpath("py.typed").is_file()


def test_import_agentmesh_loads_nothing_heavy(tmp_path: Path) -> None:
    loaded = _loaded_after("import agentmesh", tmp_path)
    assert loaded == {"heavy": [], "agentmesh": ["agentmesh"]}


def test_a_light_name_loads_only_its_module(tmp_path: Path) -> None:
    loaded = _loaded_after("from agentmesh import AgentMeshError, ChatModel", tmp_path)
    assert loaded == {
        "heavy": [],
        "agentmesh": ["agentmesh", "agentmesh.chat_model", "agentmesh.errors"],
    }


def test_cli_help_loads_nothing_heavy(tmp_path: Path) -> None:
    # The console script's code path: agentmesh.cli.app:main with argv ["--help"].
    code = (
        "import sys\nsys.argv = ['agentmesh', '--help']\n"
        "from agentmesh.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
    )
    assert _loaded_after(code, tmp_path)["heavy"] == []


def test_cli_help_importtime_names_nothing_heavy(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "agentmesh.cli.app", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "agentmesh.cli.app" in imported or "agentmesh.cli" in imported
    assert {m.split(".")[0] for m in imported} & set(HEAVY) == set()


class _ScriptedModel:
    """A fake a user might write for unit tests: no llama-cpp, no subclassing."""

    sha256 = ""

    async def chat(
        self, messages: Sequence[ChatMessage], *, max_tokens: int = 256, temperature: float = 0.2
    ) -> str:
        return messages[-1]["content"]

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int = 256, temperature: float = 0.2
    ) -> AsyncIterator[str]:
        for word in messages[-1]["content"].split():
            yield word

    async def structured(
        self,
        messages: Sequence[ChatMessage],
        schema: Any,
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
    ) -> Any:
        return schema.model_validate_json(messages[-1]["content"])


def test_local_model_and_a_fake_are_chat_models() -> None:
    model = LocalModel.default()  # checks the file only; nothing is loaded
    try:
        assert isinstance(model, ChatModel)
        assert isinstance(_as_chat_model(model), ChatModel)
    finally:
        model.close()
    fake: ChatModel = _ScriptedModel()
    assert isinstance(fake, ChatModel)
    assert not isinstance(object(), ChatModel)


async def test_a_fake_chat_model_works_through_the_protocol() -> None:
    from pydantic import BaseModel

    class Price(BaseModel):
        price: int

    model: ChatModel = _ScriptedModel()
    turn: ChatMessage = {"role": "user", "content": '{"price": 7}'}
    assert await model.chat([turn]) == '{"price": 7}'
    assert [piece async for piece in model.stream([turn])] == ['{"price":', "7}"]
    assert (await model.structured([turn], Price)).price == 7


def test_chat_model_members_match_local_model() -> None:
    members = {"chat", "stream", "structured", "sha256"}
    assert members <= set(dir(LocalModel))
    for name in ("chat", "stream", "structured"):
        local = inspect.signature(getattr(LocalModel, name))
        protocol = inspect.signature(getattr(ChatModel, name))
        assert list(local.parameters) == list(protocol.parameters), name
        for parameter in protocol.parameters.values():
            assert local.parameters[parameter.name].default == parameter.default, name
