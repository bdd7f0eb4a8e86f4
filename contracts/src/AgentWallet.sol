// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
// Transient storage (EIP-1153): the guard costs ~200 gas a call instead of ~5,000.
import {ReentrancyGuardTransient} from
    "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {IUniswapV2Router} from "./UniswapV2Interfaces.sol";
import {TwapOracle} from "./TwapOracle.sol";

/// @title AgentWallet
/// @notice A contract account that a user (the owner) funds and an agent key operates
/// within the owner's policy:
///
/// - an allowlist of (target, selector) pairs the agent may call (selector 0x00000000
///   stands for a call without calldata, i.e. a plain ETH transfer);
/// - a spending cap per token (address(0) = native ETH), either per UTC day or over a
///   rolling 24 hours (kept in hourly buckets, so the window is exact to the hour).
///
/// What counts as spending: the ETH `value` of a call, any drop in the wallet's balance
/// of a capped token during the call (transfers, router pulls, ...), and the amount of
/// an ERC-20 `approve` on a capped token (an allowance can be drained later, outside
/// the wallet's sight, so it is charged when granted). For DeFi, `executeWithApproval`
/// grants an allowance for one call only and charges what actually left the wallet.
/// Native ETH is always capped: with no cap set the agent may send none.
///
/// Swaps are checked down to their parameters, because an allowed
/// `swapExactTokensForTokens` with `to = attacker` or `amountOutMin = 0` would drain
/// the wallet within its cap. A call to a router the owner registered must be a
/// Uniswap V2 token swap whose recipient is this wallet, whose path is short and made
/// of tokens the owner allows, and whose deadline is near; and the price it realized,
/// measured by this wallet's balance changes (not read from calldata), must be no worse
/// than the pool's time-weighted average price (from a `TwapOracle`) by more than the
/// owner's slippage. A swap selector sent to any other target is refused. The whole
/// delegation ends at `validUntil`.
contract AgentWallet is Ownable2Step, Pausable, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    enum CapMode {
        None,
        Daily,
        Rolling
    }

    struct Cap {
        uint128 limit;
        CapMode mode;
    }

    struct DailySpend {
        uint64 day;
        uint192 spent;
    }

    struct HourBucket {
        uint40 hour;
        uint216 spent;
    }

    /// @dev One storage slot: read once per swap.
    struct SwapPolicy {
        TwapOracle oracle;
        uint32 twapWindow;
        uint32 maxDeadlineDelay;
        uint16 maxSlippageBps;
        uint8 maxPathLength;
    }

    /// @dev What a swap looked like before its call, to measure what it realized.
    struct SwapCheck {
        address[] path;
        uint256 inBefore;
        uint256 outBefore;
    }

    address public constant NATIVE = address(0);
    bytes4 public constant NO_CALLDATA = bytes4(0);
    bytes4 private constant APPROVE = IERC20.approve.selector;
    uint256 public constant MAX_CAPPED_TOKENS = 16;
    /// @dev swapExactTokensForTokens(uint256,uint256,address[],address,uint256)
    bytes4 private constant SWAP_EXACT_IN = 0x38ed1739;
    /// @dev swapTokensForExactTokens(uint256,uint256,address[],address,uint256)
    bytes4 private constant SWAP_EXACT_OUT = 0x8803dbee;
    uint256 public constant MAX_PATH_LENGTH = 4;
    uint256 private constant BPS = 10_000;

    address public agent;
    /// @notice The agent may act up to and including this time (unix seconds).
    uint64 public validUntil;

    mapping(address token => Cap) private _caps;
    address[] private _cappedTokens;
    mapping(address token => DailySpend) private _daily;
    mapping(address token => HourBucket[24]) private _hourly;
    mapping(address target => mapping(bytes4 selector => bool)) private _allowed;
    SwapPolicy private _swapPolicy;
    mapping(address router => bool) private _routers;
    mapping(address token => bool) private _swapTokens;

    event AgentChanged(address indexed previousAgent, address indexed newAgent);
    event CapSet(address indexed token, uint256 limit, CapMode mode);
    event AllowlistSet(address indexed target, bytes4 indexed selector, bool allowed);
    event Executed(address indexed target, bytes4 indexed selector, uint256 value);
    event Spent(address indexed token, uint256 amount, uint256 spentInWindow);
    event Withdrawn(address indexed token, address indexed to, uint256 amount);
    event Received(address indexed from, uint256 amount);
    event ValidUntilSet(uint256 validUntil);
    event SwapPolicySet(
        address indexed oracle,
        uint256 twapWindow,
        uint256 maxDeadlineDelay,
        uint256 maxSlippageBps,
        uint256 maxPathLength
    );
    event RouterSet(address indexed router, bool allowed);
    event SwapTokenSet(address indexed token, bool allowed);
    event Swapped(
        address indexed router,
        address indexed tokenIn,
        address indexed tokenOut,
        uint256 amountIn,
        uint256 amountOut,
        uint256 twapOut
    );

    error NotAgent(address caller);
    error TargetNotAllowed(address target, bytes4 selector);
    error CapExceeded(address token, uint256 attempted, uint256 remaining);
    error MalformedCalldata(uint256 length);
    error SelfCallForbidden();
    error TooManyCappedTokens(uint256 max);
    error ZeroAddress();
    error CallFailed(address target, bytes reason);
    error NativeTransferFailed(address to, uint256 amount);
    error RenounceDisabled();
    error DelegationExpired(uint256 validUntil);
    error RouterNotRegistered(address target);
    error RouterCallNotSwap(address router, bytes4 selector);
    error SwapRecipientNotWallet(address to);
    error PathLengthOutOfRange(uint256 length, uint256 maxLength);
    error CircularPath(address token);
    error TokenNotAllowed(address token);
    error DeadlineTooFar(uint256 deadline, uint256 latest);
    error PriceBelowTwap(uint256 amountOut, uint256 minimumOut);
    error SwapPolicyNotSet();
    error RouterFactoryMismatch(address router, address factory);
    error SlippageOutOfRange(uint256 bps);
    error MaxPathOutOfRange(uint256 maxLength);
    error TwapWindowOutOfRange(uint256 window, uint256 min, uint256 max);

    modifier onlyAgent() {
        if (msg.sender != agent) revert NotAgent(msg.sender);
        if (block.timestamp > validUntil) revert DelegationExpired(validUntil);
        _;
    }

    constructor(address owner_, address agent_) Ownable(owner_) {
        agent = agent_;
        validUntil = type(uint64).max;
        emit AgentChanged(address(0), agent_);
    }

    receive() external payable {
        emit Received(msg.sender, msg.value);
    }

    // ------------------------------------------------------------------ agent

    /// @notice Call `target` with `value` and `data` as the wallet, within the policy.
    function execute(address target, uint256 value, bytes calldata data)
        external
        onlyAgent
        whenNotPaused
        nonReentrant
        returns (bytes memory result)
    {
        bytes4 selector = _checkCall(target, data);
        uint256 approved = _approvalCharge(target, selector, data);
        SwapCheck memory swap = _checkSwap(target, selector, data);
        uint256[] memory before = _cappedBalances();
        result = _call(target, value, data);
        _chargeAll(before, value, target, approved);
        _checkSwapPrice(target, swap);
        emit Executed(target, selector, value);
    }

    /// @notice Approve `spender` for `amount` of `token`, call `target`, then revoke the
    /// allowance; only the tokens that actually left the wallet are charged.
    function executeWithApproval(
        address token,
        address spender,
        uint256 amount,
        address target,
        uint256 value,
        bytes calldata data
    ) external onlyAgent whenNotPaused nonReentrant returns (bytes memory result) {
        bytes4 selector = _checkCall(target, data);
        SwapCheck memory swap = _checkSwap(target, selector, data);
        // A one-call allowance to the registered router being called needs no approve
        // allowlist entry; an allowlisted `approve` would also let `execute` approve
        // anyone, outside every swap rule, so delegations for swaps do not grant it.
        if (!(spender == target && _routers[target]) && !_allowed[token][APPROVE]) {
            revert TargetNotAllowed(token, APPROVE);
        }
        // The one-call allowance to `spender` is not charged (what it pulls is), but an
        // approve made by the target call itself outlives this call, so it is.
        uint256 approved = _approvalCharge(target, selector, data);
        uint256[] memory before = _cappedBalances();
        IERC20(token).forceApprove(spender, amount);
        result = _call(target, value, data);
        IERC20(token).forceApprove(spender, 0);
        _chargeAll(before, value, target, approved);
        _checkSwapPrice(target, swap);
        emit Executed(target, selector, value);
    }

    // ------------------------------------------------------------------ owner

    function setAgent(address newAgent) external onlyOwner {
        emit AgentChanged(agent, newAgent);
        agent = newAgent;
    }

    /// @notice Take the agent's rights away at once (same as setAgent(address(0))).
    function revokeAgent() external onlyOwner {
        emit AgentChanged(agent, address(0));
        agent = address(0);
    }

    /// @notice Set or clear (mode None) the spending cap of `token`.
    function setCap(address token, uint128 limit, CapMode mode) external onlyOwner {
        bool wasCapped = _caps[token].mode != CapMode.None;
        bool capped = mode != CapMode.None;
        if (capped && !wasCapped && token != NATIVE) {
            if (_cappedTokens.length >= MAX_CAPPED_TOKENS) {
                revert TooManyCappedTokens(MAX_CAPPED_TOKENS);
            }
            _cappedTokens.push(token);
        } else if (!capped && wasCapped && token != NATIVE) {
            _removeCappedToken(token);
        }
        _caps[token] = Cap({limit: capped ? limit : 0, mode: mode});
        emit CapSet(token, limit, mode);
    }

    function setAllowed(address target, bytes4 selector, bool allowed) external onlyOwner {
        if (target == address(0)) revert ZeroAddress();
        if (target == address(this)) revert SelfCallForbidden();
        _allowed[target][selector] = allowed;
        emit AllowlistSet(target, selector, allowed);
    }

    /// @notice End the delegation at `until` (unix seconds); the owner may move it either way.
    function setValidUntil(uint64 until) external onlyOwner {
        validUntil = until;
        emit ValidUntilSet(until);
    }

    /// @notice The rules every swap through a registered router must meet: prices from
    /// `oracle` averaged over `twapWindow` seconds, a realized price at most
    /// `maxSlippageBps` worse than that, a deadline at most `maxDeadlineDelay` seconds
    /// away, and a path of at most `maxPathLength` tokens.
    function setSwapPolicy(
        address oracle,
        uint32 twapWindow,
        uint32 maxDeadlineDelay,
        uint16 maxSlippageBps,
        uint8 maxPathLength
    ) external onlyOwner {
        if (oracle == address(0)) revert ZeroAddress();
        if (maxSlippageBps >= BPS) revert SlippageOutOfRange(maxSlippageBps);
        if (maxPathLength < 2 || maxPathLength > MAX_PATH_LENGTH) {
            revert MaxPathOutOfRange(maxPathLength);
        }
        (uint256 minWindow, uint256 maxWindow) = TwapOracle(oracle).windowRange();
        if (twapWindow < minWindow || twapWindow > maxWindow) {
            revert TwapWindowOutOfRange(twapWindow, minWindow, maxWindow);
        }
        _swapPolicy = SwapPolicy({
            oracle: TwapOracle(oracle),
            twapWindow: twapWindow,
            maxDeadlineDelay: maxDeadlineDelay,
            maxSlippageBps: maxSlippageBps,
            maxPathLength: maxPathLength
        });
        emit SwapPolicySet(oracle, twapWindow, maxDeadlineDelay, maxSlippageBps, maxPathLength);
    }

    /// @notice Register (or drop) a Uniswap V2 router whose swaps the agent may make;
    /// it must trade on the oracle's factory, or the oracle would price other pools.
    function setRouter(address router, bool allowed) external onlyOwner {
        if (router == address(0)) revert ZeroAddress();
        if (allowed) {
            TwapOracle oracle = _swapPolicy.oracle;
            if (address(oracle) == address(0)) revert SwapPolicyNotSet();
            address routerFactory = IUniswapV2Router(router).factory();
            if (routerFactory != address(oracle.factory())) {
                revert RouterFactoryMismatch(router, routerFactory);
            }
        }
        _routers[router] = allowed;
        emit RouterSet(router, allowed);
    }

    /// @notice Allow (or stop allowing) `token` anywhere on a swap's path.
    function setSwapToken(address token, bool allowed) external onlyOwner {
        if (token == address(0)) revert ZeroAddress();
        _swapTokens[token] = allowed;
        emit SwapTokenSet(token, allowed);
    }

    /// @dev Renouncing would strand the funds: the owner is the only way out for them.
    function renounceOwnership() public pure override {
        revert RenounceDisabled();
    }

    function pause() external onlyOwner {
        _pause();
    }

    function unpause() external onlyOwner {
        _unpause();
    }

    /// @notice Owner takes funds out, unconstrained by the agent's policy.
    function withdraw(address token, address payable to, uint256 amount)
        external
        onlyOwner
        nonReentrant
    {
        if (to == address(0)) revert ZeroAddress();
        emit Withdrawn(token, to, amount);
        if (token == NATIVE) {
            (bool ok,) = to.call{value: amount}("");
            if (!ok) revert NativeTransferFailed(to, amount);
        } else {
            IERC20(token).safeTransfer(to, amount);
        }
    }

    // ------------------------------------------------------------------ views

    function capOf(address token) external view returns (uint256 limit, CapMode mode) {
        Cap memory cap = _caps[token];
        return (cap.limit, cap.mode);
    }

    function isAllowed(address target, bytes4 selector) external view returns (bool) {
        return _allowed[target][selector];
    }

    function swapPolicy()
        external
        view
        returns (
            address oracle,
            uint256 twapWindow,
            uint256 maxDeadlineDelay,
            uint256 maxSlippageBps,
            uint256 maxPathLength
        )
    {
        SwapPolicy memory p = _swapPolicy;
        return (
            address(p.oracle), p.twapWindow, p.maxDeadlineDelay, p.maxSlippageBps, p.maxPathLength
        );
    }

    function isRouter(address router) external view returns (bool) {
        return _routers[router];
    }

    function isSwapToken(address token) external view returns (bool) {
        return _swapTokens[token];
    }

    function cappedTokens() external view returns (address[] memory) {
        return _cappedTokens;
    }

    /// @notice Spent so far in the current window, and what is left of the cap.
    function spendable(address token) external view returns (uint256 spent, uint256 remaining) {
        Cap memory cap = _caps[token];
        if (cap.mode == CapMode.None) {
            // Native ETH is always capped: no cap means nothing may be sent.
            return (0, token == NATIVE ? 0 : type(uint256).max);
        }
        spent = _spentInWindow(token, cap.mode);
        remaining = spent >= cap.limit ? 0 : cap.limit - spent;
    }

    // ------------------------------------------------------------------ internals

    function _checkCall(address target, bytes calldata data) private view returns (bytes4) {
        if (target == address(this)) revert SelfCallForbidden();
        if (data.length != 0 && data.length < 4) revert MalformedCalldata(data.length);
        bytes4 selector = data.length == 0 ? NO_CALLDATA : bytes4(data[:4]);
        // 0x00000000 stands for "no calldata"; calldata starting with it would pass the
        // plain-transfer allowlist entry while reaching the target's fallback with data.
        if (data.length != 0 && selector == NO_CALLDATA) revert MalformedCalldata(data.length);
        if (!_allowed[target][selector]) revert TargetNotAllowed(target, selector);
        return selector;
    }

    /// @dev An ERC-20 approve on a capped token is charged at the approved amount: the
    /// allowance can be drained later, outside this wallet's balance checks.
    function _approvalCharge(address target, bytes4 selector, bytes calldata data)
        private
        view
        returns (uint256 approved)
    {
        if (selector == APPROVE && _caps[target].mode != CapMode.None) {
            (, approved) = abi.decode(data[4:], (address, uint256));
        }
    }

    /// @dev A swap's parameters against the owner's rules, before the call; returns the
    /// balances its realized price is measured from (an empty path: not a swap).
    function _checkSwap(address target, bytes4 selector, bytes calldata data)
        private
        view
        returns (SwapCheck memory swap)
    {
        bool isSwap = selector == SWAP_EXACT_IN || selector == SWAP_EXACT_OUT;
        if (!_routers[target]) {
            if (isSwap) revert RouterNotRegistered(target);
            return swap;
        }
        if (!isSwap) revert RouterCallNotSwap(target, selector);
        SwapPolicy memory policy = _swapPolicy;
        (,, address[] memory path, address to, uint256 deadline) =
            abi.decode(data[4:], (uint256, uint256, address[], address, uint256));
        if (to != address(this)) revert SwapRecipientNotWallet(to);
        uint256 n = path.length;
        if (n < 2 || n > policy.maxPathLength) revert PathLengthOutOfRange(n, policy.maxPathLength);
        if (path[0] == path[n - 1]) revert CircularPath(path[0]);
        for (uint256 i = 0; i < n; ++i) {
            if (!_swapTokens[path[i]]) revert TokenNotAllowed(path[i]);
        }
        uint256 latest = block.timestamp + policy.maxDeadlineDelay;
        if (deadline > latest) revert DeadlineTooFar(deadline, latest);
        swap.path = path;
        swap.inBefore = IERC20(path[0]).balanceOf(address(this));
        swap.outBefore = IERC20(path[n - 1]).balanceOf(address(this));
    }

    /// @dev After the call: what left and what arrived, against the pools' TWAP. The
    /// oracle reads cumulative prices as of this block, which the swap did not move.
    function _checkSwapPrice(address router, SwapCheck memory swap) private {
        uint256 n = swap.path.length;
        if (n == 0) return;
        address tokenIn = swap.path[0];
        address tokenOut = swap.path[n - 1];
        uint256 inAfter = IERC20(tokenIn).balanceOf(address(this));
        uint256 outAfter = IERC20(tokenOut).balanceOf(address(this));
        uint256 amountIn = swap.inBefore > inAfter ? swap.inBefore - inAfter : 0;
        uint256 amountOut = outAfter > swap.outBefore ? outAfter - swap.outBefore : 0;
        SwapPolicy memory policy = _swapPolicy;
        uint256 twapOut = policy.oracle.consultPath(swap.path, amountIn, policy.twapWindow);
        uint256 minimumOut = Math.mulDiv(twapOut, BPS - policy.maxSlippageBps, BPS);
        if (amountOut < minimumOut) revert PriceBelowTwap(amountOut, minimumOut);
        emit Swapped(router, tokenIn, tokenOut, amountIn, amountOut, twapOut);
    }

    function _call(address target, uint256 value, bytes calldata data)
        private
        returns (bytes memory result)
    {
        bool ok;
        (ok, result) = target.call{value: value}(data);
        if (!ok) revert CallFailed(target, result);
    }

    function _cappedBalances() private view returns (uint256[] memory balances) {
        uint256 n = _cappedTokens.length;
        balances = new uint256[](n);
        for (uint256 i = 0; i < n; ++i) {
            balances[i] = IERC20(_cappedTokens[i]).balanceOf(address(this));
        }
    }

    /// @dev Charges native value, every capped token's balance drop, and an approval
    /// granted on `approvedToken`. Reverts (undoing the call) if any cap is exceeded.
    function _chargeAll(
        uint256[] memory before,
        uint256 value,
        address approvedToken,
        uint256 approved
    ) private {
        _charge(NATIVE, value);
        uint256 n = before.length;
        for (uint256 i = 0; i < n; ++i) {
            address token = _cappedTokens[i];
            uint256 afterBalance = IERC20(token).balanceOf(address(this));
            uint256 spent = afterBalance < before[i] ? before[i] - afterBalance : 0;
            if (token == approvedToken) spent += approved;
            _charge(token, spent);
        }
    }

    function _charge(address token, uint256 amount) private {
        if (amount == 0) return;
        Cap memory cap = _caps[token];
        if (cap.mode == CapMode.None) {
            if (token == NATIVE) revert CapExceeded(NATIVE, amount, 0);
            return;
        }
        uint256 spent = _spentInWindow(token, cap.mode);
        uint256 remaining = spent >= cap.limit ? 0 : cap.limit - spent;
        if (amount > remaining) revert CapExceeded(token, amount, remaining);
        if (cap.mode == CapMode.Daily) {
            uint64 day = uint64(block.timestamp / 1 days);
            DailySpend storage d = _daily[token];
            if (d.day != day) {
                d.day = day;
                d.spent = 0;
            }
            d.spent += uint192(amount);
        } else {
            uint40 hour = uint40(block.timestamp / 1 hours);
            HourBucket storage b = _hourly[token][hour % 24];
            if (b.hour != hour) {
                b.hour = hour;
                b.spent = 0;
            }
            b.spent += uint216(amount);
        }
        emit Spent(token, amount, spent + amount);
    }

    function _spentInWindow(address token, CapMode mode) private view returns (uint256 spent) {
        if (mode == CapMode.Daily) {
            DailySpend memory d = _daily[token];
            return d.day == uint64(block.timestamp / 1 days) ? d.spent : 0;
        }
        uint40 hour = uint40(block.timestamp / 1 hours);
        HourBucket[24] storage buckets = _hourly[token];
        for (uint256 i = 0; i < 24; ++i) {
            HourBucket memory b = buckets[i];
            if (b.hour + 24 > hour) spent += b.spent;
        }
    }

    function _removeCappedToken(address token) private {
        uint256 n = _cappedTokens.length;
        for (uint256 i = 0; i < n; ++i) {
            if (_cappedTokens[i] == token) {
                _cappedTokens[i] = _cappedTokens[n - 1];
                _cappedTokens.pop();
                return;
            }
        }
    }
}
