"""The fedge Flower App: component shims (see ../pyproject.toml)."""
