// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {ProtocolFee} from "./ProtocolFee.sol";

/// @title TaskEscrow
/// @notice One escrow per task between a client (who pays) and a provider (who works).
///
/// Life of a job:
///   open (client deposits) -> accept (provider) -> submit(resultHash) (provider)
///     -> release (client)                       : provider paid
///     -> claim   (provider, after review window): provider paid, client was silent
///     -> dispute (client, within review window) -> resolve (arbiter splits the funds,
///                                                   within DISPUTE_TIMEOUT)
///                                               -> expireDispute (anyone, after it):
///                                                   client refunded
///   open -> cancel (client, before accept)                   : client refunded
///   open|accepted -> refund (client, after deadline)         : client refunded
///
/// Every terminal state pays out exactly the deposited amount, so funds are conserved;
/// what goes to the provider pays the protocol fee (`ProtocolFee`) on the way.
/// State changes happen before token transfers (checks-effects-interactions) and every
/// mutating function is non-reentrant.
contract TaskEscrow is ReentrancyGuard, ProtocolFee {
    using SafeERC20 for IERC20;

    enum Status {
        None,
        Open,
        Accepted,
        Submitted,
        Released,
        Claimed,
        Refunded,
        Disputed,
        Resolved,
        Cancelled
    }

    /// @dev Each address shares its slot with a small field (20 + 8 or 1 bytes), so
    /// opening a job writes 6 slots instead of 8.
    struct Job {
        address client;
        Status status;
        uint64 deadline;
        address provider;
        uint64 reviewWindow;
        address arbiter;
        uint64 acceptedAt;
        address token;
        uint64 submittedAt;
        uint256 amount;
        bytes32 termsHash;
        bytes32 resultHash;
        /// @dev Its own slot, written only by a dispute.
        uint64 disputedAt;
    }

    /// @notice Shortest and longest review window a job may set, in seconds.
    uint64 public constant MIN_REVIEW_WINDOW = 1;
    uint64 public constant MAX_REVIEW_WINDOW = 30 days;
    /// @notice How long the arbiter has to resolve a dispute; after it, the deposit can
    /// only go back to the client (an arbiter that never acts cannot freeze funds).
    uint64 public constant DISPUTE_TIMEOUT = 7 days;

    uint256 public jobCount;
    mapping(uint256 jobId => Job) private _jobs;

    event JobOpened(
        uint256 indexed jobId,
        address indexed client,
        address indexed provider,
        address token,
        uint256 amount,
        uint64 deadline,
        uint64 reviewWindow,
        address arbiter,
        bytes32 termsHash
    );
    event JobCancelled(uint256 indexed jobId);
    event JobAccepted(uint256 indexed jobId, address indexed provider);
    event ResultSubmitted(uint256 indexed jobId, bytes32 resultHash);
    event JobReleased(uint256 indexed jobId, uint256 amount);
    event JobClaimed(uint256 indexed jobId, uint256 amount);
    event JobRefunded(uint256 indexed jobId, uint256 amount);
    event JobAbandoned(uint256 indexed jobId, uint256 amount);
    event JobDisputed(uint256 indexed jobId, bytes32 reasonHash);
    event DisputeResolved(uint256 indexed jobId, uint256 providerAmount, uint256 clientAmount);
    event DisputeExpired(uint256 indexed jobId, uint256 amount);

    error UnknownJob(uint256 jobId);
    error NotClient(uint256 jobId, address caller);
    error NotProvider(uint256 jobId, address caller);
    error NotArbiter(uint256 jobId, address caller);
    error WrongStatus(uint256 jobId, Status current);
    error ZeroAmount();
    error InvalidParty(address party);
    error InvalidDeadline(uint64 deadline, uint256 nowTimestamp);
    error InvalidReviewWindow(uint64 reviewWindow);
    error DeadlinePassed(uint256 jobId, uint64 deadline);
    error DeadlineNotReached(uint256 jobId, uint64 deadline);
    error ReviewWindowOpen(uint256 jobId, uint256 endsAt);
    error ReviewWindowClosed(uint256 jobId, uint256 endedAt);
    error EmptyResult(uint256 jobId);
    error InvalidSplit(uint256 jobId, uint256 providerAmount, uint256 amount);
    error DepositMismatch(uint256 expected, uint256 received);
    error DisputeTimedOut(uint256 jobId, uint256 endedAt);
    error DisputePending(uint256 jobId, uint256 endsAt);

    constructor(address feeSink_, address feeToken_, uint256 feeBps_)
        ProtocolFee(feeSink_, feeToken_, feeBps_)
    {}

    /// @notice Open a job and deposit `amount` of `token` from the caller (the client).
    /// @dev The client must have approved this contract for `amount` first.
    /// @return jobId The new job's id (starting at 1).
    function open(
        address provider,
        address token,
        uint256 amount,
        uint64 deadline,
        uint64 reviewWindow,
        address arbiter,
        bytes32 termsHash
    ) external nonReentrant returns (uint256 jobId) {
        if (amount == 0) revert ZeroAmount();
        if (provider == address(0) || provider == msg.sender) revert InvalidParty(provider);
        if (token == address(0)) revert InvalidParty(token);
        if (arbiter == address(0) || arbiter == msg.sender || arbiter == provider) {
            revert InvalidParty(arbiter);
        }
        if (deadline <= block.timestamp) revert InvalidDeadline(deadline, block.timestamp);
        if (reviewWindow < MIN_REVIEW_WINDOW || reviewWindow > MAX_REVIEW_WINDOW) {
            revert InvalidReviewWindow(reviewWindow);
        }

        jobId = ++jobCount;
        Job storage job = _jobs[jobId];
        job.client = msg.sender;
        job.provider = provider;
        job.arbiter = arbiter;
        job.token = token;
        job.amount = amount;
        job.deadline = deadline;
        job.reviewWindow = reviewWindow;
        job.status = Status.Open;
        job.termsHash = termsHash;
        emit JobOpened(
            jobId, msg.sender, provider, token, amount, deadline, reviewWindow, arbiter, termsHash
        );

        // Interaction last. Measure what actually arrived so a fee-on-transfer token
        // cannot leave the escrow holding less than it owes.
        uint256 before = IERC20(token).balanceOf(address(this));
        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = IERC20(token).balanceOf(address(this)) - before;
        if (received != amount) revert DepositMismatch(amount, received);
    }

    /// @notice Client withdraws an offer the provider has not accepted yet.
    function cancel(uint256 jobId) external nonReentrant {
        Job storage job = _existing(jobId);
        if (msg.sender != job.client) revert NotClient(jobId, msg.sender);
        if (job.status != Status.Open) revert WrongStatus(jobId, job.status);
        job.status = Status.Cancelled;
        emit JobCancelled(jobId);
        IERC20(job.token).safeTransfer(job.client, job.amount);
    }

    /// @notice Provider commits to the job before its deadline.
    function accept(uint256 jobId) external nonReentrant {
        Job storage job = _existing(jobId);
        if (msg.sender != job.provider) revert NotProvider(jobId, msg.sender);
        if (job.status != Status.Open) revert WrongStatus(jobId, job.status);
        if (block.timestamp > job.deadline) revert DeadlinePassed(jobId, job.deadline);
        job.status = Status.Accepted;
        job.acceptedAt = uint64(block.timestamp);
        emit JobAccepted(jobId, msg.sender);
    }

    /// @notice Provider records the hash of the delivered result; starts the review window.
    function submit(uint256 jobId, bytes32 resultHash) external nonReentrant {
        Job storage job = _existing(jobId);
        if (msg.sender != job.provider) revert NotProvider(jobId, msg.sender);
        if (job.status != Status.Accepted) revert WrongStatus(jobId, job.status);
        if (block.timestamp > job.deadline) revert DeadlinePassed(jobId, job.deadline);
        if (resultHash == bytes32(0)) revert EmptyResult(jobId);
        job.status = Status.Submitted;
        job.submittedAt = uint64(block.timestamp);
        job.resultHash = resultHash;
        emit ResultSubmitted(jobId, resultHash);
    }

    /// @notice Client accepts the delivered result and pays the provider.
    function release(uint256 jobId) external nonReentrant {
        Job storage job = _existing(jobId);
        if (msg.sender != job.client) revert NotClient(jobId, msg.sender);
        if (job.status != Status.Submitted) revert WrongStatus(jobId, job.status);
        job.status = Status.Released;
        emit JobReleased(jobId, job.amount);
        _payWithFee(job.token, job.provider, job.amount);
    }

    /// @notice Provider collects payment once the review window passed without a decision.
    function claim(uint256 jobId) external nonReentrant {
        Job storage job = _existing(jobId);
        if (msg.sender != job.provider) revert NotProvider(jobId, msg.sender);
        if (job.status != Status.Submitted) revert WrongStatus(jobId, job.status);
        uint256 endsAt = uint256(job.submittedAt) + job.reviewWindow;
        if (block.timestamp <= endsAt) revert ReviewWindowOpen(jobId, endsAt);
        job.status = Status.Claimed;
        emit JobClaimed(jobId, job.amount);
        _payWithFee(job.token, job.provider, job.amount);
    }

    /// @notice Provider gives up an accepted job it cannot deliver; the client gets the
    /// deposit back at once instead of waiting for the deadline.
    function abandon(uint256 jobId) external nonReentrant {
        Job storage job = _existing(jobId);
        if (msg.sender != job.provider) revert NotProvider(jobId, msg.sender);
        if (job.status != Status.Accepted) revert WrongStatus(jobId, job.status);
        job.status = Status.Refunded;
        emit JobAbandoned(jobId, job.amount);
        IERC20(job.token).safeTransfer(job.client, job.amount);
    }

    /// @notice Client takes the deposit back when the deadline passed with nothing delivered.
    function refund(uint256 jobId) external nonReentrant {
        Job storage job = _existing(jobId);
        if (msg.sender != job.client) revert NotClient(jobId, msg.sender);
        if (job.status != Status.Open && job.status != Status.Accepted) {
            revert WrongStatus(jobId, job.status);
        }
        if (block.timestamp <= job.deadline) revert DeadlineNotReached(jobId, job.deadline);
        job.status = Status.Refunded;
        emit JobRefunded(jobId, job.amount);
        IERC20(job.token).safeTransfer(job.client, job.amount);
    }

    /// @notice Client contests a delivered result within the review window; funds freeze
    /// until the arbiter named at opening decides.
    function dispute(uint256 jobId, bytes32 reasonHash) external nonReentrant {
        Job storage job = _existing(jobId);
        if (msg.sender != job.client) revert NotClient(jobId, msg.sender);
        if (job.status != Status.Submitted) revert WrongStatus(jobId, job.status);
        uint256 endsAt = uint256(job.submittedAt) + job.reviewWindow;
        if (block.timestamp > endsAt) revert ReviewWindowClosed(jobId, endsAt);
        job.status = Status.Disputed;
        job.disputedAt = uint64(block.timestamp);
        emit JobDisputed(jobId, reasonHash);
    }

    /// @notice Arbiter splits a disputed deposit: `providerAmount` to the provider, the
    /// rest back to the client. Only within DISPUTE_TIMEOUT of the dispute.
    function resolve(uint256 jobId, uint256 providerAmount) external nonReentrant {
        Job storage job = _existing(jobId);
        if (msg.sender != job.arbiter) revert NotArbiter(jobId, msg.sender);
        if (job.status != Status.Disputed) revert WrongStatus(jobId, job.status);
        uint256 endsAt = uint256(job.disputedAt) + DISPUTE_TIMEOUT;
        if (block.timestamp > endsAt) revert DisputeTimedOut(jobId, endsAt);
        if (providerAmount > job.amount) revert InvalidSplit(jobId, providerAmount, job.amount);
        uint256 clientAmount = job.amount - providerAmount;
        job.status = Status.Resolved;
        emit DisputeResolved(jobId, providerAmount, clientAmount);
        IERC20 token = IERC20(job.token);
        if (providerAmount > 0) _payWithFee(job.token, job.provider, providerAmount);
        if (clientAmount > 0) token.safeTransfer(job.client, clientAmount);
    }

    /// @notice A dispute its arbiter left unresolved past DISPUTE_TIMEOUT: the deposit
    /// goes back to the client. Anyone may call it (the funds can only go one way).
    function expireDispute(uint256 jobId) external nonReentrant {
        Job storage job = _existing(jobId);
        if (job.status != Status.Disputed) revert WrongStatus(jobId, job.status);
        uint256 endsAt = uint256(job.disputedAt) + DISPUTE_TIMEOUT;
        if (block.timestamp <= endsAt) revert DisputePending(jobId, endsAt);
        job.status = Status.Refunded;
        emit DisputeExpired(jobId, job.amount);
        IERC20(job.token).safeTransfer(job.client, job.amount);
    }

    /// @notice The full record of a job.
    function getJob(uint256 jobId) external view returns (Job memory) {
        return _existing(jobId);
    }

    /// @notice What the reputation registry needs: the two parties, and whether the job
    /// ended in a way that lets them rate each other (paid out after acceptance).
    function feedbackParties(uint256 jobId)
        external
        view
        returns (address client, address provider, bool eligible)
    {
        Job storage job = _existing(jobId);
        Status s = job.status;
        eligible = s == Status.Released || s == Status.Claimed || s == Status.Resolved
            || (s == Status.Refunded && job.acceptedAt != 0);
        return (job.client, job.provider, eligible);
    }

    function _existing(uint256 jobId) private view returns (Job storage job) {
        job = _jobs[jobId];
        if (job.status == Status.None) revert UnknownJob(jobId);
    }
}
