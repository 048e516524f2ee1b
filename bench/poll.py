"""The device hot paths against a bare route in the same server: ``GET .../desired-state`` answered 304
and ``POST .../status`` (seq-deduplicated reports, each a new seq) vs a bare ``async`` FastAPI route
(``/bench/bare``) added to the same app, served by the same uvicorn on loopback, one keep-alive client.

    python bench/poll.py [--requests 2000] [--profile out.prof]

``--profile`` writes a cProfile of the controller while it answers the 304 polls. Ends with one JSON line:
``{"poll_304_ratio", "status_ratio", "bare_rps", "poll_304_rps", "status_rps", ...}`` (ratio = route rps /
bare rps; goals: poll >= 0.5, status >= 0.3).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench._services import live_controller
from controller.chain.factory import make_chain_backend
from controller.config import ControllerSettings
from controller.state import build_state
from edge_agent.identity import enroll

ADMIN = "fedge_bench-poll-admin-0123456789abcdef"


def rate(http: httpx.Client, n: int, call: Any) -> float:
    """Requests per second of ``n`` sequential calls (after 100 to warm up)."""
    for i in range(100):
        call(i)
    t = time.perf_counter()
    for i in range(n):
        call(100 + i)
    return n / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--profile", type=Path, default=None, help="cProfile output of the 304 polls")
    args = parser.parse_args(argv)
    n = args.requests
    with tempfile.TemporaryDirectory(prefix="fedge-bench-poll-") as tmp:
        settings = ControllerSettings(data_dir=Path(tmp) / "c", admin_token=ADMIN, _env_file=None)  # type: ignore[call-arg]
        chain = make_chain_backend("evm", Path(tmp) / "evm")
        state = build_state(settings, chain, start_jobs=False)

        import controller.app as app_module

        real_create = app_module.create_app

        def create_with_bare(st: Any) -> Any:
            app = real_create(st)

            @app.get("/bench/bare")
            async def bare() -> dict[str, bool]:
                return {"ok": True}

            return app

        import bench._services as services

        services.create_app = create_with_bare  # type: ignore[assignment]
        try:
            with live_controller(state) as url:
                auth = {"Authorization": f"Bearer {ADMIN}"}
                token = httpx.post(f"{url}/v1/enrollment-tokens", headers=auth, json={"labels": {}}).json()[
                    "token"
                ]
                identity = enroll(url, token, Path(tmp) / "agent", facts={"cpu_count": 1})
                dev_auth = {"Authorization": f"Bearer {identity.sign_jwt(300)}"}
                path = f"/v1/devices/{identity.device_id}"
                with httpx.Client(base_url=url, headers=dev_auth, timeout=30) as http:
                    etag = http.get(f"{path}/desired-state").headers["etag"]

                    def bare_call(_i: int) -> None:
                        assert http.get("/bench/bare").status_code == 200

                    def poll_call(_i: int) -> None:
                        r = http.get(f"{path}/desired-state", headers={"If-None-Match": etag})
                        assert r.status_code == 304, r.text

                    def status_call(i: int) -> None:
                        r = http.post(f"{path}/status", json={"state": "applying", "seq": i + 1})
                        assert r.status_code == 204, r.text

                    bare_rps = rate(http, n, bare_call)
                    prof = cProfile.Profile() if args.profile else None
                    if prof:
                        prof.enable()
                    poll_rps = rate(http, n, poll_call)
                    if prof:
                        prof.disable()
                        prof.dump_stats(str(args.profile))
                    status_rps = rate(http, n, status_call)
                    bare_rps = (bare_rps + rate(http, n, bare_call)) / 2
        finally:
            services.create_app = real_create  # type: ignore[assignment]
            state.close()
            chain.close()
    out = {
        "bench": "poll",
        "requests": n,
        "bare_rps": round(bare_rps, 1),
        "poll_304_rps": round(poll_rps, 1),
        "status_rps": round(status_rps, 1),
        "poll_304_ratio": round(poll_rps / bare_rps, 3),
        "status_ratio": round(status_rps / bare_rps, 3),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
