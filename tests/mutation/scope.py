"""A cosmic-ray filter that keeps only the mutants of listed functions, with a lean operator set.

cosmic-ray's ``init`` enumerates every mutation of whole modules; this filter marks the
ones outside the scope as ``SKIPPED`` in the session database (as ``cr-filter-pragma``
does), so ``cosmic-ray exec`` only runs the rest. A mutation is kept when:

* its operator is in :data:`KEEP_OPERATORS` (one natural replacement per arithmetic
  operator, PIT's "conditionals boundary" and "negate conditionals" for comparisons,
  and the non-combinatorial operators; a number literal gets one mutant, n + 1), and
* its position lies inside one of the target's scopes: a dotted def/class path
  (``Envelope.verify``, ``build_requester_graph.check``: each part is searched at any
  depth inside the previous one; decorators count as part of the def), or
  ``<constants>`` for the module-level assignments, and
* it is not inside an excluded scope (``-Name``), a type annotation (never evaluated
  here: every module has ``from __future__ import annotations``), an f-string (the text
  of a message) or a ``log.*(...)`` call.

Standalone use, like any cosmic-ray filter::

    python -m tests.mutation.scope SESSION.sqlite --root DIR --scope agentmesh/store.py \\
        Store.known_ids Store.record_done
"""

from __future__ import annotations

import argparse
import ast
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

Pos = tuple[int, int]
Span = tuple[Pos, Pos]

_BINARY = (
    "Add_Sub",
    "Sub_Add",
    "Mul_Div",
    "Div_Mul",
    "FloorDiv_Mul",
    "Mod_FloorDiv",
    "Pow_Mul",
    "LShift_RShift",
    "RShift_LShift",
    "BitOr_BitAnd",
    "BitAnd_BitOr",
    "BitXor_BitOr",
)
_COMPARISON = (
    "Eq_NotEq",
    "NotEq_Eq",
    "Lt_LtE",
    "Lt_GtE",
    "LtE_Lt",
    "LtE_Gt",
    "Gt_GtE",
    "Gt_LtE",
    "GtE_Gt",
    "GtE_Lt",
    "Is_IsNot",
    "IsNot_Is",
)
KEEP_OPERATORS: frozenset[str] = frozenset(
    [f"core/ReplaceBinaryOperator_{name}" for name in _BINARY]
    + [f"core/ReplaceComparisonOperator_{name}" for name in _COMPARISON]
    + [
        "core/ReplaceUnaryOperator_Delete_Not",
        "core/ReplaceUnaryOperator_Delete_USub",
        "core/ReplaceUnaryOperator_Delete_Invert",
        "core/AddNot",
        "core/ReplaceTrueWithFalse",
        "core/ReplaceFalseWithTrue",
        "core/ReplaceAndWithOr",
        "core/ReplaceOrWithAnd",
        "core/ReplaceBreakWithContinue",
        "core/ReplaceContinueWithBreak",
        "core/ExceptionReplacer",
        "core/NumberReplacer",
        "core/RemoveDecorator",
        "core/ZeroIterationForLoop",
    ]
)

NUMBER = "core/NumberReplacer"
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_LOG_NAMES = frozenset({"log", "logger", "logging"})
CONSTANTS = "<constants>"


class ScopeError(ValueError):
    """A scope names a def/class that the module does not have."""


@dataclass(frozen=True, slots=True)
class ModuleScope:
    """Where mutants of one module are kept (columns as ``ast`` counts them: UTF-8 bytes)."""

    keep: tuple[Span, ...]
    drop: tuple[Span, ...]
    lines: tuple[str, ...] = ()
    binops: tuple[Span, ...] = ()
    compares: tuple[Span, ...] = ()
    dotted_excepts: tuple[Span, ...] = ()

    def contains(self, pos: Pos, operator: str = "") -> bool:
        """Whether a mutation at ``pos`` (line, character column, as parso gives) is kept."""
        line, col = pos
        if 0 < line <= len(self.lines):
            col = len(self.lines[line - 1][:col].encode())
        at = (line, col)
        # cosmic-ray also takes the `*` of keyword-only parameters for a multiplication.
        if "BinaryOperator" in operator and not any(_inside(at, s) for s in self.binops):
            return False
        if "ComparisonOperator" in operator and not any(_inside(at, s) for s in self.compares):
            return False
        # ... and fails on a dotted name in an except clause (`except aiohttp.ClientError`).
        if operator.endswith("ExceptionReplacer") and any(
            _inside(at, s) for s in self.dotted_excepts
        ):
            return False
        return any(_inside(at, s) for s in self.keep) and not any(_inside(at, s) for s in self.drop)


def _inside(pos: Pos, span: Span) -> bool:
    return span[0] <= pos < span[1]


def _span(node: ast.AST) -> Span:
    start = (node.lineno, node.col_offset)  # type: ignore[attr-defined]
    if isinstance(node, _DEFS) and node.decorator_list:
        first = node.decorator_list[0]
        start = (first.lineno, 0)
    end = (node.end_lineno or node.lineno, node.end_col_offset or 0)  # type: ignore[attr-defined]
    return start, end


def _defs_named(nodes: Iterable[ast.AST], name: str) -> Iterator[ast.AST]:
    for top in nodes:
        for node in ast.walk(top):
            if isinstance(node, _DEFS) and node.name == name:
                yield node


def _resolve(tree: ast.Module, dotted: str) -> list[ast.AST]:
    found: list[ast.AST] = [tree]
    for part in dotted.split("."):
        found = [d for parent in found for d in _defs_named(_children(parent), part)]
    return found


def _children(node: ast.AST) -> list[ast.AST]:
    return list(ast.iter_child_nodes(node))


def _constants(tree: ast.Module) -> list[Span]:
    return [_span(stmt) for stmt in tree.body if isinstance(stmt, ast.Assign | ast.AnnAssign)]


def _never_run(tree: ast.Module) -> list[Span]:
    """Annotations, f-strings (message text) and log calls."""
    spans: list[Span] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            spans.append(_span(node.annotation))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            spans.append(_span(node.returns))
        elif isinstance(node, ast.AnnAssign):
            spans.append(_span(node.annotation))
        elif isinstance(node, ast.JoinedStr) or (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in _LOG_NAMES
        ):
            spans.append(_span(node))
    return spans


def module_scope(source: str, scopes: Sequence[str]) -> ModuleScope:
    """The kept and dropped spans of ``source`` for ``scopes`` (see the module docstring)."""
    tree = ast.parse(source)
    keep: list[Span] = []
    drop: list[Span] = _never_run(tree)
    for entry in scopes:
        negative = entry.startswith("-")
        name = entry.removeprefix("-")
        if name == CONSTANTS:
            spans = _constants(tree)
        else:
            nodes = _resolve(tree, name)
            if not nodes:
                raise ScopeError(f"no def or class {name!r}")
            spans = [_span(n) for n in nodes]
        (drop if negative else keep).extend(spans)
    nodes = list(ast.walk(tree))
    return ModuleScope(
        tuple(keep),
        tuple(drop),
        tuple(source.splitlines()),
        tuple(_span(n) for n in nodes if isinstance(n, ast.BinOp | ast.AugAssign)),
        tuple(_span(n) for n in nodes if isinstance(n, ast.Compare)),
        tuple(
            _span(a)
            for h in nodes
            if isinstance(h, ast.ExceptHandler) and h.type is not None
            for a in ast.walk(h.type)
            if isinstance(a, ast.Attribute)
        ),
    )


@dataclass(frozen=True, slots=True)
class FilterCounts:
    kept: int
    skipped_operator: int
    skipped_scope: int


def apply(session: Path, root: Path, scopes: Mapping[str, Sequence[str]]) -> FilterCounts:
    """Mark every out-of-scope work item of ``session`` as skipped.

    ``scopes`` maps a module path (as in the session, relative to ``root``) to its scope
    entries. Returns how many mutants were kept and skipped.
    """
    from cosmic_ray.work_db import WorkDB, use_db  # type: ignore[import-untyped]
    from cosmic_ray.work_item import WorkerOutcome, WorkResult  # type: ignore[import-untyped]

    @functools.cache
    def scope_of(module: str) -> ModuleScope:
        key = Path(module).as_posix()
        if key not in scopes:
            return ModuleScope((), ())
        return module_scope((root / key).read_text(), scopes[key])

    kept = by_operator = by_scope = 0
    skip = WorkResult(worker_outcome=WorkerOutcome.SKIPPED)
    with use_db(str(session), WorkDB.Mode.open) as db:
        skipped: list[str] = []
        for item in db.work_items:
            mutation = item.mutations[0]
            if mutation.operator_name not in KEEP_OPERATORS or (
                # One mutant per number literal: n + 1 (occurrences alternate +1, -1).
                mutation.operator_name == NUMBER and mutation.occurrence % 2
            ):
                by_operator += 1
                skipped.append(item.job_id)
            elif not scope_of(str(mutation.module_path)).contains(
                tuple(mutation.start_pos), mutation.operator_name
            ):
                by_scope += 1
                skipped.append(item.job_id)
            else:
                kept += 1
        if skipped:
            db.set_multiple_results(skipped, skip)
    return FilterCounts(kept, by_operator, by_scope)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("session", type=Path, help="cosmic-ray session database")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="folder of the modules")
    parser.add_argument(
        "--scope",
        nargs="+",
        action="append",
        required=True,
        metavar=("MODULE", "NAME"),
        help="a module path and its scope entries (repeatable)",
    )
    args = parser.parse_args(argv)
    scopes = {entry[0]: entry[1:] for entry in args.scope}
    counts = apply(args.session, args.root, scopes)
    print(
        f"kept {counts.kept}, skipped {counts.skipped_operator} (operator) "
        f"+ {counts.skipped_scope} (scope)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
