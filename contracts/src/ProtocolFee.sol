// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

/// @title ProtocolFee
/// @notice The protocol's fee on what a provider is paid (escrow releases, channel
/// claims): `feeBps` of each payout in `feeToken` (the market's token) goes to `feeSink`,
/// the validators' reward pool (`Consensus`). Payouts in other tokens pay none: the pool
/// could not use them. Fixed at deployment, at most 10%.
abstract contract ProtocolFee {
    using SafeERC20 for IERC20;

    uint256 public constant MAX_FEE_BPS = 1_000;

    address public immutable feeSink;
    address public immutable feeToken;
    uint256 public immutable feeBps;

    event FeeTaken(address indexed token, uint256 amount);

    error BadFee();

    constructor(address feeSink_, address feeToken_, uint256 feeBps_) {
        if (feeBps_ > MAX_FEE_BPS || (feeBps_ > 0 && (feeSink_ == address(0) || feeToken_ == address(0)))) {
            revert BadFee();
        }
        feeSink = feeSink_;
        feeToken = feeToken_;
        feeBps = feeBps_;
    }

    /// @notice The fee taken from a payout of `amount` of `token`.
    function feeOn(address token, uint256 amount) public view returns (uint256) {
        return token == feeToken ? amount * feeBps / 10_000 : 0;
    }

    /// @dev Pay `amount` of `token` to `to`, less the fee, which goes to the sink.
    function _payWithFee(address token, address to, uint256 amount) internal {
        uint256 fee = feeOn(token, amount);
        if (fee > 0) {
            emit FeeTaken(token, fee);
            IERC20(token).safeTransfer(feeSink, fee);
        }
        if (amount > fee) IERC20(token).safeTransfer(to, amount - fee);
    }
}
