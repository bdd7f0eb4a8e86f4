// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
// Transient storage (EIP-1153): the guard costs ~200 gas a call instead of ~5,000.
import {ReentrancyGuardTransient} from
    "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {ProtocolFee} from "./ProtocolFee.sol";

/// @title PaymentChannel
/// @notice Many unidirectional token channels in one contract: a payer deposits once and
/// pays a payee off chain with vouchers, each an EIP-712 signature by the payer over
/// (channel id, cumulative amount). The domain holds the chain id and this contract's
/// address, and the channel id binds payer, payee, token and a salt: a voucher means
/// nothing on another channel, contract or chain.
///
/// - The payee claims at any time with its latest voucher (only the increase over what
///   it has claimed is paid; the channel stays open), or closes with it (the rest goes
///   back to the payer).
/// - The payer's way out: `requestClose`, then `challengeDelay` seconds during which the
///   payee can still claim, then `withdraw` the rest.
/// - Cumulative amounts only increase and never exceed the deposit.
/// - What the payee is paid pays the protocol fee (`ProtocolFee`) on the way.
contract PaymentChannel is EIP712, ReentrancyGuardTransient, ProtocolFee {
    using SafeERC20 for IERC20;

    struct Channel {
        address payer;
        uint64 closeRequestedAt; // 0: no close requested
        bool closed;
        address payee;
        address token;
        uint128 deposit;
        uint128 claimed; // the highest cumulative amount paid to the payee
    }

    bytes32 public constant VOUCHER_TYPEHASH =
        keccak256("Voucher(bytes32 channelId,uint256 cumulative)");

    /// @notice Seconds the payee has to claim after the payer asks to close.
    uint256 public immutable challengeDelay;

    mapping(bytes32 id => Channel) private _channels;

    event Opened(
        bytes32 indexed id,
        address indexed payer,
        address indexed payee,
        address token,
        uint256 deposit
    );
    event ToppedUp(bytes32 indexed id, uint256 amount, uint256 deposit);
    event Claimed(bytes32 indexed id, uint256 amount, uint256 cumulative);
    event CloseRequested(bytes32 indexed id, uint256 claimUntil);
    event Closed(bytes32 indexed id, uint256 toPayee, uint256 toPayer);

    error ChannelExists(bytes32 id);
    error UnknownChannel(bytes32 id);
    error NotPayer(address caller);
    error NotPayee(address caller);
    error InvalidPayee(address payee);
    error ZeroAmount();
    error ChannelClosed(bytes32 id);
    error CloseAlreadyRequested(bytes32 id);
    error StaleVoucher(uint256 cumulative, uint256 claimed);
    error OverDeposit(uint256 cumulative, uint256 deposit);
    error WrongSigner(address signer, address payer);
    error ChallengePeriodOpen(uint256 until);
    error ChallengePeriodOver(uint256 ended);
    error CloseNotRequested(bytes32 id);
    error DepositTooLarge(uint256 deposit);
    error BadConfig();

    constructor(uint256 challengeDelay_, address feeSink_, address feeToken_, uint256 feeBps_)
        EIP712("agentmesh.PaymentChannel", "1")
        ProtocolFee(feeSink_, feeToken_, feeBps_)
    {
        if (challengeDelay_ == 0) revert BadConfig();
        challengeDelay = challengeDelay_;
    }

    // ------------------------------------------------------------------ payer

    /// @notice Open a channel to `payee` with `amount` of `token`; returns its id.
    function open(address payee, address token, uint256 amount, bytes32 salt)
        external
        nonReentrant
        returns (bytes32 id)
    {
        if (payee == address(0) || payee == msg.sender) revert InvalidPayee(payee);
        if (amount == 0) revert ZeroAmount();
        if (amount > type(uint128).max) revert DepositTooLarge(amount);
        id = channelId(msg.sender, payee, token, salt);
        if (_channels[id].payer != address(0)) revert ChannelExists(id);
        _channels[id] = Channel({
            payer: msg.sender,
            closeRequestedAt: 0,
            closed: false,
            payee: payee,
            token: token,
            deposit: uint128(amount),
            claimed: 0
        });
        emit Opened(id, msg.sender, payee, token, amount);
        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Add `amount` to an open channel (not once a close is requested).
    function topUp(bytes32 id, uint256 amount) external nonReentrant {
        Channel storage c = _open(id);
        if (msg.sender != c.payer) revert NotPayer(msg.sender);
        if (c.closeRequestedAt != 0) revert CloseAlreadyRequested(id);
        if (amount == 0) revert ZeroAmount();
        uint256 deposit = uint256(c.deposit) + amount;
        if (deposit > type(uint128).max) revert DepositTooLarge(deposit);
        c.deposit = uint128(deposit);
        emit ToppedUp(id, amount, deposit);
        IERC20(c.token).safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Start the payer's way out: the payee has `challengeDelay` to claim.
    function requestClose(bytes32 id) external {
        Channel storage c = _open(id);
        if (msg.sender != c.payer) revert NotPayer(msg.sender);
        if (c.closeRequestedAt != 0) revert CloseAlreadyRequested(id);
        c.closeRequestedAt = uint64(block.timestamp);
        emit CloseRequested(id, block.timestamp + challengeDelay);
    }

    /// @notice After the challenge delay, take back what the payee did not claim.
    function withdraw(bytes32 id) external nonReentrant {
        Channel storage c = _open(id);
        if (msg.sender != c.payer) revert NotPayer(msg.sender);
        if (c.closeRequestedAt == 0) revert CloseNotRequested(id);
        uint256 until = uint256(c.closeRequestedAt) + challengeDelay;
        if (block.timestamp <= until) revert ChallengePeriodOpen(until);
        c.closed = true;
        uint256 rest = uint256(c.deposit) - c.claimed;
        emit Closed(id, 0, rest);
        if (rest > 0) IERC20(c.token).safeTransfer(c.payer, rest);
    }

    // ------------------------------------------------------------------ payee

    /// @notice Collect what `cumulative` (signed by the payer) adds to what was claimed.
    function claim(bytes32 id, uint256 cumulative, bytes calldata signature)
        external
        nonReentrant
    {
        Channel storage c = _payeeChannel(id);
        uint256 amount = _accept(id, c, cumulative, signature);
        c.claimed = uint128(cumulative);
        emit Claimed(id, amount, cumulative);
        _payWithFee(c.token, c.payee, amount);
    }

    /// @notice Claim with the latest voucher (or none: `cumulative` = what was claimed)
    /// and close the channel; the rest goes back to the payer.
    function close(bytes32 id, uint256 cumulative, bytes calldata signature)
        external
        nonReentrant
    {
        Channel storage c = _payeeChannel(id);
        uint256 amount = cumulative == c.claimed ? 0 : _accept(id, c, cumulative, signature);
        c.claimed = uint128(cumulative);
        c.closed = true;
        uint256 rest = uint256(c.deposit) - cumulative;
        if (amount > 0) emit Claimed(id, amount, cumulative);
        emit Closed(id, amount, rest);
        if (amount > 0) _payWithFee(c.token, c.payee, amount);
        if (rest > 0) IERC20(c.token).safeTransfer(c.payer, rest);
    }

    // ------------------------------------------------------------------ views

    function channelId(address payer, address payee, address token, bytes32 salt)
        public
        view
        returns (bytes32)
    {
        return keccak256(abi.encode(address(this), payer, payee, token, salt));
    }

    function channel(bytes32 id) external view returns (Channel memory) {
        return _channels[id];
    }

    /// @notice The EIP-712 digest a payer signs for `cumulative` on channel `id`.
    function voucherDigest(bytes32 id, uint256 cumulative) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(VOUCHER_TYPEHASH, id, cumulative)));
    }

    // ------------------------------------------------------------------ internals

    function _open(bytes32 id) private view returns (Channel storage c) {
        c = _channels[id];
        if (c.payer == address(0)) revert UnknownChannel(id);
        if (c.closed) revert ChannelClosed(id);
    }

    function _payeeChannel(bytes32 id) private view returns (Channel storage c) {
        c = _open(id);
        if (msg.sender != c.payee) revert NotPayee(msg.sender);
        if (c.closeRequestedAt != 0) {
            uint256 until = uint256(c.closeRequestedAt) + challengeDelay;
            if (block.timestamp > until) revert ChallengePeriodOver(until);
        }
    }

    /// @dev Checks a voucher; returns what it adds. OpenZeppelin's ECDSA refuses
    /// malleable (high-s) and malformed signatures with its own errors.
    function _accept(bytes32 id, Channel storage c, uint256 cumulative, bytes calldata signature)
        private
        view
        returns (uint256)
    {
        if (cumulative <= c.claimed) revert StaleVoucher(cumulative, c.claimed);
        if (cumulative > c.deposit) revert OverDeposit(cumulative, c.deposit);
        address signer = ECDSA.recover(voucherDigest(id, cumulative), signature);
        if (signer != c.payer) revert WrongSigner(signer, c.payer);
        return cumulative - c.claimed;
    }
}
