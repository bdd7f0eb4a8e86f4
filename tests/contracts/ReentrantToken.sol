// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice Test-only ERC-20 that calls back into `target` with `payload` on its first
/// balance movement (transfer or transferFrom) after `arm`.
/// @dev It can also act as a party of an escrow job through `exec`, so the re-entrant
/// call is authorised in every respect except the reentrancy guard. With `bubble` set
/// a failed re-entry reverts the whole transfer with the callee's revert data;
/// otherwise the outcome is recorded and the transfer goes through.
contract ReentrantToken is ERC20 {
    address public target;
    bytes public payload;
    bool public bubble;
    bool public attempted;
    bool public reentrySucceeded;
    bytes public reentryResult;

    constructor() ERC20("Reentrant Token", "REENT") {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function arm(address target_, bytes calldata payload_, bool bubble_) external {
        target = target_;
        payload = payload_;
        bubble = bubble_;
        attempted = false;
        reentrySucceeded = false;
        delete reentryResult;
    }

    /// @notice Call `to` with `data` as this contract, bubbling any revert.
    function exec(address to, bytes calldata data) external returns (bytes memory) {
        (bool ok, bytes memory ret) = to.call(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(ret, 32), mload(ret))
            }
        }
        return ret;
    }

    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        if (target != address(0) && !attempted && from != address(0)) {
            attempted = true;
            (bool ok, bytes memory ret) = target.call(payload);
            reentrySucceeded = ok;
            reentryResult = ret;
            if (!ok && bubble) {
                assembly ("memory-safe") {
                    revert(add(ret, 32), mload(ret))
                }
            }
        }
    }
}
