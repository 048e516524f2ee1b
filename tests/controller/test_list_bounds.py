"""Every list route bounds ``offset`` to SQL's signed 64-bit range: beyond it a 422 problem (it used to be a
500 from the database driver), at the bound an empty page."""

from __future__ import annotations

import pytest

from controller.api.deps import MAX_OFFSET
from tests.conftest import Api

LIST_ROUTES = [
    "/v1/datasets",
    "/v1/models",
    "/v1/jobs",
    "/v1/fl/jobs",
    "/v1/devices/dev-x/commands",
    "/v1/devices",
]


def _list_routes_with_offset(api: Api) -> list[str]:
    doc = api.client.get("/openapi.json").json()
    found = []
    for path, item in doc["paths"].items():
        op = item.get("get")
        if op and any(p["name"] == "offset" for p in op.get("parameters", [])):
            found.append(path)
    return found


def test_every_route_with_an_offset_declares_the_bound(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    for path in _list_routes_with_offset(api):
        (param,) = [p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == "offset"]
        assert param["schema"]["maximum"] == MAX_OFFSET, path


@pytest.mark.parametrize("path", LIST_ROUTES)
def test_offset_beyond_int64_is_a_422_problem(any_api: Api, path: str) -> None:
    resp = any_api.client.get(path, params={"offset": MAX_OFFSET + 1}, headers=any_api.admin)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["field"] == "query.offset"


@pytest.mark.parametrize("path", ["/v1/datasets", "/v1/models", "/v1/jobs", "/v1/fl/jobs"])
def test_offset_at_the_bound_is_an_empty_page(any_api: Api, path: str) -> None:
    resp = any_api.client.get(path, params={"offset": MAX_OFFSET}, headers=any_api.admin)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body if isinstance(body, list) else body["items"]) == []


def test_the_device_list_pages_oldest_first_without_overlap(api: Api) -> None:
    import datetime as dt

    from controller.db.models import Device, utcnow

    t0 = utcnow()
    with api.state.sessions.begin() as s:
        for i in range(7):  # two share an enrolment time: the id breaks the tie
            row = Device(
                id=f"dev-{i}", status="active", labels={}, facts={}, certificate="-", cert_serial=str(i)
            )
            row.enrolled_at = t0 + dt.timedelta(seconds=min(i, 5))
            s.add(row)
    everything = [d["id"] for d in api.client.get("/v1/devices", headers=api.admin).json()]
    assert everything == [f"dev-{i}" for i in range(7)]
    pages = [
        [
            d["id"]
            for d in api.client.get("/v1/devices", params={"limit": 3, "offset": o}, headers=api.admin).json()
        ]
        for o in (0, 3, 6)
    ]
    assert pages == [everything[0:3], everything[3:6], everything[6:]]
    assert api.client.get("/v1/devices", params={"limit": 0}, headers=api.admin).status_code == 422
