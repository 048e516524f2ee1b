"""Federated learning: FL jobs (manager), engines (base, factory, flower), strategies and the ServerApp."""
