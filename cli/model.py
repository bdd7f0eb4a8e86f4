"""``agentmesh model info``: which model an agent runs, and on what backend."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agentmesh.cli.context import console, print_json, run, state

app = typer.Typer(help="Inspect the local GGUF model.", no_args_is_help=True)


@app.command()
def info(
    ctx: typer.Context,
    path: Annotated[Path | None, typer.Option(help="a GGUF file (default: SmolLM2-135M)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Path, sha256, size, quantization, context, GPU layers and backend."""
    from agentmesh.llm import LocalModel

    state(ctx)
    model = LocalModel(path) if path is not None else LocalModel.default()
    try:
        with console.status("loading model..."):
            details = run(model.info())
    finally:
        model.close()
    data = dataclasses.asdict(details)
    if json_out:
        print_json(data)
        return
    table = Table(show_header=False, box=None)
    for key, value in data.items():
        table.add_row(key, str(value))
    console.print(table)
