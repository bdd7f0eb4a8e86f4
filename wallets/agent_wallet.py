"""The ``AgentWallet`` client: the owner's policy calls and the agent's calls within it.

An ``AgentWallet`` is a contract account a person (the owner) funds and an agent key
operates within the owner's policy: an allowlist of calls, spending caps per token,
an expiry, and for swaps the parameter-level rules of ``AgentWallet.sol`` (recipient,
token list, path length, deadline, realized price against the pool's TWAP). A refusal
by any rule raises :class:`~agentmesh.errors.PolicyViolation`, which names the rule in
words (``POLICY_RULES``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_typing import ChecksumAddress, HexStr
from eth_utils.abi import function_signature_to_4byte_selector
from web3 import AsyncWeb3
from web3.exceptions import ContractLogicError, TransactionNotFound
from web3.logs import DISCARD
from web3.types import TxReceipt

from agentmesh.contracts import load_artifact
from agentmesh.errors import ContractRevertError, PolicyViolation
from agentmesh.wallets.clients import _Client, checksum
from agentmesh.wallets.wallet import Wallet, guard_rpc, revert_from

SWAP_EXACT_IN_SIGNATURE = "swapExactTokensForTokens(uint256,uint256,address[],address,uint256)"
SWAP_EXACT_IN = function_signature_to_4byte_selector(SWAP_EXACT_IN_SIGNATURE)


class CapMode(enum.IntEnum):
    """Mirror of ``AgentWallet.CapMode``."""

    NONE = 0
    DAILY = 1
    ROLLING = 2


NATIVE = "0x0000000000000000000000000000000000000000"
NO_CALLDATA = b"\x00\x00\x00\x00"
# AgentWallet's refusals of an agent call under the owner's policy, each with the rule
# it enforces in words (``CallFailed`` is not one: the policy allowed the call and its
# target reverted). ``TwapUnavailable`` comes from the wallet's oracle: with no average
# price over the owner's window, no swap can be checked, so none is made.
POLICY_RULES: dict[str, str] = {
    "NotAgent": "only the wallet's agent key may act for it",
    "DelegationExpired": "the delegation has expired",
    "EnforcedPause": "the owner has paused the wallet",
    "TargetNotAllowed": "the call's target and function are not on the owner's allowlist",
    "CapExceeded": "the spend is over the token's cap for the window",
    "MalformedCalldata": "the call's data is malformed",
    "SelfCallForbidden": "the wallet may not call itself",
    "RouterNotRegistered": "swaps go only through a router the owner registered",
    "RouterCallNotSwap": "a registered router may only be called to swap tokens",
    "SwapRecipientNotWallet": "the swap's recipient must be the wallet itself",
    "PathLengthOutOfRange": "the swap path is longer than the owner allows",
    "CircularPath": "a swap must end in another token than it starts with",
    "TokenNotAllowed": "every token on the swap path must be on the owner's token list",
    "DeadlineTooFar": "the swap's deadline is later than the owner's maximum delay",
    "PriceBelowTwap": (
        "the price realized is worse than the pool's TWAP by more than the owner's maximum slippage"
    ),
    "TwapUnavailable": "the pool has no TWAP over the owner's window yet",
}
POLICY_ERRORS = frozenset(POLICY_RULES)


def policy_error(exc: ContractRevertError) -> ContractRevertError:
    """``exc`` as a ``PolicyViolation`` naming its rule, when it is one of the wallet's
    refusals; otherwise ``exc`` unchanged (a target that reverted, an RPC error...)."""
    if exc.error_name not in POLICY_ERRORS or isinstance(exc, PolicyViolation):
        return exc
    return PolicyViolation(
        exc.error_name,
        exc.error_args,
        rule=POLICY_RULES[exc.error_name],
        contract=exc.contract,
        raw=exc.raw,
    )


@dataclass(frozen=True, slots=True)
class SwapPolicy:
    """The owner's rules for swaps (``AgentWallet.setSwapPolicy``)."""

    oracle: str
    twap_window: int  # seconds the TWAP is averaged over
    max_deadline_delay: int  # seconds from now a swap's deadline may be
    max_slippage_bps: int  # how much worse than the TWAP a fill may be, in 1/10,000
    max_path_length: int  # tokens on a swap's path, 2..4


@dataclass(frozen=True, slots=True)
class SwapCall:
    """One exact-in Uniswap V2 swap for the wallet to make through ``router``."""

    router: str
    path: tuple[str, ...]
    amount_in: int
    min_out: int
    recipient: str
    deadline: int

    def calldata(self) -> bytes:
        """The router call: ``swapExactTokensForTokens`` with these parameters."""
        return SWAP_EXACT_IN + abi_encode(
            ["uint256", "uint256", "address[]", "address", "uint256"],
            [
                self.amount_in,
                self.min_out,
                [checksum(t) for t in self.path],
                checksum(self.recipient),
                self.deadline,
            ],
        )


@dataclass(frozen=True, slots=True)
class SwapFill:
    """A swap the wallet made, as its ``Swapped`` event tells it (base units)."""

    token_in: ChecksumAddress
    token_out: ChecksumAddress
    amount_in: int
    amount_out: int
    twap_out: int  # what amount_in was worth at the TWAP, in token_out


class AgentWalletClient(_Client):
    """AgentWallet: the owner's policy calls and the agent's ``execute``."""

    contract_name = "AgentWallet"

    @classmethod
    async def deploy(cls, owner: Wallet, agent: str) -> AgentWalletClient:
        """Deploy a new AgentWallet owned by ``owner`` and operated by ``agent``."""
        address, _ = await owner.deploy(
            load_artifact("AgentWallet"), owner.address, checksum(agent)
        )
        return cls(owner, address)

    def as_wallet(self, wallet: Wallet) -> AgentWalletClient:
        """The same contract, sending from another wallet (owner <-> agent)."""
        return type(self)(wallet, self.address)

    async def execute(self, target: str, value: int, data: bytes) -> TxReceipt:
        """Call ``target`` as the agent; a policy refusal raises ``PolicyViolation``."""
        return await self._agent_call(
            self.contract.functions.execute(checksum(target), value, data)
        )

    async def execute_with_approval(
        self, token: str, spender: str, amount: int, target: str, value: int, data: bytes
    ) -> TxReceipt:
        """Approve ``spender`` for ``amount`` of ``token``, call ``target``, reset the
        approval; a policy refusal raises ``PolicyViolation``."""
        return await self._agent_call(
            self.contract.functions.executeWithApproval(
                checksum(token), checksum(spender), amount, checksum(target), value, data
            )
        )

    async def swap(
        self, call: SwapCall, *, sent: Callable[[bytes], None] | None = None
    ) -> TxReceipt:
        """Make ``call`` as the agent, with a one-call allowance of ``call.amount_in`` to
        the router; a policy refusal raises ``PolicyViolation``. ``sent(tx hash)`` runs
        as soon as the node has the transaction (see ``Wallet.send``)."""
        return await self._agent_call(self._swap_fn(call), sent=sent)

    async def simulate_swap(self, call: SwapCall) -> None:
        """``swap`` as an ``eth_call`` from the agent's address: nothing is sent; a
        refusal raises the same ``PolicyViolation`` the transaction would."""
        try:
            await guard_rpc(
                self._swap_fn(call).call({"from": self.wallet.address}), self.wallet.rpc_url
            )
        except ContractLogicError as exc:
            raise policy_error(revert_from(exc)) from None

    def _swap_fn(self, call: SwapCall) -> Any:
        return self.contract.functions.executeWithApproval(
            checksum(call.path[0]),
            checksum(call.router),
            call.amount_in,
            checksum(call.router),
            0,
            call.calldata(),
        )

    def swapped(self, receipt: TxReceipt) -> SwapFill:
        """The ``Swapped`` event of a mined swap: what left, what arrived, and what the
        TWAP said it was worth."""
        events = self.contract.events.Swapped().process_receipt(receipt, errors=DISCARD)
        (event,) = (e for e in events if e["address"] == self.address)
        args = event["args"]
        return SwapFill(
            token_in=checksum(args["tokenIn"]),
            token_out=checksum(args["tokenOut"]),
            amount_in=int(args["amountIn"]),
            amount_out=int(args["amountOut"]),
            twap_out=int(args["twapOut"]),
        )

    async def _agent_call(
        self, fn: Any, *, sent: Callable[[bytes], None] | None = None
    ) -> TxReceipt:
        try:
            return await self.wallet.transact(fn, sent=sent)
        except ContractRevertError as exc:
            raise policy_error(exc) from None

    async def set_cap(self, token: str, limit: int, mode: CapMode) -> TxReceipt:
        return await self.wallet.transact(
            self.contract.functions.setCap(checksum(token), limit, int(mode))
        )

    async def set_allowed(self, target: str, selector: bytes, allowed: bool) -> TxReceipt:
        return await self.wallet.transact(
            self.contract.functions.setAllowed(checksum(target), selector, allowed)
        )

    async def set_agent(self, agent: str) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.setAgent(checksum(agent)))

    async def revoke_agent(self) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.revokeAgent())

    async def pause(self) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.pause())

    async def unpause(self) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.unpause())

    async def withdraw(self, token: str, to: str, amount: int) -> TxReceipt:
        return await self.wallet.transact(
            self.contract.functions.withdraw(checksum(token), checksum(to), amount)
        )

    async def set_valid_until(self, until: int) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.setValidUntil(until))

    async def valid_until(self) -> int:
        return int(await self._call(self.contract.functions.validUntil()))

    async def set_swap_policy(self, policy: SwapPolicy) -> TxReceipt:
        return await self.wallet.transact(
            self.contract.functions.setSwapPolicy(
                checksum(policy.oracle),
                policy.twap_window,
                policy.max_deadline_delay,
                policy.max_slippage_bps,
                policy.max_path_length,
            )
        )

    async def swap_policy(self) -> SwapPolicy:
        oracle, window, delay, slippage, path = await self._call(
            self.contract.functions.swapPolicy()
        )
        return SwapPolicy(checksum(oracle), int(window), int(delay), int(slippage), int(path))

    async def set_router(self, router: str, allowed: bool = True) -> TxReceipt:
        return await self.wallet.transact(
            self.contract.functions.setRouter(checksum(router), allowed)
        )

    async def set_swap_token(self, token: str, allowed: bool = True) -> TxReceipt:
        return await self.wallet.transact(
            self.contract.functions.setSwapToken(checksum(token), allowed)
        )

    async def is_router(self, router: str) -> bool:
        return bool(await self._call(self.contract.functions.isRouter(checksum(router))))

    async def is_swap_token(self, token: str) -> bool:
        return bool(await self._call(self.contract.functions.isSwapToken(checksum(token))))

    async def spendable(self, token: str) -> tuple[int, int]:
        """(spent in the current window, remaining under the cap)."""
        spent, remaining = await self._call(self.contract.functions.spendable(checksum(token)))
        return int(spent), int(remaining)

    async def agent(self) -> ChecksumAddress:
        return AsyncWeb3.to_checksum_address(await self._call(self.contract.functions.agent()))

    async def owner(self) -> ChecksumAddress:
        return AsyncWeb3.to_checksum_address(await self._call(self.contract.functions.owner()))

    async def paused(self) -> bool:
        return bool(await self._call(self.contract.functions.paused()))

    async def cap_of(self, token: str) -> tuple[int, CapMode]:
        """(limit per window, mode) of ``token``'s cap; mode NONE: uncapped."""
        limit, mode = await self._call(self.contract.functions.capOf(checksum(token)))
        return int(limit), CapMode(int(mode))

    async def swap_outcome(self, tx_hash: str) -> tuple[str, SwapFill | None, int]:
        """What became of a swap transaction: ("pending", None, 0) while the chain does
        not have it mined, ("reverted", None, gas) or ("filled", fill, gas)."""
        try:
            receipt = await self.wallet.w3.eth.get_transaction_receipt(HexStr(tx_hash))
        except TransactionNotFound:
            return "pending", None, 0
        if receipt["status"] != 1:
            return "reverted", None, int(receipt["gasUsed"])
        return "filled", self.swapped(receipt), int(receipt["gasUsed"])

    async def find_swap(
        self, from_block: int, token_in: str, amount_in: int, exclude: frozenset[str] = frozenset()
    ) -> tuple[str, SwapFill, int] | None:
        """The wallet's first swap since ``from_block`` that sold exactly ``amount_in`` of
        ``token_in`` whose hash is not in ``exclude``: (tx hash, fill, gas used), or None.
        How an agent that was stopped
        between sending a swap and recording it finds out whether the swap happened."""
        logs = await self.contract.events.Swapped().get_logs(
            from_block=from_block, argument_filters={"tokenIn": checksum(token_in)}
        )
        for log in logs:
            tx = "0x" + bytes(log["transactionHash"]).hex()
            if int(log["args"]["amountIn"]) != amount_in or tx in exclude:
                continue
            receipt = await self.wallet.w3.eth.get_transaction_receipt(log["transactionHash"])
            return (
                "0x" + bytes(log["transactionHash"]).hex(),
                self.swapped(receipt),
                int(receipt["gasUsed"]),
            )
        return None
