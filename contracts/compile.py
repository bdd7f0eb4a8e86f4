"""Compile ``contracts/src`` with the pinned solc-js into ``contracts/build``.

Run with ``make contracts`` (or ``python -m agentmesh.contracts.compile``). The compiler
and OpenZeppelin come from the project-local tools folder that ``make setup`` fills
from the npm registry; nothing is downloaded here. Output is deterministic, so a test
can rebuild into a temporary folder and compare with the committed artifacts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from agentmesh.errors import ToolMissingError
from agentmesh.tools import find_tools_dir

SRC_DIR = Path(__file__).resolve().parent / "src"
BUILD_DIR = Path(__file__).resolve().parent / "build"
SOLC_VERSION = "0.8.28"
EVM_VERSION = "cancun"
OPTIMIZER_RUNS = 200

# solc-js runs in node; this driver reads standard JSON on stdin and resolves
# `@openzeppelin/...` imports from the tools folder's node_modules.
_NODE_DRIVER = r"""
const fs = require('fs');
const path = require('path');
const solc = require('solc');
const modules = process.argv[1];
const input = fs.readFileSync(0, 'utf8');
function findImports(p) {
  const full = path.join(modules, p);
  if (fs.existsSync(full)) return { contents: fs.readFileSync(full, 'utf8') };
  return { error: 'not found: ' + p };
}
process.stdout.write(JSON.stringify({version: solc.version(),
  output: JSON.parse(solc.compile(input, { import: findImports }))}));
"""


def standard_input(sources: dict[str, str]) -> dict[str, Any]:
    """The solc standard-JSON input for ``sources`` (file name -> content)."""
    return {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sorted(sources.items())},
        "settings": {
            "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
            "evmVersion": EVM_VERSION,
            # No metadata hash: artifacts depend only on source text and settings.
            "metadata": {"bytecodeHash": "none"},
            "outputSelection": {
                "*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}
            },
        },
    }


def compile_sources(src_dir: Path = SRC_DIR) -> dict[str, dict[str, Any]]:
    """Compile every ``*.sol`` in ``src_dir``; returns artifact dicts keyed by contract name."""
    node = shutil.which("node")
    if node is None:
        raise ToolMissingError("node", "install Node.js, then run `make setup`")
    modules = find_tools_dir() / "node_modules"
    if not (modules / "solc").is_dir():
        raise ToolMissingError("solc-js", "run `make setup` to install the pinned solc")
    sources = {p.name: p.read_text() for p in sorted(src_dir.glob("*.sol"))}
    proc = subprocess.run(
        [node, "-e", _NODE_DRIVER, str(modules)],
        input=json.dumps(standard_input(sources)),
        capture_output=True,
        text=True,
        check=False,
        env={"NODE_PATH": str(modules), "PATH": str(Path(node).parent)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"solc-js failed: {proc.stderr.strip()}")
    result = json.loads(proc.stdout)
    version = str(result["version"])
    if not version.startswith(SOLC_VERSION):
        raise RuntimeError(f"solc-js {version} found, {SOLC_VERSION} pinned: run `make setup`")
    output = result["output"]
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise RuntimeError("\n".join(e["formattedMessage"] for e in errors))

    artifacts: dict[str, dict[str, Any]] = {}
    for file_name, text in sources.items():
        source_hash = "0x" + hashlib.sha256(text.encode()).hexdigest()
        for name, out in output["contracts"].get(file_name, {}).items():
            bytecode = out["evm"]["bytecode"]["object"]
            if not bytecode:  # interfaces and abstract contracts
                continue
            artifacts[name] = {
                "contractName": name,
                "sourceName": file_name,
                "sourceSha256": source_hash,
                "compiler": {
                    "solc": version,
                    "evmVersion": EVM_VERSION,
                    "optimizerRuns": OPTIMIZER_RUNS,
                },
                "abi": out["abi"],
                "bytecode": "0x" + bytecode,
                "deployedBytecode": "0x" + out["evm"]["deployedBytecode"]["object"],
            }
    return artifacts


def render(artifact: dict[str, Any]) -> str:
    """The exact text an artifact is committed as."""
    return json.dumps(artifact, indent=1, sort_keys=True) + "\n"


def write_artifacts(artifacts: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write one ``<Name>.json`` per contract into ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, artifact in sorted(artifacts.items()):
        path = out_dir / f"{name}.json"
        path.write_text(render(artifact))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BUILD_DIR, help="output folder")
    args = parser.parse_args(argv)
    try:
        paths = write_artifacts(compile_sources(), args.out)
    except (ToolMissingError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
