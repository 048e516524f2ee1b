"""A client generated from /openapi.json by a generator nobody here wrote (openapi-python-client) works
against a live controller: typed pages, the bearer scheme, problems parsed as the Problem schema."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import ADMIN_TOKEN, LiveServer


def test_generated_client_lists_tokens_and_parses_problems(live: LiveServer, tmp_path: Path) -> None:
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(httpx.get(f"{live.url}/openapi.json", timeout=30).json()))
    bin_dir = str(Path(sys.executable).parent)
    proc = subprocess.run(
        [
            str(Path(bin_dir) / "openapi-python-client"), "generate", "--path", str(spec), "--meta", "none",
            "--output-path", str(tmp_path / "fedge_generated"),
        ],
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        client_mod = importlib.import_module("fedge_generated.client")
        tokens_api = importlib.import_module("fedge_generated.api.auth.list_tokens_v1_tokens_get")
        models = importlib.import_module("fedge_generated.models")
        client = client_mod.AuthenticatedClient(base_url=live.url, token=ADMIN_TOKEN)
        page = tokens_api.sync(client=client)
        assert isinstance(page, models.TokenPage), page
        assert page.total == 1 and page.items[0].role.value == "admin" and page.items[0].id

        anonymous = client_mod.AuthenticatedClient(base_url=live.url, token="not-a-token")
        refused = tokens_api.sync_detailed(client=anonymous)
        assert refused.status_code == 401
        assert isinstance(refused.parsed, models.Problem)
        assert refused.parsed.status == 401 and refused.parsed.detail
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "fedge_generated" or m.startswith("fedge_generated.")]:
            del sys.modules[name]
