"""Pick a ChainBackend from settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from controller.chain.base import ChainBackend
from controller.chain.errors import ChainError
from controller.chain.keys import ControllerKey, load_or_create_key

if TYPE_CHECKING:
    from controller.config import ControllerSettings

CHAIN_SUBDIR = "chain"


def make_chain(settings: ControllerSettings) -> ChainBackend:
    """The ChainBackend named by the settings (in-process EVM journaled under data_dir by default)."""
    key = settings.chain_private_key.get_secret_value() if settings.chain_private_key else None
    return make_chain_backend(
        settings.chain_backend, settings.data_dir, settings.chain_rpc_url, key, settings.chain_id
    )


def make_chain_backend(
    kind: str,
    data_dir: Path,
    rpc_url: str | None = None,
    private_key: str | None = None,
    chain_id: int | None = None,
    *,
    registry_address: str | None = None,
) -> ChainBackend:
    """Build the backend named by `kind`: "evm" (in-process, default) or "jsonrpc" (needs `rpc_url`).

    State lives in `data_dir/chain/`: the controller key file (unless `private_key` is given), the
    in-process chain's journal, and the registry address deployed on a JSON-RPC chain.
    """
    state_dir = Path(data_dir) / CHAIN_SUBDIR
    key = ControllerKey(private_key) if private_key else load_or_create_key(state_dir)
    if kind == "evm":
        from controller.chain.evm import InProcessChainBackend

        backend: ChainBackend = InProcessChainBackend(state_dir, key)
        if chain_id is not None and chain_id != backend.chain_id:
            backend.close()
            raise ChainError(
                f"the in-process chain runs chain id {backend.chain_id}, settings say {chain_id}"
            )
        return backend
    if kind == "jsonrpc":
        if not rpc_url:
            raise ChainError("the jsonrpc chain backend needs an RPC URL")
        from controller.chain.jsonrpc import JsonRpcChainBackend

        return JsonRpcChainBackend(
            rpc_url, key, state_dir=state_dir, chain_id=chain_id, registry_address=registry_address
        )
    raise ChainError(f"unknown chain backend {kind!r} (expected 'evm' or 'jsonrpc')")
