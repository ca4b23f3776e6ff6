import os

import pytest
import torch

# No GPU on the CI machines: Triton kernels run in Triton's interpreter, which must be switched
# on before any kernel module is imported (ahead-of-time compile checks run in a subprocess).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
