// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title FedgeRegistry
/// @notice Append-only provenance registry of one fedge controller: datasets, models (verified once),
/// derived model artifacts, federated-learning runs and their rounds, each record keyed by its id.
/// @dev Only the deploying controller account writes. Records are never changed after they are written,
/// except a model's single verification. Ids are stored as keccak256 keys; the id strings themselves are
/// carried in the events. Timestamps are block timestamps in seconds.
contract FedgeRegistry {
    /// @notice A registered dataset.
    struct Dataset {
        string organizationId;
        string samplesDimension;
        bytes32 sha256Digest;
        bytes16 md5Digest;
        uint64 sizeBytes;
        uint64 registeredAt;
    }

    /// @notice A registered model and, once verified, the hash of its training result.
    struct Model {
        string organizationId;
        string developerId;
        string datasetId;
        bytes32 trainingDigest;
        bytes32 resultHash;
        uint64 registeredAt;
        uint64 verifiedAt;
    }

    /// @notice An artifact derived from a model (ONNX translation, quantized variant, ...).
    struct Artifact {
        bytes32 sha256Digest;
        string kind;
        uint32 sourceVersion;
        uint64 recordedAt;
    }

    /// @notice Provenance of a federated-learning run. `dpEpsilonMicros` is epsilon x 1e6 and `dpDeltaAtto`
    /// is delta x 1e18; both are 0 when differential privacy was off.
    struct FLRun {
        bytes32 participantsDigest;
        bytes32 finalModelHash;
        string strategy;
        string modelId;
        uint32 participantCount;
        uint32 rounds;
        uint64 dpEpsilonMicros;
        uint64 dpDeltaAtto;
        bool heEnabled;
        uint64 recordedAt;
        uint64 recordedBlock;
    }

    /// @notice One aggregated round of a federated-learning run: the Merkle root of the accepted updates'
    /// digests, the aggregate's digest and how many updates went in (see docs/fl-audit.md for the tree).
    struct FLRound {
        bytes32 updatesRoot;
        bytes32 aggregateHash;
        uint32 updateCount;
        uint64 recordedAt;
        uint64 recordedBlock;
    }

    /// @notice The input of {recordFLRun}; see there for the fields.
    struct FLRunInput {
        string runId;
        bytes32[] participantHashes;
        uint32 rounds;
        string strategy;
        uint64 dpEpsilonMicros;
        uint64 dpDeltaAtto;
        bool heEnabled;
        bytes32 finalModelHash;
        string modelId;
    }

    address private immutable _owner;
    mapping(bytes32 datasetKey => Dataset) private _datasets;
    mapping(bytes32 modelKey => Model) private _models;
    mapping(bytes32 artifactKey => Artifact) private _artifacts;
    mapping(bytes32 runKey => FLRun) private _runs;
    mapping(bytes32 roundKey => FLRound) private _rounds;

    /// @notice Emitted when a dataset is registered.
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

    /// @notice Emitted when a model is registered.
    /// @param modelKey keccak256 of `modelId`.
    /// @param modelId The model id.
    /// @param datasetId The dataset the model is trained on.
    /// @param trainingDigest Digest of the training image or specification.
    event ModelRegistered(bytes32 indexed modelKey, string modelId, string datasetId, bytes32 trainingDigest);

    /// @notice Emitted when a model's training result is verified (once per model).
    /// @param modelKey keccak256 of `modelId`.
    /// @param modelId The model id.
    /// @param resultHash SHA-256 of the training result artifact.
    /// @param verifiedAt Block timestamp of the verification.
    event Verified(bytes32 indexed modelKey, string modelId, bytes32 resultHash, uint64 verifiedAt);

    /// @notice Emitted when an artifact derived from a model is recorded.
    /// @param modelKey keccak256 of `modelId`.
    /// @param modelId The model id.
    /// @param version The artifact version.
    /// @param kind The artifact kind, such as "onnx" or "quantized-int8".
    /// @param sha256Digest SHA-256 of the artifact.
    /// @param sourceVersion The version it was derived from (0: the verified training result).
    event ArtifactRecorded(
        bytes32 indexed modelKey,
        string modelId,
        uint32 version,
        string kind,
        bytes32 sha256Digest,
        uint32 sourceVersion
    );

    /// @notice Emitted when a federated-learning run is recorded.
    /// @param runKey keccak256 of `runId`.
    /// @param runId The run id.
    /// @param participantHashes SHA-256 of each participant's device id, in the order committed to.
    /// @param finalModelHash SHA-256 of the final aggregated model.
    event FLRunRecorded(bytes32 indexed runKey, string runId, bytes32[] participantHashes, bytes32 finalModelHash);

    /// @notice Emitted when a round of a federated-learning run is recorded (once per run and round).
    /// @param runKey keccak256 of `runId`.
    /// @param runId The run id.
    /// @param round The round number (from 1).
    /// @param updatesRoot Merkle root of the accepted updates' digests.
    /// @param aggregateHash Digest of the round's aggregate.
    /// @param updateCount Number of updates (leaves) in the tree.
    event FLRoundRecorded(
        bytes32 indexed runKey,
        string runId,
        uint32 indexed round,
        bytes32 updatesRoot,
        bytes32 aggregateHash,
        uint32 updateCount
    );

    /// @notice The caller is not the controller account that owns this registry.
    /// @param caller The rejected caller.
    error FedgeRegistryUnauthorized(address caller);

    /// @notice A dataset with this id is already registered.
    /// @param datasetId The duplicate id.
    error FedgeRegistryDatasetExists(string datasetId);

    /// @notice No dataset with this id is registered.
    /// @param datasetId The unknown id.
    error FedgeRegistryUnknownDataset(string datasetId);

    /// @notice A model with this id is already registered.
    /// @param modelId The duplicate id.
    error FedgeRegistryModelExists(string modelId);

    /// @notice No model with this id is registered.
    /// @param modelId The unknown id.
    error FedgeRegistryUnknownModel(string modelId);

    /// @notice The model was already verified; its result hash cannot change.
    /// @param modelId The model id.
    /// @param resultHash The result hash stored by the first verification.
    error FedgeRegistryAlreadyVerified(string modelId, bytes32 resultHash);

    /// @notice An artifact with this model id and version is already recorded.
    /// @param modelId The model id.
    /// @param version The duplicate version.
    error FedgeRegistryArtifactExists(string modelId, uint32 version);

    /// @notice No artifact with this model id and version is recorded.
    /// @param modelId The model id.
    /// @param version The unknown version.
    error FedgeRegistryUnknownArtifact(string modelId, uint32 version);

    /// @notice A federated-learning run with this id is already recorded.
    /// @param runId The duplicate id.
    error FedgeRegistryRunExists(string runId);

    /// @notice No federated-learning run with this id is recorded.
    /// @param runId The unknown id.
    error FedgeRegistryUnknownRun(string runId);

    /// @notice This round of the run is already recorded; a round record is written once.
    /// @param runId The run id.
    /// @param round The round number.
    /// @param updatesRoot The root stored by the first write.
    error FedgeRegistryRoundExists(string runId, uint32 round, bytes32 updatesRoot);

    /// @notice No record of this round of the run.
    /// @param runId The run id.
    /// @param round The round number.
    error FedgeRegistryUnknownRound(string runId, uint32 round);

    /// @notice A field is empty, zero or out of range.
    /// @param field The name of the rejected field.
    error FedgeRegistryInvalidField(string field);

    modifier onlyOwner() {
        if (msg.sender != _owner) revert FedgeRegistryUnauthorized(msg.sender);
        _;
    }

    /// @notice Creates the registry owned by the deploying controller account.
    constructor() {
        _owner = msg.sender;
    }

    /// @notice The controller account allowed to write.
    /// @return The owner address.
    function owner() external view returns (address) {
        return _owner;
    }

    /// @notice Registers a dataset.
    /// @param datasetId Unique dataset id.
    /// @param organizationId The owning organization.
    /// @param samplesDimension Shape of one sample, such as "(128,128,3)".
    /// @param sizeBytes Size of the dataset in bytes.
    /// @param sha256Digest SHA-256 of the dataset contents (non-zero).
    /// @param md5Digest MD5 of the dataset contents (kept for parity with the seed platform).
    function registerDataset(
        string calldata datasetId,
        string calldata organizationId,
        string calldata samplesDimension,
        uint64 sizeBytes,
        bytes32 sha256Digest,
        bytes16 md5Digest
    ) external onlyOwner {
        if (bytes(datasetId).length == 0) revert FedgeRegistryInvalidField("datasetId");
        if (sha256Digest == bytes32(0)) revert FedgeRegistryInvalidField("sha256Digest");
        bytes32 key = keccak256(bytes(datasetId));
        Dataset storage d = _datasets[key];
        if (d.registeredAt != 0) revert FedgeRegistryDatasetExists(datasetId);
        d.organizationId = organizationId;
        d.samplesDimension = samplesDimension;
        d.sha256Digest = sha256Digest;
        d.md5Digest = md5Digest;
        d.sizeBytes = sizeBytes;
        d.registeredAt = uint64(block.timestamp);
        emit DatasetRegistered(key, datasetId, organizationId, sha256Digest, sizeBytes);
    }

    /// @notice Returns everything recorded for a dataset.
    /// @param datasetId The dataset id.
    /// @return The dataset record.
    function getDataset(string calldata datasetId) external view returns (Dataset memory) {
        Dataset storage d = _datasets[keccak256(bytes(datasetId))];
        if (d.registeredAt == 0) revert FedgeRegistryUnknownDataset(datasetId);
        return d;
    }

    /// @notice Registers a model that will be trained on a registered dataset.
    /// @param modelId Unique model id.
    /// @param organizationId The developer's organization.
    /// @param developerId The developer.
    /// @param datasetId A registered dataset.
    /// @param trainingDigest Digest of the training image or specification (non-zero).
    function registerModel(
        string calldata modelId,
        string calldata organizationId,
        string calldata developerId,
        string calldata datasetId,
        bytes32 trainingDigest
    ) external onlyOwner {
        if (bytes(modelId).length == 0) revert FedgeRegistryInvalidField("modelId");
        if (trainingDigest == bytes32(0)) revert FedgeRegistryInvalidField("trainingDigest");
        if (_datasets[keccak256(bytes(datasetId))].registeredAt == 0) revert FedgeRegistryUnknownDataset(datasetId);
        bytes32 key = keccak256(bytes(modelId));
        Model storage m = _models[key];
        if (m.registeredAt != 0) revert FedgeRegistryModelExists(modelId);
        m.organizationId = organizationId;
        m.developerId = developerId;
        m.datasetId = datasetId;
        m.trainingDigest = trainingDigest;
        m.registeredAt = uint64(block.timestamp);
        emit ModelRegistered(key, modelId, datasetId, trainingDigest);
    }

    /// @notice Stores the hash of a model's training result. Callable once per model, by the controller.
    /// @param modelId A registered model.
    /// @param resultHash SHA-256 of the training result artifact (non-zero).
    function verify(string calldata modelId, bytes32 resultHash) external onlyOwner {
        if (resultHash == bytes32(0)) revert FedgeRegistryInvalidField("resultHash");
        bytes32 key = keccak256(bytes(modelId));
        Model storage m = _models[key];
        if (m.registeredAt == 0) revert FedgeRegistryUnknownModel(modelId);
        if (m.verifiedAt != 0) revert FedgeRegistryAlreadyVerified(modelId, m.resultHash);
        m.resultHash = resultHash;
        m.verifiedAt = uint64(block.timestamp);
        emit Verified(key, modelId, resultHash, uint64(block.timestamp));
    }

    /// @notice Returns everything recorded for a model.
    /// @param modelId The model id.
    /// @return The model record (`verifiedAt` is 0 while unverified).
    function getModel(string calldata modelId) external view returns (Model memory) {
        Model storage m = _models[keccak256(bytes(modelId))];
        if (m.registeredAt == 0) revert FedgeRegistryUnknownModel(modelId);
        return m;
    }

    /// @notice Records an artifact derived from a registered model.
    /// @param modelId A registered model.
    /// @param version The artifact version (at least 1, unique per model).
    /// @param kind The artifact kind, such as "onnx" or "quantized-int8".
    /// @param sha256Digest SHA-256 of the artifact (non-zero).
    /// @param sourceVersion The recorded version it was derived from, or 0 for the training result.
    function recordArtifact(
        string calldata modelId,
        uint32 version,
        string calldata kind,
        bytes32 sha256Digest,
        uint32 sourceVersion
    ) external onlyOwner {
        if (version == 0 || sourceVersion == version) revert FedgeRegistryInvalidField("version");
        if (bytes(kind).length == 0) revert FedgeRegistryInvalidField("kind");
        if (sha256Digest == bytes32(0)) revert FedgeRegistryInvalidField("sha256Digest");
        bytes32 modelKey = keccak256(bytes(modelId));
        if (_models[modelKey].registeredAt == 0) revert FedgeRegistryUnknownModel(modelId);
        if (sourceVersion != 0 && _artifacts[_artifactKey(modelKey, sourceVersion)].recordedAt == 0) {
            revert FedgeRegistryUnknownArtifact(modelId, sourceVersion);
        }
        Artifact storage a = _artifacts[_artifactKey(modelKey, version)];
        if (a.recordedAt != 0) revert FedgeRegistryArtifactExists(modelId, version);
        a.sha256Digest = sha256Digest;
        a.kind = kind;
        a.sourceVersion = sourceVersion;
        a.recordedAt = uint64(block.timestamp);
        emit ArtifactRecorded(modelKey, modelId, version, kind, sha256Digest, sourceVersion);
    }

    /// @notice Returns everything recorded for an artifact.
    /// @param modelId The model id.
    /// @param version The artifact version.
    /// @return The artifact record.
    function getArtifact(string calldata modelId, uint32 version) external view returns (Artifact memory) {
        Artifact storage a = _artifacts[_artifactKey(keccak256(bytes(modelId)), version)];
        if (a.recordedAt == 0) revert FedgeRegistryUnknownArtifact(modelId, version);
        return a;
    }

    /// @notice Records the provenance of a federated-learning run.
    /// @dev Only a digest of the participants is stored; the hashes themselves are in the event.
    /// @param run The run: `runId` unique and non-empty; `participantHashes` SHA-256 of each participant's
    /// device id (at least one); `rounds` at least 1; `strategy` such as "fedavg"; `dpEpsilonMicros`
    /// epsilon x 1e6 and `dpDeltaAtto` delta x 1e18, both 0 when DP was off; `heEnabled` whether aggregation
    /// ran under homomorphic encryption; `finalModelHash` SHA-256 of the final model (non-zero); `modelId`
    /// the registered model the final result became, or "" for none.
    function recordFLRun(FLRunInput calldata run) external onlyOwner {
        if (bytes(run.runId).length == 0) revert FedgeRegistryInvalidField("runId");
        uint256 participants = run.participantHashes.length;
        if (participants == 0 || participants > type(uint32).max) {
            revert FedgeRegistryInvalidField("participantHashes");
        }
        if (run.rounds == 0) revert FedgeRegistryInvalidField("rounds");
        if (run.finalModelHash == bytes32(0)) revert FedgeRegistryInvalidField("finalModelHash");
        if ((run.dpEpsilonMicros == 0) != (run.dpDeltaAtto == 0)) revert FedgeRegistryInvalidField("dp");
        if (bytes(run.modelId).length != 0 && _models[keccak256(bytes(run.modelId))].registeredAt == 0) {
            revert FedgeRegistryUnknownModel(run.modelId);
        }
        bytes32 key = keccak256(bytes(run.runId));
        FLRun storage r = _runs[key];
        if (r.recordedAt != 0) revert FedgeRegistryRunExists(run.runId);
        r.participantsDigest = keccak256(abi.encodePacked(run.participantHashes));
        r.finalModelHash = run.finalModelHash;
        r.strategy = run.strategy;
        r.modelId = run.modelId;
        r.participantCount = uint32(participants);
        r.rounds = run.rounds;
        r.dpEpsilonMicros = run.dpEpsilonMicros;
        r.dpDeltaAtto = run.dpDeltaAtto;
        r.heEnabled = run.heEnabled;
        r.recordedAt = uint64(block.timestamp);
        r.recordedBlock = uint64(block.number);
        emit FLRunRecorded(key, run.runId, run.participantHashes, run.finalModelHash);
    }

    /// @notice Returns everything stored for a federated-learning run.
    /// @param runId The run id.
    /// @return The run record; the participant hashes are in its `FLRunRecorded` event at `recordedBlock`.
    function getFLRun(string calldata runId) external view returns (FLRun memory) {
        FLRun storage r = _runs[keccak256(bytes(runId))];
        if (r.recordedAt == 0) revert FedgeRegistryUnknownRun(runId);
        return r;
    }

    /// @notice Records one aggregated round of a federated-learning run, once per (run, round). The run
    /// itself is recorded by {recordFLRun} when it ends, so rounds come first.
    /// @param runId The run id (non-empty).
    /// @param round The round number (at least 1).
    /// @param updatesRoot Merkle root of the accepted updates' digests (non-zero).
    /// @param aggregateHash Digest of the round's aggregate (non-zero).
    /// @param updateCount Number of updates in the tree (at least 1).
    function recordFLRound(
        string calldata runId,
        uint32 round,
        bytes32 updatesRoot,
        bytes32 aggregateHash,
        uint32 updateCount
    ) external onlyOwner {
        if (bytes(runId).length == 0) revert FedgeRegistryInvalidField("runId");
        if (round == 0) revert FedgeRegistryInvalidField("round");
        if (updatesRoot == bytes32(0)) revert FedgeRegistryInvalidField("updatesRoot");
        if (aggregateHash == bytes32(0)) revert FedgeRegistryInvalidField("aggregateHash");
        if (updateCount == 0) revert FedgeRegistryInvalidField("updateCount");
        bytes32 runKey = keccak256(bytes(runId));
        FLRound storage r = _rounds[_roundKey(runKey, round)];
        if (r.recordedAt != 0) revert FedgeRegistryRoundExists(runId, round, r.updatesRoot);
        r.updatesRoot = updatesRoot;
        r.aggregateHash = aggregateHash;
        r.updateCount = updateCount;
        r.recordedAt = uint64(block.timestamp);
        r.recordedBlock = uint64(block.number);
        emit FLRoundRecorded(runKey, runId, round, updatesRoot, aggregateHash, updateCount);
    }

    /// @notice Returns the record of one round of a federated-learning run.
    /// @param runId The run id.
    /// @param round The round number.
    /// @return The round record.
    function getFLRound(string calldata runId, uint32 round) external view returns (FLRound memory) {
        FLRound storage r = _rounds[_roundKey(keccak256(bytes(runId)), round)];
        if (r.recordedAt == 0) revert FedgeRegistryUnknownRound(runId, round);
        return r;
    }

    function _roundKey(bytes32 runKey, uint32 round) private pure returns (bytes32) {
        return keccak256(abi.encode(runKey, round));
    }

    function _artifactKey(bytes32 modelKey, uint32 version) private pure returns (bytes32) {
        return keccak256(abi.encode(modelKey, version));
    }
}
