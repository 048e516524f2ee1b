"""Controlled training jobs: job runners (local process, container, Kubernetes) and the job manager."""
