"""Desired-state reconciliation: plan -> fetch -> verify -> activate -> health -> keep / roll back."""
