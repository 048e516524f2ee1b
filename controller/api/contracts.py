"""The seed's Blockchain service routes (internal/admin): deploy, describe and verify record contracts.

Registry records (datasets, models, artifacts, FL runs) live in one FedgeRegistry contract keyed by id;
these routes deploy and read the per-asset ``DatasetRecord`` / ``ModelRecord`` contracts of the seed."""

from __future__ import annotations

from fastapi import APIRouter

from controller.api.deps import Admin, ChainDep
from controller.chain.base import TxReceipt
from controller.chain.errors import AlreadyVerified, ChainError, InvalidRecord, NotOwner, RecordNotFound
from controller.errors import Conflict, Forbidden, NotFound, ServiceUnavailable, Unprocessable
from controller.schemas.contracts import DeployRequest, ReceiptOut, VerifyRequest

router = APIRouter(prefix="/v1/contracts", tags=["contracts (admin)"])


def _receipt(r: TxReceipt) -> ReceiptOut:
    events = [
        {"name": e.name, "args": {k: (v.hex() if isinstance(v, bytes) else v) for k, v in e.args.items()}}
        for e in r.events
    ]
    return ReceiptOut(
        address=r.contract_address,
        tx_hash=r.tx_hash,
        block_number=r.block_number,
        gas_used=r.gas_used,
        events=events,
    )


def _map(exc: ChainError, address: str | None = None) -> Exception:
    if isinstance(exc, RecordNotFound):
        return NotFound(f"no record contract at {address}" if address else str(exc))
    if isinstance(exc, AlreadyVerified):
        return Conflict(str(exc) or "already verified", contract_error=exc.contract_error)
    if isinstance(exc, NotOwner):
        return Forbidden(f"the controller account does not own {address}: {exc}")
    if isinstance(exc, InvalidRecord | ValueError):
        return Unprocessable(str(exc), field="args")
    return ServiceUnavailable(f"chain error: {exc}", backend="chain")


@router.post("", status_code=201, response_model=ReceiptOut)
def deploy_contract(body: DeployRequest, chain: ChainDep, _admin: Admin) -> ReceiptOut:
    """Deploy a DatasetRecord or ModelRecord contract signed by the controller's account."""
    try:
        return _receipt(chain.seed_contracts.deploy(body.kind, body.args))
    except ChainError as exc:
        raise _map(exc) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise Unprocessable(f"invalid contract arguments: {exc}", field="args") from exc


@router.get("/{address}")
def describe_contract(address: str, chain: ChainDep, _admin: Admin) -> dict[str, object]:
    """Decoded metadata of a record contract (the seed's JSON shape)."""
    if address.lower() == chain.registry_address.lower():
        return {
            "contract": "FedgeRegistry",
            "address": chain.registry_address,
            "controller": chain.controller_address,
            "records": "keyed by id: see /v1/datasets/{id}/provenance and /v1/models/{id}/provenance",
        }
    try:
        return chain.seed_contracts.describe(address)
    except ChainError as exc:
        raise _map(exc, address) from exc


@router.post("/{address}/verify", response_model=ReceiptOut)
def verify_contract(address: str, body: VerifyRequest, chain: ChainDep, _admin: Admin) -> ReceiptOut:
    """Store a training result hash in a ModelRecord (once; 409 on a second call)."""
    digest = bytes.fromhex(body.result_hash.removeprefix("0x"))
    try:
        return _receipt(chain.seed_contracts.verify(address, digest))
    except ChainError as exc:
        raise _map(exc, address) from exc
