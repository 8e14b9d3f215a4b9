"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests with one torch thread: tiny convolutions are much slower with 2 OpenMP
    threads on a shared 2-core machine, and the tests check behaviour, not speed."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
