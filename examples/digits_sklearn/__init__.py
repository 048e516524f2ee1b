"""A scikit-learn classifier on the 8x8 digits, saved in the safe ``skops`` format (see README.md)."""
