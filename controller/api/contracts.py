"""The seed's Blockchain service routes (internal/admin): deploy, describe and verify record contracts.

Registry records (datasets, models, artifacts, FL runs) live in one FedgeRegistry contract keyed by id;
these routes deploy and read the per-asset ``DatasetRecord`` / ``ModelRecord`` contracts of the seed."""

from __future__ import annotations

from fastapi import APIRouter

from controller.api.deps import Admin, ChainDep
from controller.chain.base import TxReceipt
from controller.errors import Unprocessable
from controller.registry.chain_problems import map_chain_errors
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


@router.post("", status_code=201, response_model=ReceiptOut)
def deploy_contract(body: DeployRequest, chain: ChainDep, _admin: Admin) -> ReceiptOut:
    """Deploy a DatasetRecord or ModelRecord contract signed by the controller's account."""
    try:
        with map_chain_errors(field="args"):
            return _receipt(chain.seed_contracts.deploy(body.kind, body.args))
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
    with map_chain_errors(address=address, field="args"):
        return chain.seed_contracts.describe(address)


@router.post("/{address}/verify", response_model=ReceiptOut)
def verify_contract(address: str, body: VerifyRequest, chain: ChainDep, _admin: Admin) -> ReceiptOut:
    """Store a training result hash in a ModelRecord (once; 409 on a second call)."""
    digest = bytes.fromhex(body.result_hash.removeprefix("0x"))
    with map_chain_errors(address=address, field="args"):
        return _receipt(chain.seed_contracts.verify(address, digest))
