"""Shared test settings."""

import signal

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tests use tiny networks: one thread runs them faster than two, and keeps them fast
    when other jobs share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def restore_signals():
    """mwm.train's main() installs SIGINT / SIGTERM handlers; put pytest's back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
