// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @notice The part of TaskEscrow the registry trusts for reputation.
interface IFeedbackSource {
    function feedbackParties(uint256 jobId)
        external
        view
        returns (address client, address provider, bool eligible);
}

/// @title AgentRegistry
/// @notice On-chain directory of agents (address -> agent card) and their reputation.
///
/// Only an agent can write its own card. Reputation follows ERC-8004's reputation
/// registry without upgradability: feedback is accepted only from a counter-party of a
/// settled TaskEscrow job, once per job and direction, so scores cannot be farmed
/// without paying for real work.
contract AgentRegistry {
    struct Service {
        string name;
        uint256 unitPrice;
    }

    struct CardInput {
        string name;
        string endpoint;
        bytes32 curveKey;
        bytes32 modelSha256;
        string metadataURI;
        Service[] services;
    }

    struct AgentCard {
        string name;
        string endpoint;
        bytes32 curveKey;
        bytes32 modelSha256;
        string metadataURI;
        Service[] services;
        uint64 registeredAt;
        uint64 updatedAt;
    }

    struct Reputation {
        uint64 count;
        uint64 totalScore;
    }

    uint256 public constant MAX_SERVICES = 32;
    uint256 public constant MAX_STRING_BYTES = 256;
    uint8 public constant MAX_SCORE = 100;

    IFeedbackSource public immutable escrow;

    mapping(address agent => AgentCard) private _cards;
    mapping(address agent => uint256) private _indexPlusOne;
    address[] private _agents;
    mapping(address agent => Reputation) private _reputation;
    mapping(uint256 jobId => mapping(address from => bool)) public feedbackGiven;

    event AgentRegistered(address indexed agent, string name, string endpoint);
    event AgentUpdated(address indexed agent, string name, string endpoint);
    event AgentDeregistered(address indexed agent);
    event FeedbackGiven(
        address indexed agent, address indexed from, uint256 indexed jobId, uint8 score,
        bytes32 commentHash
    );

    error AlreadyRegistered(address agent);
    error NotRegistered(address agent);
    error EmptyName();
    error FieldTooLong(string field, uint256 length);
    error TooManyServices(uint256 count);
    error NotJobParty(uint256 jobId, address caller);
    error JobNotSettled(uint256 jobId);
    error FeedbackAlreadyGiven(uint256 jobId, address from);
    error ScoreOutOfRange(uint8 score);

    constructor(IFeedbackSource escrow_) {
        escrow = escrow_;
    }

    /// @notice Register the caller's agent card.
    function register(CardInput calldata card) external {
        if (_indexPlusOne[msg.sender] != 0) revert AlreadyRegistered(msg.sender);
        _store(card);
        _agents.push(msg.sender);
        _indexPlusOne[msg.sender] = _agents.length;
        _cards[msg.sender].registeredAt = uint64(block.timestamp);
        emit AgentRegistered(msg.sender, card.name, card.endpoint);
    }

    /// @notice Replace the caller's agent card.
    function update(CardInput calldata card) external {
        if (_indexPlusOne[msg.sender] == 0) revert NotRegistered(msg.sender);
        _store(card);
        emit AgentUpdated(msg.sender, card.name, card.endpoint);
    }

    /// @notice Remove the caller's card. Reputation stays: it belongs to the address.
    function deregister() external {
        uint256 indexPlusOne = _indexPlusOne[msg.sender];
        if (indexPlusOne == 0) revert NotRegistered(msg.sender);
        uint256 last = _agents.length - 1;
        if (indexPlusOne - 1 != last) {
            address moved = _agents[last];
            _agents[indexPlusOne - 1] = moved;
            _indexPlusOne[moved] = indexPlusOne;
        }
        _agents.pop();
        delete _indexPlusOne[msg.sender];
        delete _cards[msg.sender];
        emit AgentDeregistered(msg.sender);
    }

    /// @notice Rate the other party of a settled escrow job, 0..100, once per job.
    function giveFeedback(uint256 jobId, uint8 score, bytes32 commentHash) external {
        if (score > MAX_SCORE) revert ScoreOutOfRange(score);
        (address client, address provider, bool eligible) = escrow.feedbackParties(jobId);
        address subject;
        if (msg.sender == client) subject = provider;
        else if (msg.sender == provider) subject = client;
        else revert NotJobParty(jobId, msg.sender);
        if (!eligible) revert JobNotSettled(jobId);
        if (feedbackGiven[jobId][msg.sender]) revert FeedbackAlreadyGiven(jobId, msg.sender);
        feedbackGiven[jobId][msg.sender] = true;
        Reputation storage rep = _reputation[subject];
        rep.count += 1;
        rep.totalScore += score;
        emit FeedbackGiven(subject, msg.sender, jobId, score, commentHash);
    }

    /// @notice Number of ratings and their sum for `agent` (average = total / count).
    function reputationOf(address agent) external view returns (uint64 count, uint64 totalScore) {
        Reputation storage rep = _reputation[agent];
        return (rep.count, rep.totalScore);
    }

    function isRegistered(address agent) external view returns (bool) {
        return _indexPlusOne[agent] != 0;
    }

    /// @notice The card of a registered agent.
    function getAgent(address agent) external view returns (AgentCard memory) {
        if (_indexPlusOne[agent] == 0) revert NotRegistered(agent);
        return _cards[agent];
    }

    function agentCount() external view returns (uint256) {
        return _agents.length;
    }

    /// @notice A page of registered agent addresses, for discovery.
    function agents(uint256 offset, uint256 limit) external view returns (address[] memory page) {
        uint256 total = _agents.length;
        if (offset >= total) return new address[](0);
        // Compare against what is left, so a huge `limit` ("the rest") cannot overflow.
        uint256 end = limit > total - offset ? total : offset + limit;
        page = new address[](end - offset);
        for (uint256 i = offset; i < end; ++i) {
            page[i - offset] = _agents[i];
        }
    }

    function _store(CardInput calldata card) private {
        if (bytes(card.name).length == 0) revert EmptyName();
        _checkLength("name", bytes(card.name).length);
        _checkLength("endpoint", bytes(card.endpoint).length);
        _checkLength("metadataURI", bytes(card.metadataURI).length);
        if (card.services.length > MAX_SERVICES) revert TooManyServices(card.services.length);

        AgentCard storage stored = _cards[msg.sender];
        stored.name = card.name;
        stored.endpoint = card.endpoint;
        stored.curveKey = card.curveKey;
        stored.modelSha256 = card.modelSha256;
        stored.metadataURI = card.metadataURI;
        stored.updatedAt = uint64(block.timestamp);
        delete stored.services;
        for (uint256 i = 0; i < card.services.length; ++i) {
            if (bytes(card.services[i].name).length == 0) revert EmptyName();
            _checkLength("service", bytes(card.services[i].name).length);
            stored.services.push(card.services[i]);
        }
    }

    function _checkLength(string memory field, uint256 length) private pure {
        if (length > MAX_STRING_BYTES) revert FieldTooLong(field, length);
    }
}
