"""The torch scheduler: one program (one setting of the options) as torch primitives over
named buffers. driver.py walks the values; the others are its collaborators:

  bindings.py       which Python name holds which value, what storage names share
  stream.py         the ops so far, tidied as they are appended
  branches.py       Python `if`s on host conditions and zero-default hyperparameters
  inplace.py        a buffer made to hold a new value in place (into, add_term, mul_by)
  fresh.py          new tensors and the operands of primitives (fresh, operand)
  matrix_value.py   a matrix block as one op, and the names its result takes
  terms.py          an expression read as a primitive's operands (pure functions)
  shape_classes.py  whether an expression mixes shape classes
  zero_defaults.py  work a hyperparameter at 0 switches off
"""

from .driver import Schedule, Scheduler

__all__ = ["Schedule", "Scheduler"]
