"""The online learners on the local API (``edge_agent.api`` hands ``/v1/online`` requests here).

``GET /v1/online`` (every learner's status), ``GET /v1/online/{name}``, ``POST /v1/online/{name}/predict``
(no learning), ``POST /v1/online/{name}/update`` (prequential: predict, then learn) and
``POST /v1/online/{name}/explain`` (per-feature attributions). Errors are RFC 7807 problems: 404 unknown
learner or route, 405 wrong method, 413 message over the learner's limit, 422 a refused message (its
``reason`` is one of :class:`~edge_agent.online.errors.Reason`), 409 no model yet or no explainer for
the learner's backend.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from edge_agent.online.errors import ExplainerUnavailable, LearnerNotReady, Reason, RejectedInput

if TYPE_CHECKING:
    from edge_agent.online.service import OnlineService

log = logging.getLogger("fedge.agent.online")

PREFIX = "/v1/online"
ACTIONS = ("predict", "update", "explain")
Reply = tuple[int, dict[str, Any]]


def problem(status: int, title: str, detail: str, **extra: Any) -> Reply:
    return status, {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}


class OnlineRoutes:
    """Dispatch for the ``/v1/online`` routes of the local API."""

    def __init__(self, service: OnlineService) -> None:
        self.service = service

    @staticmethod
    def matches(path: str) -> bool:
        path = path.split("?", 1)[0]
        return path == PREFIX or path.startswith(PREFIX + "/")

    def handle(self, method: str, path: str, body: bytes = b"") -> Reply:
        parts = path.split("?", 1)[0][len(PREFIX) :].strip("/").split("/")
        if parts == [""]:
            if method != "GET":
                return problem(405, "Method not allowed", f"{method} {PREFIX}: use GET")
            return 200, {"learners": [self.service.status(name) for name in sorted(self.service.learners)]}
        name, action = parts[0], parts[1] if len(parts) > 1 else None
        learner = self.service.learners.get(name)
        if learner is None or len(parts) > 2 or (action is not None and action not in ACTIONS):
            what = f"no online learner {name!r}" if learner is None else f"no route {path}"
            return problem(404, "Not found", what)
        if action is None:
            if method != "GET":
                return problem(405, "Method not allowed", f"{method} {path}: use GET")
            return 200, self.service.status(name)
        if method != "POST":
            return problem(405, "Method not allowed", f"{method} {path}: use POST")
        try:
            if action == "update":
                return 200, learner.update(body, "api")
            if action == "predict":
                return 200, learner.predict(body)
            return 200, learner.explain(body)
        except RejectedInput as exc:
            if exc.reason == Reason.TOO_LARGE:
                return problem(413, "Payload too large", exc.detail, reason=str(exc.reason))
            return problem(422, "Unprocessable content", exc.detail, reason=str(exc.reason))
        except LearnerNotReady as exc:
            return problem(409, "Not ready", str(exc))
        except ExplainerUnavailable as exc:
            return problem(409, "No explainer", str(exc))
        except Exception:  # a fault of ours, not of the message: logged, answered, the server goes on
            log.exception("online learner %s: %s failed", name, action)
            return problem(500, "Internal error", f"the learner failed on {action}; see the agent's log")
