"""fedge's Solidity contracts: sources in ``src/``, compiled ABI + bytecode in ``build/`` (shipped in the
wheel so an installed controller finds them). Recompile with ``python contracts/compile.py``."""
