"""The controller's own exception tree, rendered as RFC 7807 problem+json at the HTTP boundary.

ProblemError (status, title, detail)
├── BadRequest            400
├── Unauthorized          401
├── Forbidden             403
├── NotFound              404
├── Conflict              409   (e.g. model not trained yet, integrity check failed)
├── PayloadTooLarge       413
├── UnsupportedMediaType  415
├── Unprocessable         422   (names the offending field)
└── ServiceUnavailable    503   (a backend is down; nothing was left behind)
"""

from __future__ import annotations

from typing import Any, ClassVar


class ProblemError(Exception):
    """An error with an HTTP status, a short title and a precise detail."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    slug: ClassVar[str] = "internal"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 7807 body."""
        body: dict[str, Any] = {
            "type": f"https://fedge.dev/problems/{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class BadRequest(ProblemError):
    status, title, slug = 400, "Bad request", "bad-request"


class Unauthorized(ProblemError):
    status, title, slug = 401, "Unauthorized", "unauthorized"


class Forbidden(ProblemError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(ProblemError):
    status, title, slug = 404, "Not found", "not-found"


class Conflict(ProblemError):
    status, title, slug = 409, "Conflict", "conflict"


class IntegrityCheckFailed(Conflict):
    title, slug = "Integrity check failed", "integrity-check-failed"


class PayloadTooLarge(ProblemError):
    status, title, slug = 413, "Payload too large", "payload-too-large"


class UnsupportedMediaType(ProblemError):
    status, title, slug = 415, "Unsupported media type", "unsupported-media-type"


class Unprocessable(ProblemError):
    status, title, slug = 422, "Unprocessable content", "validation-error"

    def __init__(self, detail: str, field: str | None = None, **extra: Any) -> None:
        if field is not None:
            extra["field"] = field
        super().__init__(detail, **extra)


class ServiceUnavailable(ProblemError):
    status, title, slug = 503, "Service unavailable", "service-unavailable"
