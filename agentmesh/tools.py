"""Find the external tools agentmesh runs: the project-local tools folder and anvil.

``make setup`` installs anvil (npm ``@foundry-rs/anvil``) and solc-js into ``.tools/``
at the project root. Installed agentmesh finds that folder from ``AGENTMESH_TOOLS``,
from the current directory upwards, or next to its own source (editable install).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from agentmesh.errors import ToolMissingError

TOOLS_DIR_NAME = ".tools"
SETUP_HINT = "run `make setup` in the agentmesh checkout (or set AGENTMESH_ANVIL)"


def _candidates() -> list[Path]:
    env = os.environ.get("AGENTMESH_TOOLS")
    found = [Path(env)] if env else []
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        found.extend(parent / TOOLS_DIR_NAME for parent in (start, *start.parents))
    return found


def find_tools_dir() -> Path:
    """The project-local tools folder; raises :class:`ToolMissingError` if none exists."""
    for candidate in _candidates():
        if (candidate / "node_modules").is_dir():
            return candidate
    raise ToolMissingError("tools folder (.tools)", SETUP_HINT)


def find_anvil(explicit: Path | None = None) -> Path:
    """Path of the anvil binary: explicit, ``AGENTMESH_ANVIL``, project-local, then PATH."""
    for given in (explicit, os.environ.get("AGENTMESH_ANVIL")):
        if given:
            path = Path(given)
            if path.is_file() and os.access(path, os.X_OK):
                return path
            raise ToolMissingError(f"anvil at {path}", "the file is missing or not executable")
    try:
        modules = find_tools_dir() / "node_modules" / "@foundry-rs"
        # The native binary ships in a per-platform optional package.
        for binary in sorted(modules.glob("anvil-*/bin/anvil")):
            if os.access(binary, os.X_OK):
                return binary
    except ToolMissingError:
        pass
    on_path = shutil.which("anvil")
    if on_path:
        return Path(on_path)
    raise ToolMissingError("anvil", SETUP_HINT)
