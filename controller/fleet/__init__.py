"""Fleet: device CA, enrollment, device identity, desired state and deployments (rollouts in waves)."""
