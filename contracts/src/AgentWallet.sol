// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

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
contract AgentWallet is Ownable2Step, Pausable, ReentrancyGuard {
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

    address public constant NATIVE = address(0);
    bytes4 public constant NO_CALLDATA = bytes4(0);
    bytes4 private constant APPROVE = IERC20.approve.selector;
    uint256 public constant MAX_CAPPED_TOKENS = 16;

    address public agent;

    mapping(address token => Cap) private _caps;
    address[] private _cappedTokens;
    mapping(address token => DailySpend) private _daily;
    mapping(address token => HourBucket[24]) private _hourly;
    mapping(address target => mapping(bytes4 selector => bool)) private _allowed;

    event AgentChanged(address indexed previousAgent, address indexed newAgent);
    event CapSet(address indexed token, uint256 limit, CapMode mode);
    event AllowlistSet(address indexed target, bytes4 indexed selector, bool allowed);
    event Executed(address indexed target, bytes4 indexed selector, uint256 value);
    event Spent(address indexed token, uint256 amount, uint256 spentInWindow);
    event Withdrawn(address indexed token, address indexed to, uint256 amount);
    event Received(address indexed from, uint256 amount);

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

    modifier onlyAgent() {
        if (msg.sender != agent) revert NotAgent(msg.sender);
        _;
    }

    constructor(address owner_, address agent_) Ownable(owner_) {
        agent = agent_;
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
        uint256[] memory before = _cappedBalances();
        result = _call(target, value, data);
        _chargeAll(before, value, target, approved);
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
        if (!_allowed[token][APPROVE]) revert TargetNotAllowed(token, APPROVE);
        // The one-call allowance to `spender` is not charged (what it pulls is), but an
        // approve made by the target call itself outlives this call, so it is.
        uint256 approved = _approvalCharge(target, selector, data);
        uint256[] memory before = _cappedBalances();
        IERC20(token).forceApprove(spender, amount);
        result = _call(target, value, data);
        IERC20(token).forceApprove(spender, 0);
        _chargeAll(before, value, target, approved);
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
