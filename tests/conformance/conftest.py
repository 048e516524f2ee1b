"""Conformance suites: tests marked ``k8s`` need a real Kubernetes cluster.

They are deselected (counted as "deselected", and named in a summary line) unless ``FEDGE_TEST_KUBECONFIG``
names a kubeconfig or the ``-m`` expression mentions ``k8s`` (``-m k8s`` runs them against
``~/.kube/config``). Without a cluster the Kubernetes runner still runs the whole runner conformance suite
against the in-memory API of tests/conformance/fake_kubernetes.py.
"""

from __future__ import annotations

import os

import pytest

K8S_ENV = "FEDGE_TEST_KUBECONFIG"
_DESELECTED = pytest.StashKey[int]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(K8S_ENV) or "k8s" in (config.getoption("markexpr", "") or ""):
        return
    needs_cluster = [item for item in items if item.get_closest_marker("k8s")]
    if needs_cluster:
        config.hook.pytest_deselected(items=needs_cluster)
        items[:] = [item for item in items if not item.get_closest_marker("k8s")]
        config.stash[_DESELECTED] = config.stash.get(_DESELECTED, 0) + len(needs_cluster)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    count = config.stash.get(_DESELECTED, 0)
    if count:
        terminalreporter.write_line(
            f"k8s: {count} tests need a Kubernetes cluster and were deselected "
            f"(set {K8S_ENV}=<kubeconfig> or run with -m k8s; see packaging/k8s/README.md)"
        )
