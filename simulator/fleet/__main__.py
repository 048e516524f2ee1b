"""``python -m simulator.fleet``: see :mod:`simulator.fleet.cli`."""

from simulator.fleet.cli import main

main()
