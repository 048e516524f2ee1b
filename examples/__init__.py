"""Example training programs that follow ``controller.training.base.TRAINING_CONTRACT``."""
