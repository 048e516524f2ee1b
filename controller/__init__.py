"""fedge controller: registry, chain provenance, training, federation and fleet management.

Importing this package is cheap: heavy dependencies (FastAPI, SQLAlchemy, web3) are imported by the
submodules that need them, so the user CLI and SDK (``controller.client``) work with the base install.
"""

__version__ = "0.1.0"
