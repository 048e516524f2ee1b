"""A training package that is not a safe archive is refused when the model is registered (a 422 on
``training_package``), leaving no object, no row and no chain record; a good one registers."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile

import pytest
from sqlalchemy import func, select

from controller.db.models import Model
from controller.registry.packages import check_package
from tests.conftest import Api
from tests.controller.test_models import _dataset


def _tar(members: dict[str, bytes], link: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tf.addfile(info)
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _register(api: Api, package: bytes) -> tuple[int, dict[str, object]]:
    meta = {
        "model_params": {"developer_id": "dev-1", "organization_id": "org-1"},
        "data_params": {"dataset_id": _dataset(api)},
        "training": {"kind": "python", "entrypoint": "train:main"},
    }
    r = api.client.post(
        "/v1/models",
        headers=api.admin,
        files=[("metadata", (None, json.dumps(meta).encode())), ("training_package", ("p.tar.gz", package))],
    )
    return r.status_code, r.json()


def _models(api: Api) -> int:
    with api.state.sessions() as s:
        return s.scalar(select(func.count()).select_from(Model)) or 0


@pytest.mark.parametrize(
    ("package", "says"),
    [
        (os.urandom(4096), "not a .tar.gz"),
        (b"", "not a .tar.gz"),
        (_tar({}), "contains no file"),
        (_tar({"../evil.py": b"x"}), "unsafe member path"),
        (_tar({"/abs.py": b"x"}), "unsafe member path"),
        (_tar({"train.py": b"x"}, link="lnk"), "link or device"),
        (_zip({"../../x.py": b"x"}), "unsafe member path"),
        (b"PK\x03\x04" + os.urandom(100), "not a readable .zip"),
    ],
)
def test_bad_package_is_422_and_leaves_nothing(any_api: Api, package: bytes, says: str) -> None:
    status, body = _register(any_api, package)
    assert status == 422, body
    assert body["field"] == "training_package"
    assert says in str(body["detail"])
    assert list(any_api.state.store.list(any_api.state.registry.buckets.packages)) == []
    assert _models(any_api) == 0


@pytest.mark.parametrize("package", [_tar({"train.py": b"def main(): pass\n"}), _zip({"train.py": b"x"})])
def test_good_package_registers(api: Api, package: bytes) -> None:
    status, body = _register(api, package)
    assert status == 201, body
    assert _models(api) == 1


def test_check_package_lists_files_from_chunks() -> None:
    data = _tar({"a/train.py": b"1", "a/util.py": b"2"})
    chunks = [data[i : i + 7] for i in range(0, len(data), 7)]
    assert sorted(check_package(chunks)) == ["a/train.py", "a/util.py"]
