"""Small stdlib-only helpers shared by the controller, the edge agent and the simulator."""

from fedge_common.files import atomic_write, atomic_writer, fsync_dir

__all__ = ["atomic_write", "atomic_writer", "fsync_dir"]
