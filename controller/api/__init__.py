"""HTTP API: one router per resource; handlers receive backends through ``deps``."""
