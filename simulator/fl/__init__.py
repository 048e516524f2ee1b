"""Federated-learning simulation data: digits partitioned over simulated devices (IID or Dirichlet)."""

from simulator.fl.partition import FederatedData, dirichlet_partition, iid_partition, make_federated_digits

__all__ = ["FederatedData", "dirichlet_partition", "iid_partition", "make_federated_digits"]
