// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title ModelRecord
/// @notice One model's metadata in its own contract, as in the seed platform, verified once by its owner.
/// @dev fedge's own flows use {FedgeRegistry}; this contract serves the seed-compatible
/// `POST /v1/contracts` and `POST /v1/contracts/{address}/verify` routes. It has no immutables, so every
/// instance has the same runtime code and a client can tell a ModelRecord by its code hash.
contract ModelRecord {
    /// @notice Everything stored for the model.
    struct Record {
        string modelId;
        string organizationId;
        string developerId;
        string datasetId;
        bytes32 trainingDigest;
        bytes32 resultHash;
        uint64 registeredAt;
        uint64 verifiedAt;
        address owner;
    }

    Record private _record;

    /// @notice Emitted once, when the record is created.
    /// @param modelKey keccak256 of `modelId`.
    /// @param modelId The model id.
    /// @param datasetId The dataset the model is trained on.
    /// @param trainingDigest Digest of the training image or specification.
    event ModelRegistered(bytes32 indexed modelKey, string modelId, string datasetId, bytes32 trainingDigest);

    /// @notice Emitted when the training result is verified (once).
    /// @param verifier The owner account that verified.
    /// @param resultHash SHA-256 of the training result artifact.
    /// @param verifiedAt Block timestamp of the verification.
    event Verified(address indexed verifier, bytes32 resultHash, uint64 verifiedAt);

    /// @notice The caller is not the owner (the controller account that deployed the record).
    /// @param caller The rejected caller.
    error ModelRecordUnauthorized(address caller);

    /// @notice The model was already verified; its result hash cannot change.
    /// @param resultHash The result hash stored by the first verification.
    error ModelRecordAlreadyVerified(bytes32 resultHash);

    /// @notice A field is empty or zero.
    /// @param field The name of the rejected field.
    error ModelRecordInvalidField(string field);

    /// @notice Stores the model's metadata; the deployer becomes the owner.
    /// @param modelId Unique model id.
    /// @param organizationId The developer's organization.
    /// @param developerId The developer.
    /// @param datasetId The dataset the model is trained on.
    /// @param trainingDigest Digest of the training image or specification (non-zero).
    constructor(
        string memory modelId,
        string memory organizationId,
        string memory developerId,
        string memory datasetId,
        bytes32 trainingDigest
    ) {
        if (bytes(modelId).length == 0) revert ModelRecordInvalidField("modelId");
        if (trainingDigest == bytes32(0)) revert ModelRecordInvalidField("trainingDigest");
        _record.modelId = modelId;
        _record.organizationId = organizationId;
        _record.developerId = developerId;
        _record.datasetId = datasetId;
        _record.trainingDigest = trainingDigest;
        _record.registeredAt = uint64(block.timestamp);
        _record.owner = msg.sender;
        emit ModelRegistered(keccak256(bytes(modelId)), modelId, datasetId, trainingDigest);
    }

    /// @notice Stores the hash of the training result. Callable once, by the owner.
    /// @param resultHash SHA-256 of the training result artifact (non-zero).
    function verify(bytes32 resultHash) external {
        if (msg.sender != _record.owner) revert ModelRecordUnauthorized(msg.sender);
        if (_record.verifiedAt != 0) revert ModelRecordAlreadyVerified(_record.resultHash);
        if (resultHash == bytes32(0)) revert ModelRecordInvalidField("resultHash");
        _record.resultHash = resultHash;
        _record.verifiedAt = uint64(block.timestamp);
        emit Verified(msg.sender, resultHash, uint64(block.timestamp));
    }

    /// @notice Returns everything stored, in one call.
    /// @return The model record (`verifiedAt` is 0 while unverified).
    function getRecord() external view returns (Record memory) {
        return _record;
    }

    /// @notice The seed's `get_model_params`.
    /// @return organizationId The developer's organization.
    /// @return developerId The developer.
    /// @return trainingDigest Digest of the training image or specification.
    /// @return resultHash The verified result hash, or zero while unverified.
    function getModelParams()
        external
        view
        returns (string memory organizationId, string memory developerId, bytes32 trainingDigest, bytes32 resultHash)
    {
        return (_record.organizationId, _record.developerId, _record.trainingDigest, _record.resultHash);
    }

    /// @notice The seed's `get_data_params`: the dataset the model is trained on.
    /// @return The dataset id.
    function getDataParams() external view returns (string memory) {
        return _record.datasetId;
    }

    /// @notice The account allowed to verify.
    /// @return The owner address.
    function owner() external view returns (address) {
        return _record.owner;
    }
}
