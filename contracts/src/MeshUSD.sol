// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title MeshUSD
/// @notice The devnet settlement token agents pay each other in. Six decimals, like
/// the stablecoins it stands in for; only the deployer (owner) can mint.
contract MeshUSD is ERC20, Ownable {
    constructor(address initialOwner) ERC20("Mesh USD", "mUSD") Ownable(initialOwner) {}

    /// @inheritdoc ERC20
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @notice Mint `amount` base units to `to`. Owner only (the devnet deployer).
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
