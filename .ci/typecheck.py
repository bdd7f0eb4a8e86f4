"""``mypy --strict`` on the package as it installs (``make check`` runs this).

pyproject.toml's ``package-dir`` installs top-level folders as subpackages
(``agents/`` -> ``agentmesh.agents``, ...). mypy knows no such mapping and cannot see
through the editable install's import hook, so it would take ``agentmesh.agents`` for a
missing module. This script mirrors the installed layout as a tree of symlinks,
``build/typecheck/agentmesh/...``, read from ``package-dir`` (so it follows the config),
checks it with ``MYPYPATH``, and prints mypy's paths as the real files
(``agents/agent.py``, not ``build/typecheck/agentmesh/agents/agent.py``).

The tree is brought up to date on every run (new, moved and deleted files included);
mypy's cache (``.mypy_cache``) makes a second run fast. Extra arguments go to mypy.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = Path("build/typecheck")  # under build/: ignored by git, ruff and setuptools
SKIP = {"__pycache__"}


def package_dirs() -> dict[str, str]:
    """``package-dir`` from pyproject.toml: package name -> folder."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    return mapping


def wanted_links(mapping: dict[str, str]) -> dict[Path, Path]:
    """Each symlink of the tree (relative to ROOT) -> the real file or folder it names."""
    links: dict[Path, Path] = {}
    mapped = {name.split(".")[1] for name in mapping if name.count(".") == 1}
    for name, folder in mapping.items():
        parts = name.split(".")
        if len(parts) == 1:
            # The root package: a real folder of links, one per entry, so that the
            # mapped subpackages can sit beside the kernel's modules.
            for entry in sorted((ROOT / folder).iterdir()):
                if entry.name not in SKIP and entry.name not in mapped:
                    links[TREE / name / entry.name] = entry
        elif len(parts) == 2:
            links[TREE.joinpath(*parts)] = ROOT / folder
        else:
            raise SystemExit(f"typecheck: package-dir entry {name!r} is nested too deep")
    return links


def sync_tree(links: dict[Path, Path]) -> None:
    """Make ``TREE`` hold exactly ``links`` (idempotent; touches only what changed)."""
    for link, target in links.items():
        path = ROOT / link
        relative = Path(os.path.relpath(target, path.parent))
        if path.is_symlink() and Path(os.readlink(path)) == relative:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.is_file():
            path.unlink()
        path.symlink_to(relative, target_is_directory=target.is_dir())
    wanted = {ROOT / link for link in links}
    for package in {ROOT / link.parent for link in links}:
        for entry in package.iterdir():
            if entry not in wanted and entry.is_symlink():
                entry.unlink()  # a file removed or renamed since the last run


def real_paths(line: str) -> str:
    """Rewrite mypy's tree paths in ``line`` to the files a developer opens."""
    prefix = re.escape(str(TREE) + os.sep)
    return re.sub(
        prefix + r"[\w./-]+?\.pyi?\b",
        lambda m: os.path.relpath(os.path.realpath(ROOT / m.group(0)), ROOT),
        line,
    )


def main() -> int:
    os.chdir(ROOT)
    mapping = package_dirs()
    sync_tree(wanted_links(mapping))
    env = dict(os.environ, MYPYPATH=str(TREE))
    command = [sys.executable, "-m", "mypy", "-p", "agentmesh", *sys.argv[1:]]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    for stream, text in ((sys.stdout, result.stdout), (sys.stderr, result.stderr)):
        for line in text.splitlines(keepends=True):
            stream.write(real_paths(line))
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
