// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from
    "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {TaskEscrow} from "./TaskEscrow.sol";

interface IJuryStaking {
    struct Account {
        uint128 active;
        uint128 unbonding;
        uint64 unbondingEnds;
        uint32 holds;
        bool validator;
    }

    function validators() external view returns (address[] memory);
    function hasPermit(address validator) external view returns (bool);
    function accountOf(address account) external view returns (Account memory);
    function hold(address account) external;
    function release(address account) external;
    function slash(address account, uint256 amount, address to) external;
}

/// @title Jury
/// @notice The arbiter of `TaskEscrow` jobs that name it: a disputed job is decided by a
/// few staked validators drawn by stake, voting with commit-reveal on what the parties
/// showed against the hashes already on chain. It is `Staking`'s slasher.
///
/// Life of a case (job `id`, disputed in the escrow):
///   open (client, within `openWindow` of the dispute; pays `fee`; the provider's stake is
///         put on hold) -- not opened in time: `settleUnopened` releases the job to the
///         provider (the client dropped its dispute)
///   -> draw (anyone, from the block after `open`): `jurySize` jurors among the validators
///         holding a permit (not the parties), drawn without replacement with probability
///         proportional to active stake; starts the evidence, commit and reveal windows
///   -> showInput (client: the terms whose sha256 is the job's termsHash, and the input
///         whose sha256 those terms name) and showResult (provider: the result whose
///         sha256 is the job's resultHash), before the evidence window ends; a party
///         showing something that does not match loses at once
///   -> commitVote (juror: keccak256(abi.encode(id, juror, vote, salt))) until the commit
///         window ends, revealVote after it (or once every juror committed)
///   -> settle (anyone, after the reveal window, or once every juror revealed and both
///         parties showed): a party that did not show loses (the provider first: a result
///         it cannot show is no delivery); otherwise the side with votes from a majority
///         of the jury wins; neither is `NoQuorum`.
///
/// Outcomes:
///   Release  (client lost): the job is paid to the provider; the client's fee pays the
///            jurors.
///   Refund   (provider lost): the deposit goes back to the client with its fee;
///            `slashBps` of the provider's stake (active and unbonding) is slashed: `fee`
///            of it pays the jurors, the rest compensates the client.
///   NoQuorum (no majority, or nobody to draw): the deposit goes back to the client, as
///            an unresolved dispute does in the escrow; nobody is slashed; the client's
///            fee pays the jurors who voted (with nobody drawn, it goes back too).
///   Expired  (the escrow's dispute timeout passed before a verdict): the escrow returns
///            the deposit by itself (`expireDispute`); the jury returns the client's fee.
/// The jurors' pay is split in equal shares per drawn juror; a juror that did not reveal a
/// vote in time earns nothing and its share goes to the validators' reward pool
/// (`Consensus`), as does rounding dust.
///
/// Randomness: the draw uses the hash of the block that mined `open`, which nobody knows
/// when the client sends it. Its limits: the block's producer (on a devnet, whoever runs
/// anvil) can see and withhold or reorder; past 256 blocks the hash is gone, so the draw
/// moves to the current block (`DrawDeferred`). A production chain would use a VRF.
contract Jury is ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    enum Verdict {
        None,
        Release,
        Refund,
        NoQuorum,
        Expired
    }

    enum Vote {
        None,
        Release,
        Refund
    }

    struct Case {
        address client;
        uint64 opened;
        address provider;
        uint64 drawBlock;
        uint64 evidenceEnds;
        uint64 commitEnds;
        uint64 revealEnds;
        Verdict verdict;
        bool inputShown;
        bool resultShown;
        uint8 committed;
        uint8 forRelease;
        uint8 forRefund;
        uint256 slashed;
        uint256 compensation;
        address[] jurors;
    }

    struct Ballot {
        bytes32 hash;
        Vote vote;
    }

    uint256 public constant MAX_JURY = 15;

    TaskEscrow public immutable escrow;
    IJuryStaking public immutable staking;
    IERC20 public immutable token;
    address public immutable rewardPool;
    uint256 public immutable jurySize;
    uint256 public immutable fee;
    uint256 public immutable slashBps;
    uint256 public immutable openWindow;
    uint256 public immutable evidenceWindow;
    uint256 public immutable commitWindow;
    uint256 public immutable revealWindow;

    mapping(uint256 jobId => Case) private _cases;
    mapping(uint256 jobId => mapping(address juror => Ballot)) private _ballots;

    event CaseOpened(uint256 indexed jobId, address indexed client, address indexed provider);
    event JurorsDrawn(uint256 indexed jobId, address[] jurors, bytes32 seed);
    event DrawDeferred(uint256 indexed jobId, uint256 drawBlock);
    event InputShown(uint256 indexed jobId, bytes terms, bytes input);
    event ResultShown(uint256 indexed jobId, bytes result);
    event Forfeited(uint256 indexed jobId, address indexed party);
    event VoteCommitted(uint256 indexed jobId, address indexed juror);
    event VoteRevealed(uint256 indexed jobId, address indexed juror, Vote vote);
    event Decided(
        uint256 indexed jobId, Verdict verdict, uint256 slashed, uint256 compensation,
        uint256 jurorPay
    );
    event JurorPaid(uint256 indexed jobId, address indexed juror, uint256 amount);

    error BadConfig();
    error NotArbiter(uint256 jobId);
    error NotDisputed(uint256 jobId);
    error NotClient(uint256 jobId, address caller);
    error NotProvider(uint256 jobId, address caller);
    error NotJuror(uint256 jobId, address caller);
    error CaseExists(uint256 jobId);
    error NoCase(uint256 jobId);
    error OpenWindowClosed(uint256 jobId, uint256 closed);
    error OpenWindowOpen(uint256 jobId, uint256 closes);
    error DrawTooEarly(uint256 jobId, uint256 drawBlock);
    error AlreadyDrawn(uint256 jobId);
    error NotDrawn(uint256 jobId);
    error EvidenceClosed(uint256 jobId, uint256 closed);
    error AlreadyShown(uint256 jobId);
    error CommitClosed(uint256 jobId, uint256 closed);
    error AlreadyCommitted(uint256 jobId, address juror);
    error RevealNotOpen(uint256 jobId, uint256 opens);
    error RevealClosed(uint256 jobId, uint256 closed);
    error NoCommit(uint256 jobId, address juror);
    error AlreadyRevealed(uint256 jobId, address juror);
    error BadVote(uint256 jobId);
    error VoteMismatch(uint256 jobId, address juror);
    error AlreadyDecided(uint256 jobId, Verdict verdict);
    error SettleTooEarly(uint256 jobId, uint256 opens);

    constructor(
        TaskEscrow escrow_,
        IJuryStaking staking_,
        IERC20 token_,
        address rewardPool_,
        uint256 jurySize_,
        uint256 fee_,
        uint256 slashBps_,
        uint256[4] memory windows // open, evidence, commit, reveal (seconds)
    ) {
        if (
            address(escrow_) == address(0) || address(staking_) == address(0)
                || address(token_) == address(0) || rewardPool_ == address(0) || jurySize_ == 0
                || jurySize_ > MAX_JURY || slashBps_ > 10_000 || windows[0] == 0
                || windows[1] == 0 || windows[2] == 0 || windows[3] == 0
                || windows[0] + windows[1] + windows[2] + windows[3]
                    >= escrow_.DISPUTE_TIMEOUT()
        ) revert BadConfig();
        escrow = escrow_;
        staking = staking_;
        token = token_;
        rewardPool = rewardPool_;
        jurySize = jurySize_;
        fee = fee_;
        slashBps = slashBps_;
        openWindow = windows[0];
        evidenceWindow = windows[1];
        commitWindow = windows[2];
        revealWindow = windows[3];
    }

    // ------------------------------------------------------------------ parties

    /// @notice Bring a job this contract arbitrates, disputed in the escrow, before a jury.
    /// The client pays `fee` (approve it first); the provider's stake is held until the
    /// verdict.
    function open(uint256 jobId) external nonReentrant {
        TaskEscrow.Job memory job = _disputed(jobId);
        if (msg.sender != job.client) revert NotClient(jobId, msg.sender);
        Case storage c = _cases[jobId];
        if (c.client != address(0)) revert CaseExists(jobId);
        uint256 closes = uint256(job.disputedAt) + openWindow;
        if (block.timestamp > closes) revert OpenWindowClosed(jobId, closes);
        c.client = job.client;
        c.provider = job.provider;
        c.opened = uint64(block.timestamp);
        c.drawBlock = uint64(block.number);
        emit CaseOpened(jobId, job.client, job.provider);
        staking.hold(job.provider);
        if (fee > 0) token.safeTransferFrom(msg.sender, address(this), fee);
    }

    /// @notice A disputed job its client did not bring before a jury within `openWindow`:
    /// the dispute is dropped and the job paid to the provider. Anyone may call it.
    function settleUnopened(uint256 jobId) external nonReentrant {
        TaskEscrow.Job memory job = _disputed(jobId);
        if (_cases[jobId].client != address(0)) revert CaseExists(jobId);
        uint256 closes = uint256(job.disputedAt) + openWindow;
        if (block.timestamp <= closes) revert OpenWindowOpen(jobId, closes);
        emit Forfeited(jobId, job.client);
        escrow.resolve(jobId, job.amount);
    }

    /// @notice Client shows the agreed terms and the input they name.
    function showInput(uint256 jobId, bytes calldata terms, bytes calldata input)
        external
        nonReentrant
    {
        Case storage c = _inEvidence(jobId);
        if (msg.sender != c.client) revert NotClient(jobId, msg.sender);
        if (c.inputShown) revert AlreadyShown(jobId);
        TaskEscrow.Job memory job = escrow.getJob(jobId);
        if (sha256(terms) != job.termsHash || !_namesInput(terms, sha256(input))) {
            emit Forfeited(jobId, msg.sender);
            _decide(jobId, c, Verdict.Release);
            return;
        }
        c.inputShown = true;
        emit InputShown(jobId, terms, input);
    }

    /// @notice Provider shows the delivered result.
    function showResult(uint256 jobId, bytes calldata result) external nonReentrant {
        Case storage c = _inEvidence(jobId);
        if (msg.sender != c.provider) revert NotProvider(jobId, msg.sender);
        if (c.resultShown) revert AlreadyShown(jobId);
        if (sha256(result) != escrow.getJob(jobId).resultHash) {
            emit Forfeited(jobId, msg.sender);
            _decide(jobId, c, Verdict.Refund);
            return;
        }
        c.resultShown = true;
        emit ResultShown(jobId, result);
    }

    // ------------------------------------------------------------------ draw

    /// @notice Draw the jury, from the block after `open` on; anyone may call it.
    function draw(uint256 jobId) external nonReentrant {
        Case storage c = _case(jobId);
        if (c.verdict != Verdict.None) revert AlreadyDecided(jobId, c.verdict);
        if (c.evidenceEnds != 0) revert AlreadyDrawn(jobId);
        if (block.number <= c.drawBlock) revert DrawTooEarly(jobId, c.drawBlock);
        bytes32 hash = blockhash(c.drawBlock);
        if (hash == bytes32(0)) {
            // Older than 256 blocks: its hash is gone; draw from the current block instead.
            c.drawBlock = uint64(block.number);
            emit DrawDeferred(jobId, block.number);
            return;
        }
        bytes32 seed = keccak256(abi.encode(hash, jobId));
        address[] memory jurors = _drawJurors(seed, c.client, c.provider);
        c.jurors = jurors;
        c.evidenceEnds = uint64(block.timestamp + evidenceWindow);
        c.commitEnds = uint64(c.evidenceEnds + commitWindow);
        c.revealEnds = uint64(c.commitEnds + revealWindow);
        emit JurorsDrawn(jobId, jurors, seed);
        if (jurors.length == 0) _decide(jobId, c, Verdict.NoQuorum);
    }

    /// @dev Up to `jurySize` permit holders other than the parties, without replacement,
    /// each pick with probability proportional to active stake among those left.
    function _drawJurors(bytes32 seed, address client, address provider)
        private
        view
        returns (address[] memory jurors)
    {
        address[] memory pool = staking.validators();
        uint256[] memory weights = new uint256[](pool.length);
        uint256 total;
        uint256 eligible;
        for (uint256 i; i < pool.length; ++i) {
            address v = pool[i];
            if (v == client || v == provider || !staking.hasPermit(v)) continue;
            weights[i] = staking.accountOf(v).active;
            total += weights[i];
            ++eligible;
        }
        uint256 n = eligible < jurySize ? eligible : jurySize;
        jurors = new address[](n);
        for (uint256 k; k < n; ++k) {
            uint256 r = uint256(keccak256(abi.encode(seed, k))) % total;
            for (uint256 i; i < pool.length; ++i) {
                if (r < weights[i]) {
                    jurors[k] = pool[i];
                    total -= weights[i];
                    weights[i] = 0;
                    break;
                }
                r -= weights[i];
            }
        }
    }

    // ------------------------------------------------------------------ jurors

    /// @notice Commit a vote: `keccak256(abi.encode(jobId, juror, vote, salt))`.
    function commitVote(uint256 jobId, bytes32 hash) external {
        Case storage c = _drawn(jobId);
        if (block.timestamp >= c.commitEnds) revert CommitClosed(jobId, c.commitEnds);
        if (!_isJuror(c, msg.sender)) revert NotJuror(jobId, msg.sender);
        Ballot storage b = _ballots[jobId][msg.sender];
        if (b.hash != bytes32(0)) revert AlreadyCommitted(jobId, msg.sender);
        b.hash = hash;
        ++c.committed;
        emit VoteCommitted(jobId, msg.sender);
    }

    /// @notice Reveal a committed vote, after the commit window or once every juror
    /// committed (then no commit can change any more).
    function revealVote(uint256 jobId, Vote vote, bytes32 salt) external {
        Case storage c = _drawn(jobId);
        if (block.timestamp < c.commitEnds && c.committed < c.jurors.length) {
            revert RevealNotOpen(jobId, c.commitEnds);
        }
        if (block.timestamp >= c.revealEnds) revert RevealClosed(jobId, c.revealEnds);
        Ballot storage b = _ballots[jobId][msg.sender];
        if (b.hash == bytes32(0)) revert NoCommit(jobId, msg.sender);
        if (b.vote != Vote.None) revert AlreadyRevealed(jobId, msg.sender);
        if (vote == Vote.None) revert BadVote(jobId);
        if (voteHash(jobId, msg.sender, vote, salt) != b.hash) {
            revert VoteMismatch(jobId, msg.sender);
        }
        b.vote = vote;
        if (vote == Vote.Release) ++c.forRelease;
        else ++c.forRefund;
        emit VoteRevealed(jobId, msg.sender, vote);
    }

    function voteHash(uint256 jobId, address juror, Vote vote, bytes32 salt)
        public
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(jobId, juror, vote, salt));
    }

    // ------------------------------------------------------------------ verdict

    /// @notice Decide a case (see the contract's notice); anyone may call it.
    function settle(uint256 jobId) external nonReentrant {
        Case storage c = _case(jobId);
        if (c.verdict != Verdict.None) revert AlreadyDecided(jobId, c.verdict);
        TaskEscrow.Job memory job = escrow.getJob(jobId);
        if (
            job.status != TaskEscrow.Status.Disputed
                || block.timestamp > uint256(job.disputedAt) + escrow.DISPUTE_TIMEOUT()
        ) {
            _decide(jobId, c, Verdict.Expired);
            return;
        }
        if (c.evidenceEnds == 0) revert NotDrawn(jobId);
        bool everyone = c.forRelease + c.forRefund == c.jurors.length;
        bool shown = c.inputShown && c.resultShown;
        if (block.timestamp < c.revealEnds && !(everyone && shown)) {
            revert SettleTooEarly(jobId, c.revealEnds);
        }
        uint256 majority = c.jurors.length / 2 + 1;
        Verdict verdict;
        if (!c.resultShown) verdict = Verdict.Refund;
        else if (!c.inputShown) verdict = Verdict.Release;
        else if (c.forRelease >= majority) verdict = Verdict.Release;
        else if (c.forRefund >= majority) verdict = Verdict.Refund;
        else verdict = Verdict.NoQuorum;
        _decide(jobId, c, verdict);
    }

    /// @dev Effects first (the verdict and the amounts), then the escrow, the stake and the
    /// transfers; every path releases the provider's hold.
    function _decide(uint256 jobId, Case storage c, Verdict verdict) private {
        c.verdict = verdict;
        uint256 jurorPay;
        uint256 toClient;
        if (verdict == Verdict.Refund) {
            IJuryStaking.Account memory a = staking.accountOf(c.provider);
            c.slashed = (uint256(a.active) + a.unbonding) * slashBps / 10_000;
            jurorPay = c.slashed < fee ? c.slashed : fee;
            c.compensation = c.slashed - jurorPay;
            toClient = fee + c.compensation;
        } else if (verdict == Verdict.Expired || c.jurors.length == 0) {
            toClient = fee; // nobody was there to earn it
        } else {
            jurorPay = fee; // Release: the losing client's fee; NoQuorum: the voters' pay
        }
        emit Decided(jobId, verdict, c.slashed, c.compensation, jurorPay);

        staking.release(c.provider);
        if (verdict != Verdict.Expired) {
            uint256 toProvider = verdict == Verdict.Release ? escrow.getJob(jobId).amount : 0;
            escrow.resolve(jobId, toProvider);
        }
        if (c.slashed > 0) staking.slash(c.provider, c.slashed, address(this));
        if (toClient > 0) token.safeTransfer(c.client, toClient);
        _payJurors(jobId, c, jurorPay);
    }

    function _payJurors(uint256 jobId, Case storage c, uint256 amount) private {
        if (amount == 0) return;
        uint256 n = c.jurors.length;
        uint256 paid;
        if (n > 0) {
            uint256 share = amount / n;
            for (uint256 i; i < n; ++i) {
                address juror = c.jurors[i];
                if (share == 0 || _ballots[jobId][juror].vote == Vote.None) continue;
                paid += share;
                emit JurorPaid(jobId, juror, share);
                token.safeTransfer(juror, share);
            }
        }
        if (amount > paid) token.safeTransfer(rewardPool, amount - paid);
    }

    // ------------------------------------------------------------------ helpers

    function _disputed(uint256 jobId) private view returns (TaskEscrow.Job memory job) {
        job = escrow.getJob(jobId);
        if (job.arbiter != address(this)) revert NotArbiter(jobId);
        if (job.status != TaskEscrow.Status.Disputed) revert NotDisputed(jobId);
    }

    function _case(uint256 jobId) private view returns (Case storage c) {
        c = _cases[jobId];
        if (c.client == address(0)) revert NoCase(jobId);
    }

    function _drawn(uint256 jobId) private view returns (Case storage c) {
        c = _case(jobId);
        if (c.verdict != Verdict.None) revert AlreadyDecided(jobId, c.verdict);
        if (c.evidenceEnds == 0) revert NotDrawn(jobId);
    }

    function _inEvidence(uint256 jobId) private view returns (Case storage c) {
        c = _drawn(jobId);
        if (block.timestamp >= c.evidenceEnds) revert EvidenceClosed(jobId, c.evidenceEnds);
    }

    function _isJuror(Case storage c, address account) private view returns (bool) {
        for (uint256 i; i < c.jurors.length; ++i) {
            if (c.jurors[i] == account) return true;
        }
        return false;
    }

    /// @dev Whether canonical-JSON `terms` hold `"input_sha256":"<hex of digest>"`.
    function _namesInput(bytes calldata terms, bytes32 digest) private pure returns (bool) {
        bytes memory needle = abi.encodePacked('"input_sha256":"', _hex(digest), '"');
        uint256 m = needle.length;
        if (terms.length < m) return false;
        for (uint256 i; i + m <= terms.length; ++i) {
            uint256 j;
            while (j < m && terms[i + j] == needle[j]) ++j;
            if (j == m) return true;
        }
        return false;
    }

    function _hex(bytes32 value) private pure returns (bytes memory out) {
        bytes16 digits = "0123456789abcdef";
        out = new bytes(64);
        for (uint256 i; i < 32; ++i) {
            out[2 * i] = digits[uint8(value[i]) >> 4];
            out[2 * i + 1] = digits[uint8(value[i]) & 0x0f];
        }
    }

    // ------------------------------------------------------------------ views

    function caseOf(uint256 jobId) external view returns (Case memory) {
        return _cases[jobId];
    }

    function ballotOf(uint256 jobId, address juror) external view returns (Ballot memory) {
        return _ballots[jobId][juror];
    }
}
