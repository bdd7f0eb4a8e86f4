// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from
    "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

interface IStaking {
    function hasPermit(address validator) external view returns (bool);
    function isRanked(address provider) external view returns (bool);
    function accountOf(address account) external view returns (Account memory);

    struct Account {
        uint128 active;
        uint128 unbonding;
        uint64 unbondingEnds;
        uint32 holds;
        bool validator;
    }
}

/// @title Consensus
/// @notice Validators' scores of providers, epoch by epoch, turned into each provider's
/// consensus score and incentive and each validator's reward: a simplified Yuma
/// consensus (Bittensor).
///
/// - Epoch `e` runs from `genesis + e * epochLength` for `epochLength` seconds. While it
///   runs, a validator holding a permit in `Staking` commits `keccak256(abi.encode(e,
///   validator, providers, scores, salt))`; its active stake then is its weight.
/// - In the `revealWindow` seconds after the epoch, it reveals the providers and scores
///   (0..10,000 each) and the salt; they must match the commit.
/// - After the reveal window anyone may `finalize(e)`, once. For each provider scored:
///   the consensus score is the stake-weighted median of every revealed validator's
///   score (a validator that did not score it counts 0); each validator's score is
///   clipped at that consensus; the provider's rank is the stake-weighted mean of the
///   clipped scores, and its incentive its share of all ranks (a provider that is not
///   ranked in `Staking` at finalization gets none). A validator's dividend is its stake
///   times the sum over providers of its clipped score times the provider's incentive,
///   normalized: it earns by agreeing with consensus on the providers that earn.
/// - The reward pool (what the contract holds beyond what it owes: the protocol's fees,
///   sent by the escrow, the channels and the jury, or `fund`ed by anyone) is paid out at
///   finalization: `providerShareBps` to providers by incentive, the rest to validators by
///   dividend, credited to be `claim`ed. Rounding dust and an epoch with nobody to pay
///   stay in the pool for the next epoch.
///
/// Simplified relative to Yuma: no bonds or their moving average (a validator's reward
/// follows this epoch's agreement only), no kappa (the median is at half the stake), no
/// per-subnet emission schedule (the pool is what fees brought in).
contract Consensus is ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    uint256 public constant MAX_SCORE = 10_000;
    uint256 public constant MAX_PROVIDERS = 64; // scored in one epoch, all validators together
    uint256 public constant MAX_REVEALS = 32; // validators revealed in one epoch

    IStaking public immutable staking;
    IERC20 public immutable token;
    uint256 public immutable genesis;
    uint256 public immutable epochLength;
    uint256 public immutable revealWindow;
    uint256 public immutable providerShareBps;

    struct Commit {
        bytes32 hash;
        uint128 stake; // the validator's active stake when it committed
        bool revealed;
    }

    mapping(uint256 epoch => mapping(address validator => Commit)) private _commits;
    mapping(uint256 epoch => address[]) private _revealed;
    mapping(uint256 epoch => address[]) private _providers;
    mapping(uint256 epoch => mapping(address provider => bool)) private _known;
    mapping(uint256 epoch => mapping(address validator => mapping(address provider => uint256)))
        private _scores;
    mapping(uint256 epoch => bool) public finalized;
    mapping(uint256 epoch => mapping(address provider => uint256)) public consensusOf;
    mapping(uint256 epoch => mapping(address provider => uint256)) public incentiveOf; // 1e18 = all
    mapping(uint256 epoch => mapping(address validator => uint256)) public dividendOf; // 1e18 = all
    mapping(address account => uint256) public claimable;
    uint256 public owed; // credited, not yet claimed

    event Committed(uint256 indexed epoch, address indexed validator, bytes32 hash, uint256 stake);
    event Revealed(uint256 indexed epoch, address indexed validator, uint256 providers);
    event Funded(address indexed from, uint256 amount, uint256 pool);
    event ProviderScored(
        uint256 indexed epoch, address indexed provider, uint256 consensus, uint256 incentive,
        uint256 reward
    );
    event ValidatorRewarded(
        uint256 indexed epoch, address indexed validator, uint256 dividend, uint256 reward
    );
    event Finalized(uint256 indexed epoch, uint256 paid, uint256 pool);
    event Claimed(address indexed account, uint256 amount);

    error BadConfig();
    error NoPermit(address validator);
    error AlreadyCommitted(uint256 epoch, address validator);
    error RevealNotOpen(uint256 epoch, uint256 opens);
    error RevealClosed(uint256 epoch, uint256 closed);
    error NoCommit(uint256 epoch, address validator);
    error AlreadyRevealed(uint256 epoch, address validator);
    error RevealMismatch(uint256 epoch, address validator);
    error BadScores(uint256 index);
    error TooManyProviders(uint256 max);
    error TooManyReveals(uint256 max);
    error FinalizeTooEarly(uint256 epoch, uint256 opens);
    error AlreadyFinalized(uint256 epoch);
    error ZeroAmount();
    error NothingToClaim();

    constructor(
        IStaking staking_,
        IERC20 token_,
        uint256 epochLength_,
        uint256 revealWindow_,
        uint256 providerShareBps_
    ) {
        if (
            address(staking_) == address(0) || address(token_) == address(0) || epochLength_ == 0
                || revealWindow_ == 0 || revealWindow_ > epochLength_
                || providerShareBps_ > 10_000
        ) revert BadConfig();
        staking = staking_;
        token = token_;
        genesis = block.timestamp;
        epochLength = epochLength_;
        revealWindow = revealWindow_;
        providerShareBps = providerShareBps_;
    }

    // ------------------------------------------------------------------ time

    function currentEpoch() public view returns (uint256) {
        return (block.timestamp - genesis) / epochLength;
    }

    function epochEnd(uint256 epoch) public view returns (uint256) {
        return genesis + (epoch + 1) * epochLength;
    }

    // ------------------------------------------------------------------ validators

    /// @notice Commit this epoch's scores: `keccak256(abi.encode(epoch, msg.sender,
    /// providers, scores, salt))` (see `commitment`).
    function commit(bytes32 hash) external {
        uint256 epoch = currentEpoch();
        if (!staking.hasPermit(msg.sender)) revert NoPermit(msg.sender);
        Commit storage c = _commits[epoch][msg.sender];
        if (c.hash != bytes32(0)) revert AlreadyCommitted(epoch, msg.sender);
        uint128 stake = staking.accountOf(msg.sender).active;
        c.hash = hash;
        c.stake = stake;
        emit Committed(epoch, msg.sender, hash, stake);
    }

    /// @notice Reveal `epoch`'s committed scores in the window after it.
    function reveal(
        uint256 epoch,
        address[] calldata providers,
        uint16[] calldata scores,
        bytes32 salt
    ) external {
        uint256 end = epochEnd(epoch);
        if (block.timestamp < end) revert RevealNotOpen(epoch, end);
        if (block.timestamp >= end + revealWindow) revert RevealClosed(epoch, end + revealWindow);
        Commit storage c = _commits[epoch][msg.sender];
        if (c.hash == bytes32(0)) revert NoCommit(epoch, msg.sender);
        if (c.revealed) revert AlreadyRevealed(epoch, msg.sender);
        if (commitment(epoch, msg.sender, providers, scores, salt) != c.hash) {
            revert RevealMismatch(epoch, msg.sender);
        }
        if (providers.length != scores.length) revert BadScores(providers.length);
        if (_revealed[epoch].length >= MAX_REVEALS) revert TooManyReveals(MAX_REVEALS);
        c.revealed = true;
        _revealed[epoch].push(msg.sender);
        mapping(address => uint256) storage mine = _scores[epoch][msg.sender];
        for (uint256 i; i < providers.length; ++i) {
            address provider = providers[i];
            // +1: a stored 0 means "not scored", so a repeated provider is caught.
            if (scores[i] > MAX_SCORE || provider == address(0) || mine[provider] != 0) {
                revert BadScores(i);
            }
            mine[provider] = uint256(scores[i]) + 1;
            if (!_known[epoch][provider]) {
                if (_providers[epoch].length >= MAX_PROVIDERS) revert TooManyProviders(MAX_PROVIDERS);
                _known[epoch][provider] = true;
                _providers[epoch].push(provider);
            }
        }
        emit Revealed(epoch, msg.sender, providers.length);
    }

    function commitment(
        uint256 epoch,
        address validator,
        address[] calldata providers,
        uint16[] calldata scores,
        bytes32 salt
    ) public pure returns (bytes32) {
        return keccak256(abi.encode(epoch, validator, providers, scores, salt));
    }

    // ------------------------------------------------------------------ consensus

    /// @notice Compute `epoch`'s consensus, incentives and dividends, and pay the pool out.
    function finalize(uint256 epoch) external nonReentrant {
        uint256 opens = epochEnd(epoch) + revealWindow;
        if (block.timestamp < opens) revert FinalizeTooEarly(epoch, opens);
        if (finalized[epoch]) revert AlreadyFinalized(epoch);
        finalized[epoch] = true;
        (uint256[] memory stakes, uint256 totalStake) = _stakes(epoch);
        (uint256[] memory ranks, uint256 totalRank) = _rank(epoch, stakes, totalStake);
        uint256 available = pool();
        uint256 providerPool = available * providerShareBps / 10_000;
        (uint256 paid, uint256[] memory incentives) =
            _payProviders(epoch, ranks, totalRank, providerPool);
        paid += _payValidators(epoch, stakes, incentives, available - providerPool);
        emit Finalized(epoch, paid, available - paid);
    }

    function _stakes(uint256 epoch) private view returns (uint256[] memory stakes, uint256 total) {
        address[] storage validators = _revealed[epoch];
        stakes = new uint256[](validators.length);
        for (uint256 v; v < validators.length; ++v) {
            stakes[v] = _commits[epoch][validators[v]].stake;
            total += stakes[v];
        }
    }

    /// @dev Each provider's consensus (stored) and rank: the stake-weighted mean of the
    /// scores clipped at consensus (0 for a provider not ranked in Staking).
    function _rank(uint256 epoch, uint256[] memory stakes, uint256 totalStake)
        private
        returns (uint256[] memory ranks, uint256 totalRank)
    {
        address[] storage validators = _revealed[epoch];
        address[] storage providers = _providers[epoch];
        ranks = new uint256[](providers.length);
        uint256[] memory scores = new uint256[](validators.length);
        for (uint256 p; p < providers.length; ++p) {
            address provider = providers[p];
            for (uint256 v; v < validators.length; ++v) {
                scores[v] = _score(epoch, validators[v], provider);
            }
            uint256 consensus = _weightedMedian(scores, stakes, totalStake);
            consensusOf[epoch][provider] = consensus;
            if (totalStake == 0 || !staking.isRanked(provider)) continue;
            uint256 rank;
            for (uint256 v; v < validators.length; ++v) {
                rank += stakes[v] * (scores[v] < consensus ? scores[v] : consensus);
            }
            ranks[p] = rank / totalStake;
            totalRank += ranks[p];
        }
    }

    function _payProviders(
        uint256 epoch,
        uint256[] memory ranks,
        uint256 totalRank,
        uint256 providerPool
    ) private returns (uint256 paid, uint256[] memory incentives) {
        address[] storage providers = _providers[epoch];
        incentives = new uint256[](providers.length);
        if (totalRank == 0) return (0, incentives);
        for (uint256 p; p < providers.length; ++p) {
            address provider = providers[p];
            incentives[p] = ranks[p] * 1e18 / totalRank;
            incentiveOf[epoch][provider] = incentives[p];
            uint256 reward = providerPool * ranks[p] / totalRank;
            paid += _credit(provider, reward);
            emit ProviderScored(
                epoch, provider, consensusOf[epoch][provider], incentives[p], reward
            );
        }
    }

    /// @dev Dividend: stake x sum over providers of (score clipped at consensus) x
    /// incentive, normalized; the validators' pool is split by it.
    function _payValidators(
        uint256 epoch,
        uint256[] memory stakes,
        uint256[] memory incentives,
        uint256 validatorPool
    ) private returns (uint256 paid) {
        address[] storage validators = _revealed[epoch];
        address[] storage providers = _providers[epoch];
        uint256[] memory dividends = new uint256[](validators.length);
        uint256 total;
        for (uint256 v; v < validators.length; ++v) {
            uint256 agreement;
            for (uint256 p; p < providers.length; ++p) {
                if (incentives[p] == 0) continue;
                uint256 score = _score(epoch, validators[v], providers[p]);
                uint256 consensus = consensusOf[epoch][providers[p]];
                agreement += (score < consensus ? score : consensus) * incentives[p];
            }
            dividends[v] = stakes[v] * (agreement / 1e18);
            total += dividends[v];
        }
        if (total == 0) return 0;
        for (uint256 v; v < validators.length; ++v) {
            uint256 share = dividends[v] * 1e18 / total;
            dividendOf[epoch][validators[v]] = share;
            uint256 reward = validatorPool * dividends[v] / total;
            paid += _credit(validators[v], reward);
            emit ValidatorRewarded(epoch, validators[v], share, reward);
        }
    }

    function _score(uint256 epoch, address validator, address provider)
        private
        view
        returns (uint256)
    {
        uint256 stored = _scores[epoch][validator][provider];
        return stored == 0 ? 0 : stored - 1;
    }

    /// @dev The smallest score at which the stake of validators scoring at most it
    /// reaches half of all stake. Insertion sort: at most MAX_REVEALS entries.
    function _weightedMedian(uint256[] memory scores, uint256[] memory stakes, uint256 total)
        private
        pure
        returns (uint256)
    {
        uint256 n = scores.length;
        if (n == 0 || total == 0) return 0;
        uint256[] memory order = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            order[i] = i;
            for (uint256 j = i; j > 0 && scores[order[j - 1]] > scores[order[j]]; --j) {
                (order[j - 1], order[j]) = (order[j], order[j - 1]);
            }
        }
        uint256 seen;
        for (uint256 i; i < n; ++i) {
            seen += stakes[order[i]];
            if (seen * 2 >= total) return scores[order[i]];
        }
        return scores[order[n - 1]];
    }

    function _credit(address account, uint256 amount) private returns (uint256) {
        if (amount == 0) return 0;
        claimable[account] += amount;
        owed += amount;
        return amount;
    }

    // ------------------------------------------------------------------ money

    /// @notice Add `amount` to the reward pool (the protocol's fees come in this way).
    function fund(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit Funded(msg.sender, amount, pool());
    }

    /// @notice What the next finalization pays out: every token held that is not owed.
    /// Fees arrive as plain transfers (escrow, channels, jury), so the pool is counted
    /// from the balance rather than from calls.
    function pool() public view returns (uint256) {
        return token.balanceOf(address(this)) - owed;
    }

    /// @notice Withdraw every reward credited to the caller.
    function claim() external nonReentrant {
        uint256 amount = claimable[msg.sender];
        if (amount == 0) revert NothingToClaim();
        claimable[msg.sender] = 0;
        owed -= amount;
        emit Claimed(msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    // ------------------------------------------------------------------ views

    function providersOf(uint256 epoch) external view returns (address[] memory) {
        return _providers[epoch];
    }

    function revealedOf(uint256 epoch) external view returns (address[] memory) {
        return _revealed[epoch];
    }

    function scoreOf(uint256 epoch, address validator, address provider)
        external
        view
        returns (bool scored, uint256 score)
    {
        uint256 stored = _scores[epoch][validator][provider];
        return (stored != 0, stored == 0 ? 0 : stored - 1);
    }

    function commitOf(uint256 epoch, address validator) external view returns (Commit memory) {
        return _commits[epoch][validator];
    }
}
