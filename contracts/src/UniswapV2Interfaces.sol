// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

// The few Uniswap V2 functions agentmesh's contracts read, declared from the published
// ABI (the GPL-licensed Uniswap sources are not part of this repository).

interface IUniswapV2Factory {
    function getPair(address tokenA, address tokenB) external view returns (address pair);
}

interface IUniswapV2Pair {
    function token0() external view returns (address);
    function getReserves()
        external
        view
        returns (uint112 reserve0, uint112 reserve1, uint32 blockTimestampLast);
    function price0CumulativeLast() external view returns (uint256);
    function price1CumulativeLast() external view returns (uint256);
}

interface IUniswapV2Router {
    function factory() external view returns (address);
}
