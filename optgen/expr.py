"""The expression vocabulary shared by every stage: built-in names, reduction functions and
the symbol table. Spec expressions become SymPy expressions over these."""

from __future__ import annotations

import keyword

import sympy


class _Reduction(sympy.Function):
    """A reduction over tensor elements. Never a number, even of a constant argument (sum(2)
    is 2 * numel): SymPy must not try to compare it with numbers (Max(sum(2), 1))."""

    nargs = 1
    is_real = True
    is_number = False


class ReduceSum(_Reduction):
    """sum(x) over the elements of one parameter tensor."""


class ReduceMin(_Reduction):
    """amin(x) over the elements of one parameter tensor."""


class ReduceMax(_Reduction):
    """amax(x) over the elements of one parameter tensor."""


class GlobalSum(_Reduction):
    """The sum over every parameter tensor of sum(x): a reduction across all parameters."""


TENSOR_REDUCTIONS = {ReduceSum: "sum", ReduceMin: "min", ReduceMax: "max"}
REDUCTIONS = (ReduceSum, ReduceMin, ReduceMax, GlobalSum)

# Built-in inputs and their scopes.
PARAM, GRAD, STEP, NUMEL, NDIM = "param", "grad", "step", "numel", "ndim"
ROWS, COLS = "rows", "cols"  # rows(param) = size(-2), cols(param) = size(-1) (optgen/shapes.py)
BUILTIN_INPUTS = (PARAM, GRAD, STEP)
TENSOR_SHAPE_FUNCS = {"numel": NUMEL, "ndim": NDIM, "rows": ROWS, "cols": COLS}  # numel(param), ...

# name -> (min args, max args)
ELEMENTWISE_FUNCS = {
    "sqrt": (1, 1),
    "abs": (1, 1),
    "sign": (1, 1),
    "exp": (1, 1),
    "log": (1, 1),
    "maximum": (2, 2),
    "minimum": (2, 2),
    "clamp": (3, 3),
    "where": (3, 3),
}
REDUCTION_FUNCS = {"sum": 1, "mean": 1, "norm": 1, "amin": 1, "amax": 1, "global_norm": 1, "global_sum": 1}
# matrix operations, shape queries and the bfloat16() rounding (optgen/matrix.py)
MATRIX_FUNC_NAMES = {"matmul": 2, "transpose": 1, "rows": 1, "cols": 1, "bfloat16": 1}
FUNCTIONS = set(ELEMENTWISE_FUNCS) | set(REDUCTION_FUNCS) | set(TENSOR_SHAPE_FUNCS) | set(MATRIX_FUNC_NAMES)

# Names a spec may not take: what the Python backends cannot rename (constructor keywords,
# the class's own attributes) or what SymPy or the spec language give a meaning. Any other
# name the generated code uses itself is renamed there (backends/torch/names.py).
RESERVED = {
    "torch",
    "math",
    "self",
    "groups",
    "state",
    "params",
    "grads",
    "closure",
    "loss",
    "optimizer",
    "foreach",
    "fused",
    "maximize",
    "inf",
    "nan",
    "pi",
    "E",
    "I",
    "defaults",
    "device",
    "dtype",
    "None",
    "True",
    "False",
    "lambda",
    "numel",
    "ndim",
    "rows",
    "cols",
    "differentiable",
    "capturable",
    "has_sparse_grad",
    "Tensor",
    "Optimizer",
    "sympy",
    "step_t",
    "state_steps",
}


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a hyperparameter, option, state or local value (or None)."""
    if not isinstance(name, str) or not name.isidentifier() or not name.isascii():
        return f"{name!r} is not an identifier"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return f"{name!r} is a Python keyword"
    if name.startswith("_"):
        return f"{name!r} starts with an underscore, which is reserved"
    if name in BUILTIN_INPUTS:
        return f"{name!r} shadows the built-in input `{name}`"
    if name in FUNCTIONS:
        return f"{name!r} shadows the built-in function `{name}`"
    if name in RESERVED:
        return f"{name!r} is reserved for generated code"
    if len(name) > 64:
        return f"{name!r} is longer than 64 characters"
    return None


def symbol(name: str, **assumptions) -> sympy.Symbol:
    """Every optgen value symbol is real; more facts come from hyperparameter ranges."""
    return sympy.Symbol(name, real=True, **assumptions)


STEP_SYMBOL = symbol(STEP, integer=True, positive=True)
NUMEL_SYMBOL = symbol(NUMEL, integer=True, positive=True)
NDIM_SYMBOL = symbol(NDIM, integer=True, nonnegative=True)
ROWS_SYMBOL = symbol(ROWS, integer=True, positive=True)
COLS_SYMBOL = symbol(COLS, integer=True, positive=True)
# rows(param) is size(-2) of a tensor of 2 or more dims, else 1; cols(param) is size(-1), 1 for
# a 0-d tensor: a vector is one row (the N-D rule of optgen/shapes.py)
SIZE_RANKS = {ROWS: 2, COLS: 1}


def reductions_in(expr: sympy.Expr) -> set:
    return {a for a in sympy.preorder_traversal(expr) if isinstance(a, REDUCTIONS)}


# --------------------------------------------------------------------------- axis reductions
class AxisReductionBase(sympy.Function):
    """A reduction over trailing axes of one tensor, keepdim: `mean(x, axis=-1)` is
    AxisMean(x, (-1,)). The result has size 1 along the axes (optgen/shapes.py) and
    broadcasts back against element values. Never a number (see _Reduction)."""

    nargs = 2
    is_real = True
    is_number = False
    spelling = ""
    torch_fn = ""

    @property
    def axes(self) -> frozenset:
        return frozenset(int(a) for a in self.args[1])


class AxisSum(AxisReductionBase):
    spelling = "sum"
    torch_fn = "sum"


class AxisMean(AxisReductionBase):
    spelling = "mean"
    torch_fn = "mean"


class AxisMax(AxisReductionBase):
    spelling = "amax"
    torch_fn = "amax"


class AxisMin(AxisReductionBase):
    spelling = "amin"
    torch_fn = "amin"


class AxisNorm(AxisReductionBase):
    """The 2-norm over the axes: sqrt of the sum of squares (torch.linalg.vector_norm)."""

    is_nonnegative = True
    spelling = "norm"
    torch_fn = "norm"


AxisReduction = AxisReductionBase  # (SymPy's printers dispatch to `_print_AxisReductionBase`)
AXIS_REDUCTIONS = {"sum": AxisSum, "mean": AxisMean, "amax": AxisMax, "amin": AxisMin, "norm": AxisNorm}


def axis_reductions_in(expr: sympy.Basic) -> list:
    return [a for a in sympy.preorder_traversal(expr) if isinstance(a, AxisReduction)]
