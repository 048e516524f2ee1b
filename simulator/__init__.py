"""fedge simulators: the power-grid environment (``simulator.grid``) and the fleet simulator."""
