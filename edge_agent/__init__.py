"""fedge edge agent: runs on devices (ONNX inference, hash-verified model rollout, federated learning)."""

__version__ = "0.1.0"
