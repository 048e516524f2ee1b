"""The seed's MNIST-style CNN, adapted to scikit-learn's 8x8 digits (see README.md)."""
