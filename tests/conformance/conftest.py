"""Conformance suites: tests marked ``k8s`` need a real Kubernetes cluster.

They are deselected (counted as "deselected", and named in a summary line) unless ``FEDGE_TEST_KUBECONFIG``
names a kubeconfig or the ``-m`` expression mentions ``k8s`` (``-m k8s`` runs them against
``~/.kube/config``). Without a cluster the Kubernetes runner still runs the whole runner conformance suite
against the in-memory API of tests/conformance/fake_kubernetes.py.
"""

from __future__ import annotations

import pytest

from tests.fixtures.opt_in import OptInMarker

K8S_ENV = "FEDGE_TEST_KUBECONFIG"
_K8S = OptInMarker(
    "k8s",
    env=K8S_ENV,
    why=f"need a Kubernetes cluster and were deselected (set {K8S_ENV}=<kubeconfig> or run with -m k8s; "
    "see packaging/k8s/README.md)",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _K8S.deselect(config, items)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    _K8S.summary(terminalreporter, config)
