"""Services an agent sells: declared with ``@agent.service`` from a typed function.

The function's parameters after ``ctx`` become the service's input schema (a pydantic
model with ``extra="forbid"``), and its return annotation the result type. Limits
declared with ``Annotated`` (``text: Annotated[str, Field(max_length=20_000)]``) are part
of that schema: a call whose input breaks one is declined, naming the field and the
limit, before any proposal. A requester
sends the input as a JSON object; the provider validates it before the work starts and
serializes the result as canonical JSON of that type. Before delivering, the provider
applies its own check (the declared type, non-empty, and the service's ``check=``) and
abandons the job (refund at once) rather than deliver a result that fails it. The
requester, which does not know the provider's code, checks that the result is non-empty
JSON (of the ``result_type`` it passed to ``Agent.buy``, if any) and applies the
``check=`` it passed before it pays.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from agentmesh.canonical import canonical_json
from agentmesh.errors import AgentMeshValueError, ModelError
from agentmesh.wallets.units import MUSD_DECIMALS, parse_amount

if TYPE_CHECKING:
    from agentmesh.chat_model import ChatModel

SERVICE_NAME = r"^[a-z][a-z0-9_.-]{0,63}$"
ServiceFn = Callable[..., Awaitable[Any]]
CheckFn = Callable[[Any], bool]


def parse_price(value: str | int) -> int:
    """``"0.05 mUSD"``, ``"0.05"`` -> base units (6 decimals); an int is base units."""
    if isinstance(value, bool):
        raise AgentMeshValueError(f"invalid price {value!r}: not an amount")
    if isinstance(value, int):
        if value < 0:
            raise AgentMeshValueError(f"invalid price {value}: must be zero or positive")
        return value
    text = value.strip()
    amount, _, symbol = text.partition(" ")
    if symbol.strip() not in ("", "mUSD"):
        raise AgentMeshValueError(f"invalid price {value!r}: prices are in mUSD")
    return parse_amount(amount, MUSD_DECIMALS, symbol="mUSD")


@dataclass(frozen=True, slots=True)
class ServiceContext:
    """What a service function can use while it works."""

    service: str
    conversation: str  # hex conversation id
    requester: str  # the buyer's address
    agent_name: str = ""
    chat_model: ChatModel | None = None

    @property
    def model(self) -> ChatModel:
        """The agent's chat model (shared; calls are serialized).

        Raises ``ModelError`` naming the fix when the agent was made without one.
        """
        if self.chat_model is None:
            raise ModelError(
                f"agent {self.agent_name or '?'} has no model: pass model=LocalModel.default() "
                "(or any ChatModel) to Agent(...)"
            )
        return self.chat_model


@dataclass(frozen=True)
class Service:
    """One service: its name, prices, input/result types and the function doing it."""

    name: str
    price: int  # list price, base units
    floor: int  # never sold below this (hard rule)
    fn: ServiceFn
    input_model: type[BaseModel]
    result: TypeAdapter[Any]
    result_type: Any
    check: CheckFn | None = None
    description: str = ""

    @classmethod
    def from_function(
        cls,
        name: str,
        fn: ServiceFn,
        *,
        price: str | int,
        floor: str | int | None = None,
        check: CheckFn | None = None,
        description: str = "",
    ) -> Service:
        import re

        if not re.match(SERVICE_NAME, name):
            raise AgentMeshValueError(
                f"invalid service name {name!r}: lowercase letters, digits, '_', '.', '-' "
                "(starting with a letter, at most 64)"
            )
        if not inspect.iscoroutinefunction(fn):
            raise AgentMeshValueError(f"service {name!r}: {fn.__name__} must be `async def`")
        list_price = parse_price(price)
        minimum = list_price if floor is None else parse_price(floor)
        if list_price == 0 or minimum > list_price:
            raise AgentMeshValueError(
                f"service {name!r}: price must be positive and at least the floor"
            )
        try:
            # ctx may be annotated with a ServiceContext imported anywhere (or nowhere).
            # include_extras: keep ``Annotated`` metadata (Field limits, validators),
            # which get_type_hints strips by default.
            hints = get_type_hints(
                fn, localns={"ServiceContext": ServiceContext}, include_extras=True
            )
        except NameError as exc:  # an annotation imported only under TYPE_CHECKING
            raise AgentMeshValueError(
                f"service {name!r}: cannot resolve the annotations of {fn.__name__}: {exc}"
            ) from None
        params = list(inspect.signature(fn).parameters.values())
        if not params:
            raise AgentMeshValueError(f"service {name!r}: the first parameter must be ctx")
        fields: dict[str, Any] = {}
        for param in params[1:]:
            if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                raise AgentMeshValueError(
                    f"service {name!r}: parameter {param.name} must be a named parameter"
                )
            annotation = hints.get(param.name, Any)
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (annotation, default)
        input_model = create_model(
            f"{fn.__name__}_input", __config__=ConfigDict(extra="forbid"), **fields
        )
        result_type = hints.get("return", Any)
        return cls(
            name=name,
            price=list_price,
            floor=minimum,
            fn=fn,
            input_model=input_model,
            result=TypeAdapter(result_type),
            result_type=result_type,
            check=check,
            description=description or (inspect.getdoc(fn) or "").split("\n")[0],
        )

    def parse_input(self, text: str) -> BaseModel:
        """Validate a requester's JSON input; ``AgentMeshValueError`` naming the field."""
        try:
            return self.input_model.model_validate_json(text)
        except ValidationError as exc:
            raise AgentMeshValueError(f"invalid input for {self.name}: {_first(exc)}") from None

    async def run(self, ctx: ServiceContext, text: str) -> str:
        """Run the function on validated input; the result as canonical JSON text."""
        arguments = self.parse_input(text)
        value = await self.fn(ctx, **dict(arguments))
        return canonical_json(self.result.dump_python(value, mode="json"))

    def accepts_result(self, text: str) -> tuple[bool, str]:
        """The requester's check: the declared type, non-empty, and the custom check."""
        try:
            value = self.result.validate_json(text)
        except ValidationError as exc:
            shown = _unannotated(self.result_type)
            return False, f"result is not a valid {shown}: {_first(exc)}"
        return check_result(value, self.check)


def check_result(
    value: Any, check: CheckFn | None, result_type: Any = None, *, whose: str = "the service's"
) -> tuple[bool, str]:
    """Default check (non-empty; of ``result_type`` when given) plus an optional custom one
    (``whose`` check it is, for the message: the service's own, or the buyer's)."""
    if result_type is not None:
        try:
            # Validated as the JSON it came as: strict (no "1" for 1), and an object
            # may become a model or a dataclass.
            TypeAdapter(result_type).validate_json(json.dumps(value), strict=True)
        except ValidationError as exc:
            return False, f"result is not a valid {result_type}: {_first(exc)}"
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        return False, "result is empty"
    if isinstance(value, str) and not value.strip():
        return False, "result is blank"
    if check is not None:
        try:
            if not check(value):
                return False, f"result failed {whose} check"
        except Exception as exc:  # a buggy check is a failed check, not a crash
            return False, f"{whose} check raised {type(exc).__name__}: {exc}"
    return True, ""


def _unannotated(kind: Any) -> Any:
    """``kind`` without its ``Annotated`` metadata (for messages: the limit is named by
    the validation error itself)."""
    return get_args(kind)[0] if get_origin(kind) is Annotated else kind


def _first(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(map(str, error["loc"])) or "input"
    return f"{where}: {error['msg']}"
