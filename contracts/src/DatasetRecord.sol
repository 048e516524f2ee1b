// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title DatasetRecord
/// @notice One dataset's metadata in its own contract, as in the seed platform (one contract per asset).
/// @dev fedge's own flows use {FedgeRegistry}; this contract serves the seed-compatible
/// `POST /v1/contracts` route. It has no immutables, so every instance has the same runtime code and a
/// client can tell a DatasetRecord by its code hash.
contract DatasetRecord {
    /// @notice Everything stored for the dataset.
    struct Record {
        string datasetId;
        string organizationId;
        string samplesDimension;
        bytes32 sha256Digest;
        bytes16 md5Digest;
        uint64 sizeBytes;
        uint64 registeredAt;
        address registrar;
    }

    Record private _record;

    /// @notice Emitted once, when the record is created.
    /// @param datasetKey keccak256 of `datasetId`.
    /// @param datasetId The dataset id.
    /// @param organizationId The owning organization.
    /// @param sha256Digest SHA-256 of the dataset contents.
    /// @param sizeBytes Size of the dataset in bytes.
    event DatasetRegistered(
        bytes32 indexed datasetKey,
        string datasetId,
        string organizationId,
        bytes32 sha256Digest,
        uint64 sizeBytes
    );

    /// @notice A constructor field is empty or zero.
    /// @param field The name of the rejected field.
    error DatasetRecordInvalidField(string field);

    /// @notice Stores the dataset's metadata; the deployer becomes the registrar.
    /// @param datasetId Unique dataset id.
    /// @param organizationId The owning organization.
    /// @param samplesDimension Shape of one sample, such as "(128,128,3)".
    /// @param sizeBytes Size of the dataset in bytes.
    /// @param sha256Digest SHA-256 of the dataset contents (non-zero).
    /// @param md5Digest MD5 of the dataset contents (the seed's `hash`).
    constructor(
        string memory datasetId,
        string memory organizationId,
        string memory samplesDimension,
        uint64 sizeBytes,
        bytes32 sha256Digest,
        bytes16 md5Digest
    ) {
        if (bytes(datasetId).length == 0) revert DatasetRecordInvalidField("datasetId");
        if (sha256Digest == bytes32(0)) revert DatasetRecordInvalidField("sha256Digest");
        _record = Record({
            datasetId: datasetId,
            organizationId: organizationId,
            samplesDimension: samplesDimension,
            sha256Digest: sha256Digest,
            md5Digest: md5Digest,
            sizeBytes: sizeBytes,
            registeredAt: uint64(block.timestamp),
            registrar: msg.sender
        });
        emit DatasetRegistered(keccak256(bytes(datasetId)), datasetId, organizationId, sha256Digest, sizeBytes);
    }

    /// @notice Returns everything stored, in one call.
    /// @return The dataset record.
    function getRecord() external view returns (Record memory) {
        return _record;
    }

    /// @notice The seed's `get_dataset_params`: the id of the dataset this contract describes.
    /// @return The dataset id.
    function getDatasetParams() external view returns (string memory) {
        return _record.datasetId;
    }
}
