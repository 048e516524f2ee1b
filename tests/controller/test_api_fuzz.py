"""Property-based fuzzing of every operation in the OpenAPI document (schemathesis, in-process ASGI), on
SQLite + local store and on PostgreSQL + S3 + anvil: no server error, and every response is one the
document declares (status code, content type, headers, body schema)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ADMIN_TOKEN, Api

EXAMPLES = 10
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _fuzz(api: Api) -> tuple[Counter[Any], list[str]]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
    statuses: Counter[Any] = Counter()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 45

    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        @given(operation.as_strategy())
        def run(case: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {ADMIN_TOKEN}"}
            try:
                response = case.call_and_validate(checks=CHECKS)
            except BaseException as exc:  # a FailureGroup describing every failed check
                op = case.operation
                failures.append(f"{op.method.upper()} {op.path}: {str(exc)[:600]}")
                return
            statuses[response.status_code] += 1

        run()
    return statuses, failures


def test_no_server_error_and_no_schema_violation(any_api: Api) -> None:
    statuses, failures = _fuzz(any_api)
    assert not failures, "\n\n".join(failures[:10])
    assert not [code for code in statuses if code >= 500]
    assert sum(n for code, n in statuses.items() if 200 <= code < 300) > 0  # it did reach real handlers
