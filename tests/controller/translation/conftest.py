from __future__ import annotations

import pytest

from tests.examples.helpers import Job, trained_example


@pytest.fixture(scope="session")
def cnn_job(tmp_path_factory: pytest.TempPathFactory) -> Job:
    return trained_example(tmp_path_factory, "digits_cnn")


@pytest.fixture(scope="session")
def sklearn_job(tmp_path_factory: pytest.TempPathFactory) -> Job:
    return trained_example(tmp_path_factory, "digits_sklearn")
