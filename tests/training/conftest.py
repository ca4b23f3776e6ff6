import pytest
import torch
from tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Folder of a tiny random BERT and its tokenizer (see :mod:`tiny_model`)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes gain nothing from threads, and on a shared machine the OpenMP barriers of
    the CPU Sinkhorn loop can stall for the scheduler's quantum; run each test on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
