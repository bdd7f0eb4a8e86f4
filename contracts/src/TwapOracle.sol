// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {IUniswapV2Factory, IUniswapV2Pair} from "./UniswapV2Interfaces.sol";

/// @title TwapOracle
/// @notice Time-weighted average prices of one Uniswap V2 factory's pairs, over any
/// window the caller asks for (from 2 to `granularity - 2` periods).
///
/// The design is Uniswap's sliding-window oracle with a window chosen per query: anyone
/// may call `update` for a pair, which records the pair's cumulative prices at most once
/// per `period` in a ring of `granularity` slots. `consult` finds the observation taken
/// in the period where the window starts and averages from it to now, using the pair's
/// cumulative prices brought up to this second (the counterfactual accumulation since
/// the pair's last update). A price pushed around within the current block has had no
/// time to count, so a manipulated spot price barely moves the average.
///
/// A window whose starting period has no observation has no average (nor has a pair that
/// does not exist): `consult` reverts with `TwapUnavailable`, it never falls back to the
/// spot price.
contract TwapOracle {
    struct Observation {
        uint64 timestamp;
        uint256 price0Cumulative;
        uint256 price1Cumulative;
    }

    IUniswapV2Factory public immutable factory;
    /// @notice keccak256 of the factory's pair creation code: pair addresses are
    /// computed (CREATE2), not looked up, so a consult makes no call to the factory.
    bytes32 public immutable pairInitCodeHash;
    /// @notice Seconds per observation slot.
    uint256 public immutable period;
    /// @notice Slots kept per pair.
    uint256 public immutable granularity;

    mapping(address pair => mapping(uint256 slot => Observation)) private _observations;

    event Observed(
        address indexed pair, uint256 timestamp, uint256 price0Cumulative, uint256 price1Cumulative
    );

    error UnknownPair(address tokenA, address tokenB);
    error TwapUnavailable(address pair, uint256 window);
    error WindowOutOfRange(uint256 window, uint256 min, uint256 max);
    error EmptyPool(address pair);
    error BadConfig();

    constructor(address factory_, bytes32 pairInitCodeHash_, uint256 period_, uint256 granularity_) {
        if (factory_ == address(0) || period_ == 0 || granularity_ < 4) revert BadConfig();
        factory = IUniswapV2Factory(factory_);
        pairInitCodeHash = pairInitCodeHash_;
        period = period_;
        granularity = granularity_;
    }

    /// @notice Record `tokenA`/`tokenB`'s cumulative prices for the current period
    /// (a no-op returning false when this period already has one).
    function update(address tokenA, address tokenB) external returns (bool recorded) {
        address pair = factory.getPair(tokenA, tokenB);
        if (pair == address(0)) revert UnknownPair(tokenA, tokenB);
        // A wrong init-code hash would file observations where consult never looks.
        if (pair != pairFor(tokenA, tokenB)) revert BadConfig();
        Observation storage slot = _observations[pair][(block.timestamp / period) % granularity];
        if (slot.timestamp != 0 && block.timestamp / period == slot.timestamp / period) {
            return false;
        }
        (uint256 c0, uint256 c1) = currentCumulativePrices(pair);
        slot.timestamp = uint64(block.timestamp);
        slot.price0Cumulative = c0;
        slot.price1Cumulative = c1;
        emit Observed(pair, block.timestamp, c0, c1);
        return true;
    }

    /// @notice What `amountIn` of `path[0]` is worth in `path[last]` at each hop's
    /// average price over the last `window` seconds (no fee, no price impact).
    function consultPath(address[] memory path, uint256 amountIn, uint256 window)
        public
        view
        returns (uint256 amountOut)
    {
        amountOut = amountIn;
        for (uint256 i = 0; i + 1 < path.length; ++i) {
            amountOut = consult(path[i], path[i + 1], amountOut, window);
        }
    }

    /// @notice What `amountIn` of `tokenIn` is worth in `tokenOut` at the pair's average
    /// price over the last `window` seconds.
    function consult(address tokenIn, address tokenOut, uint256 amountIn, uint256 window)
        public
        view
        returns (uint256)
    {
        (uint256 minWindow, uint256 maxWindow) = windowRange();
        if (window < minWindow || window > maxWindow) {
            revert WindowOutOfRange(window, minWindow, maxWindow);
        }
        address pair = pairFor(tokenIn, tokenOut);
        uint256 startPeriod = (block.timestamp - window) / period;
        // Read field by field: a swap needs one direction's cumulative, not both.
        Observation storage first = _observations[pair][startPeriod % granularity];
        uint256 observedAt = first.timestamp;
        if (observedAt == 0 || observedAt / period != startPeriod) {
            revert TwapUnavailable(pair, window);
        }
        bool zeroForOne = tokenIn < tokenOut; // token0 is the lower address
        uint256 startCumulative = zeroForOne ? first.price0Cumulative : first.price1Cumulative;
        uint256 elapsed = block.timestamp - observedAt;
        uint256 average;
        // Cumulative prices are meant to overflow; their differences are exact mod 2**256.
        unchecked {
            average = (_currentCumulative(pair, zeroForOne) - startCumulative) / elapsed;
        }
        // `average` is a UQ112x112 price of tokenIn in tokenOut.
        return Math.mulDiv(average, amountIn, 1 << 112);
    }

    /// @notice The shortest and longest windows `consult` answers.
    function windowRange() public view returns (uint256 minWindow, uint256 maxWindow) {
        return (2 * period, (granularity - 2) * period);
    }

    /// @notice When the observation for the period holding `timestamp` was taken
    /// (0 = that period has none). A window starting at `timestamp` needs one.
    function observedAt(address tokenA, address tokenB, uint256 timestamp)
        external
        view
        returns (uint256)
    {
        address pair = pairFor(tokenA, tokenB);
        Observation memory slot = _observations[pair][(timestamp / period) % granularity];
        return slot.timestamp / period == timestamp / period ? slot.timestamp : 0;
    }

    /// @notice The pair's address as the factory creates it (there may be no pair there:
    /// then it has no observations either).
    function pairFor(address tokenA, address tokenB) public view returns (address) {
        (address token0, address token1) = tokenA < tokenB ? (tokenA, tokenB) : (tokenB, tokenA);
        bytes32 salt = keccak256(abi.encodePacked(token0, token1));
        return address(
            uint160(
                uint256(
                    keccak256(abi.encodePacked(hex"ff", address(factory), salt, pairInitCodeHash))
                )
            )
        );
    }

    /// @notice The pair's cumulative prices as of this second: what the pair would store
    /// if it were updated now (Uniswap V2's oracle library does the same).
    /// @dev One direction of ``currentCumulativePrices`` (price of token0 in token1 when
    /// ``zeroForOne``).
    function _currentCumulative(address pair, bool zeroForOne)
        private
        view
        returns (uint256 cumulative)
    {
        cumulative = zeroForOne
            ? IUniswapV2Pair(pair).price0CumulativeLast()
            : IUniswapV2Pair(pair).price1CumulativeLast();
        (uint112 r0, uint112 r1, uint32 last) = IUniswapV2Pair(pair).getReserves();
        if (r0 == 0 || r1 == 0) revert EmptyPool(pair);
        unchecked {
            uint32 since = uint32(block.timestamp) - last; // wraps like the pair's clock
            if (since > 0) {
                cumulative += zeroForOne
                    ? ((uint256(r1) << 112) / r0) * since
                    : ((uint256(r0) << 112) / r1) * since;
            }
        }
    }

    function currentCumulativePrices(address pair) public view returns (uint256 c0, uint256 c1) {
        c0 = IUniswapV2Pair(pair).price0CumulativeLast();
        c1 = IUniswapV2Pair(pair).price1CumulativeLast();
        (uint112 r0, uint112 r1, uint32 last) = IUniswapV2Pair(pair).getReserves();
        if (r0 == 0 || r1 == 0) revert EmptyPool(pair);
        unchecked {
            uint32 since = uint32(block.timestamp) - last; // wraps like the pair's clock
            if (since > 0) {
                c0 += ((uint256(r1) << 112) / r0) * since;
                c1 += ((uint256(r0) << 112) / r1) * since;
            }
        }
    }
}
