"""Tuning and naming constants of the Triton backend."""

from __future__ import annotations

# Elements per block: one block of one tensor per program. 2048 fp32 with 4 warps gives each
# thread 16 contiguous elements (four 16-byte loads per array) on a GPU.
BLOCK_SIZE = 2048
NUM_WARPS = 4
# The interpreter (TRITON_INTERPRET=1, CPU tensors) runs one program at a time in NumPy: a
# smaller block keeps tiny tensors cheap without changing the code.
INTERPRETER_BLOCK_SIZE = 1024

# The largest alignment (in elements) the runtime promises the kernels: every tensor's size
# and offset in a group is a multiple of ALIGN, the largest power of two up to this that
# holds for all of them. 16 covers a 16-byte vector of any dtype down to 8 bits.
MAX_ALIGN = 16

# Format generated text at this width (the committed files are read by people).
LINE_LENGTH = 100
