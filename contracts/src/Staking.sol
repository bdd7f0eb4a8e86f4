// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ReentrancyGuardTransient} from
    "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title Staking
/// @notice Providers and validators lock the market's token here: stake at risk is what
/// makes a provider rankable and a validator's scores count (the Bittensor idea).
///
/// - `stake` adds to an account's active stake; `unbond` moves part of it to unbonding,
///   which can be `withdraw`n once `unbondingDelay` has passed since the last `unbond`
///   (a new `unbond` restarts the delay for everything unbonding).
/// - A provider is ranked when its active stake is at least `minProviderStake`.
/// - An account may `registerValidator` (at most `maxValidators`); the `permits`
///   validators with the most active stake (ties: the lower address) hold a permit.
/// - The slasher (the jury contract, set once by the owner) may put an account's stake on
///   hold while a dispute is open (no withdrawal until every hold is released) and slash
///   it: active stake first, then unbonding stake, so stake withdrawn during unbonding
///   while a dispute is open is still slashable.
contract Staking is Ownable, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    struct Account {
        uint128 active;
        uint128 unbonding;
        uint64 unbondingEnds; // when the unbonding stake can be withdrawn
        uint32 holds; // open disputes against this account
        bool validator;
    }

    IERC20 public immutable token;
    uint256 public immutable unbondingDelay;
    uint256 public immutable minProviderStake;
    uint256 public immutable permits;
    uint256 public immutable maxValidators;
    address public slasher;

    mapping(address account => Account) private _accounts;
    address[] private _validators;

    event Staked(address indexed account, uint256 amount, uint256 active);
    event Unbonding(address indexed account, uint256 amount, uint256 until);
    event Withdrawn(address indexed account, uint256 amount);
    event ValidatorRegistered(address indexed account);
    event SlasherSet(address slasher);
    event Held(address indexed account, uint256 holds);
    event Released(address indexed account, uint256 holds);
    event Slashed(address indexed account, uint256 amount, address to);

    error ZeroAmount();
    error BadConfig();
    error InsufficientStake(uint256 requested, uint256 active);
    error NothingToWithdraw();
    error UnbondingNotOver(uint256 until);
    error StakeOnHold(uint256 holds);
    error AlreadyValidator(address account);
    error TooManyValidators(uint256 max);
    error NotSlasher(address caller);
    error SlasherAlreadySet(address slasher);
    error NoHold(address account);
    error SlashTooLarge(uint256 amount, uint256 stake);
    error StakeTooLarge(uint256 stake);

    modifier onlySlasher() {
        if (msg.sender != slasher || slasher == address(0)) revert NotSlasher(msg.sender);
        _;
    }

    constructor(
        IERC20 token_,
        uint256 unbondingDelay_,
        uint256 minProviderStake_,
        uint256 permits_,
        uint256 maxValidators_,
        address owner_
    ) Ownable(owner_) {
        if (
            address(token_) == address(0) || unbondingDelay_ == 0 || minProviderStake_ == 0
                || permits_ == 0 || maxValidators_ < permits_
        ) revert BadConfig();
        token = token_;
        unbondingDelay = unbondingDelay_;
        minProviderStake = minProviderStake_;
        permits = permits_;
        maxValidators = maxValidators_;
    }

    // ------------------------------------------------------------------ stakers

    /// @notice Lock `amount` more as active stake (approve this contract first).
    function stake(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        Account storage a = _accounts[msg.sender];
        uint256 active = uint256(a.active) + amount;
        if (active > type(uint128).max) revert StakeTooLarge(active);
        a.active = uint128(active);
        emit Staked(msg.sender, amount, active);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Start unbonding `amount` of the active stake (it stops counting now).
    function unbond(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        Account storage a = _accounts[msg.sender];
        if (amount > a.active) revert InsufficientStake(amount, a.active);
        a.active -= uint128(amount);
        a.unbonding += uint128(amount);
        uint256 until = block.timestamp + unbondingDelay;
        a.unbondingEnds = uint64(until);
        emit Unbonding(msg.sender, amount, until);
    }

    /// @notice Withdraw all unbonding stake once its delay is over and no hold is open.
    function withdraw() external nonReentrant {
        Account storage a = _accounts[msg.sender];
        uint256 amount = a.unbonding;
        if (amount == 0) revert NothingToWithdraw();
        if (block.timestamp < a.unbondingEnds) revert UnbondingNotOver(a.unbondingEnds);
        if (a.holds != 0) revert StakeOnHold(a.holds);
        a.unbonding = 0;
        emit Withdrawn(msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    /// @notice Become a validator candidate (a permit needs enough active stake).
    function registerValidator() external {
        Account storage a = _accounts[msg.sender];
        if (a.validator) revert AlreadyValidator(msg.sender);
        if (_validators.length >= maxValidators) revert TooManyValidators(maxValidators);
        a.validator = true;
        _validators.push(msg.sender);
        emit ValidatorRegistered(msg.sender);
    }

    // ------------------------------------------------------------------ slasher

    /// @notice The jury contract; settable once.
    function setSlasher(address slasher_) external onlyOwner {
        if (slasher != address(0)) revert SlasherAlreadySet(slasher);
        if (slasher_ == address(0)) revert BadConfig();
        slasher = slasher_;
        emit SlasherSet(slasher_);
    }

    /// @notice Keep `account`'s stake from being withdrawn until released (a dispute).
    function hold(address account) external onlySlasher {
        uint32 holds = ++_accounts[account].holds;
        emit Held(account, holds);
    }

    function release(address account) external onlySlasher {
        Account storage a = _accounts[account];
        if (a.holds == 0) revert NoHold(account);
        uint32 holds = --a.holds;
        emit Released(account, holds);
    }

    /// @notice Take `amount` of `account`'s stake (active first, then unbonding) to `to`.
    function slash(address account, uint256 amount, address to)
        external
        onlySlasher
        nonReentrant
    {
        if (amount == 0) revert ZeroAmount();
        Account storage a = _accounts[account];
        uint256 total = uint256(a.active) + a.unbonding;
        if (amount > total) revert SlashTooLarge(amount, total);
        uint256 fromActive = amount < a.active ? amount : a.active;
        a.active -= uint128(fromActive);
        a.unbonding -= uint128(amount - fromActive);
        emit Slashed(account, amount, to);
        token.safeTransfer(to, amount);
    }

    // ------------------------------------------------------------------ views

    function accountOf(address account) external view returns (Account memory) {
        return _accounts[account];
    }

    function validators() external view returns (address[] memory) {
        return _validators;
    }

    /// @notice A provider is ranked with at least `minProviderStake` active.
    function isRanked(address provider) external view returns (bool) {
        return _accounts[provider].active >= minProviderStake;
    }

    /// @notice Whether `validator` is among the `permits` registered validators with the
    /// most active stake (ties: the lower address first); none without active stake.
    function hasPermit(address validator) public view returns (bool) {
        Account storage v = _accounts[validator];
        if (!v.validator || v.active == 0) return false;
        uint256 ahead;
        uint256 n = _validators.length;
        for (uint256 i; i < n; ++i) {
            address other = _validators[i];
            uint256 stakeOther = _accounts[other].active;
            if (stakeOther > v.active || (stakeOther == v.active && other < validator)) {
                if (++ahead >= permits) return false;
            }
        }
        return true;
    }
}
