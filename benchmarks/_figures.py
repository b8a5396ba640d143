"""Figures of the benchmarks: written atomically as PNG."""

from __future__ import annotations

import io

from mwm.atomic import atomic_write_bytes


def save_png(fig, path: str) -> None:
    """Write a matplotlib figure to ``path`` as a 100-dpi PNG in one atomic step, close it
    and say where it went."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    print(f"plot: {path}")
