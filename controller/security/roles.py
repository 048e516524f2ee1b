"""Who may call which route, read from the routes themselves (each role check made by
``controller.api.deps.require`` carries its roles), so the documented table cannot drift from the code.

``python -m controller.security.roles`` prints the Markdown table of docs/roles.md; a test checks that the
file is what the code says.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from controller.security.principal import Role

ROLE_ORDER = [r.value for r in (Role.ADMIN, Role.OPERATOR, Role.DEVELOPER, Role.DEVICE, Role.JOB)]
PUBLIC = "public"


def _roles_of(dependant: Any) -> frozenset[str] | None:
    """The intersection of every role check in a dependency tree (None: no check, i.e. any principal)."""
    found: frozenset[str] | None = None
    for dep in getattr(dependant, "dependencies", []):
        roles = getattr(dep.call, "roles", None)
        if roles is not None:
            found = frozenset(roles) if found is None else found & roles
        sub = _roles_of(dep)
        if sub is not None:
            found = sub if found is None else found & sub
    return found


def _authenticates(dependant: Any) -> bool:
    from controller.api.deps import get_principal

    return any(d.call is get_principal or _authenticates(d) for d in getattr(dependant, "dependencies", []))


def _flat(routes: Iterable[Any]) -> Iterable[Any]:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's included-router node
        if included is not None:
            yield from _flat(included.routes)
        else:
            yield route


def route_roles(routes: Iterable[Any]) -> list[tuple[str, str, str, list[str]]]:
    """(tag, method, path, roles) for every documented API route; roles ``["public"]`` when none needed,
    every role when any authenticated caller may."""
    rows: list[tuple[str, str, str, list[str]]] = []
    for route in _flat(routes):
        dependant = getattr(route, "dependant", None)
        if dependant is None or not getattr(route, "include_in_schema", False):
            continue
        roles = _roles_of(dependant)
        if roles is None:
            names = ROLE_ORDER if _authenticates(dependant) else [PUBLIC]
        else:
            names = [r for r in ROLE_ORDER if r in roles]
        tag = (route.tags or ["other"])[0]
        for method in sorted(route.methods - {"HEAD"}):
            rows.append((str(tag), method, route.path, names))
    return sorted(rows, key=lambda r: (r[0], r[2], r[1]))


def markdown(routes: Iterable[Any]) -> str:
    """The role table (one row per route, grouped by tag)."""
    lines = [
        "| area | route | " + " | ".join(ROLE_ORDER) + " |",
        "|---|---|" + "---|" * len(ROLE_ORDER),
    ]
    for tag, method, path, roles in route_roles(routes):
        cells = ["yes" if (r in roles or roles == [PUBLIC]) else "" for r in ROLE_ORDER]
        label = f"`{method} {path}`" + (" (no credential)" if roles == [PUBLIC] else "")
        lines.append(f"| {tag} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


HEADER = """# Roles: who may call which route

Generated from the routes by `python -m controller.security.roles > docs/roles.md`
(`tests/controller/test_roles.py` fails when this file and the code disagree).

- **admin**: everything, and alone: API tokens, contracts.
- **operator**: the fleet: enrollment tokens, devices, deployments, commands, telemetry, events; FL jobs;
  reads the registry (to choose what to deploy).
- **developer**: the registry (datasets, models, versions), training jobs, translation; FL jobs.
- **device**: an enrolled device, on itself only (its desired state, status, commands, telemetry, its
  model and reference downloads); `{device_id}` must be its own.
- **job**: a training or FL job's credential, scoped to one model (its artifact, its round reports).

"""


def document(routes: Iterable[Any]) -> str:
    return HEADER + markdown(routes)


def main() -> int:
    from typing import cast

    from controller.app import create_app
    from controller.state import ControllerState

    # only the routes are read: the app is never served, so it needs no backends
    sys.stdout.write(document(create_app(cast(ControllerState, None)).routes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
