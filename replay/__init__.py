"""Episode replay: npz files on disk, a bounded RAM store, sequence sampling and prefetch.

See replay/README.md for the file format and the guarantees.
"""

from replay.replay import Replay

__all__ = ["Replay"]
