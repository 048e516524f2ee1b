"""Chain errors become problems here, once, each to the most specific one:

    controller.chain.errors           controller.errors
    RecordNotFound              ->    NotFound              404
    AlreadyVerified, RecordExists ->  Conflict              409
    NotOwner                    ->    Forbidden             403
    InvalidRecord               ->    Unprocessable         422
    any other ChainError        ->    ServiceUnavailable    503  (backend="chain")

Callers that expect one chain error as an answer (a record that may not exist, a model that may already
be verified) catch that chain error themselves inside the mapped block; nothing unwraps ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from controller.chain.errors import (
    AlreadyVerified,
    ChainError,
    InvalidRecord,
    NotOwner,
    RecordExists,
    RecordNotFound,
)
from controller.errors import (
    Conflict,
    Forbidden,
    NotFound,
    ProblemError,
    ServiceUnavailable,
    Unprocessable,
)


def chain_problem(
    exc: ChainError, action: str | None = None, *, address: str | None = None, field: str | None = None
) -> ProblemError:
    """The problem a chain error means. ``action`` ("register the dataset") names what failed,
    ``address`` the record contract it concerned, ``field`` the request field of an invalid record."""
    if isinstance(exc, RecordNotFound):
        return NotFound(f"no record contract at {address}" if address else _detail(exc, action))
    if isinstance(exc, AlreadyVerified):
        return Conflict(_detail(exc, action) or "already verified", contract_error=exc.contract_error)
    if isinstance(exc, RecordExists):
        return Conflict(_detail(exc, action) or "record exists", contract_error=exc.contract_error)
    if isinstance(exc, NotOwner):
        owned = address or "the record"
        return Forbidden(f"the controller account does not own {owned}: {exc}")
    if isinstance(exc, InvalidRecord):
        return Unprocessable(_detail(exc, action), field=field)
    what = f"could not {action} on chain" if action else "chain error"
    return ServiceUnavailable(f"{what}: {exc}", backend="chain")


@contextmanager
def map_chain_errors(
    action: str | None = None, *, address: str | None = None, field: str | None = None
) -> Iterator[None]:
    """Raise :func:`chain_problem` of any ChainError raised inside the block."""
    try:
        yield
    except ChainError as exc:
        raise chain_problem(exc, action, address=address, field=field) from exc


def _detail(exc: ChainError, action: str | None) -> str:
    return f"could not {action} on chain: {exc}" if action else str(exc)
