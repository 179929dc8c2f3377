"""Test-wide set-up. Without a GPU, Triton kernels run in Triton's interpreter on CPU
tensors: the variable must be set before triton is first imported, which may happen
while any test module is collected."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
