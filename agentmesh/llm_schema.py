"""JSON schemas for ``LocalModel.structured``: the llama.cpp grammar that constrains
generation to a schema, and the check of a parsed value against a schema dict."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from agentmesh.errors import ModelOutputError

_grammars: OrderedDict[str, Any] = OrderedDict()
_GRAMMAR_CACHE_SIZE = 64


def grammar_for(name: str, schema: Callable[[], Any]) -> Any:
    """The llama.cpp grammar for the JSON schema ``schema()`` returns (cached by its
    text); a ModelOutputError naming ``name`` and the problem if it cannot be built."""
    from llama_cpp.llama_grammar import LlamaGrammar

    try:
        text = json.dumps(schema())
        grammar = _grammars.get(text)
        if grammar is None:
            grammar = LlamaGrammar.from_json_schema(text, verbose=False)
    except Exception as exc:  # pydantic, json and llama_cpp raise various types
        detail = str(exc) or type(exc).__name__
        raise ModelOutputError(
            f"cannot build a grammar for {name}'s JSON schema: {detail}"
        ) from None
    _grammars[text] = grammar
    _grammars.move_to_end(text)
    while len(_grammars) > _GRAMMAR_CACHE_SIZE:
        _grammars.popitem(last=False)
    return grammar


def check_schema(name: str, schema: Mapping[str, Any]) -> None:
    """A ModelOutputError naming ``name`` if ``schema`` is not a valid JSON schema."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ModelOutputError(
            f"{name} is not a valid JSON schema: {exc.json_path}: {exc.message}"
        ) from None


def schema_mismatch(value: Any, schema: Mapping[str, Any]) -> str | None:
    """Why ``value`` does not match ``schema`` (None if it does): the most relevant
    violation, with its JSON path (``$.price: 'x' is not of type 'integer'``)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    error = best_match(Draft202012Validator(schema).iter_errors(value))
    return None if error is None else f"{error.json_path}: {error.message}"
