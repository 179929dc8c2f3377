"""Matrix operations: `A @ B`, `transpose(A)` (`A.T`), the shape queries `rows`/`cols` and a
bounded iteration (`for _ in range(k):`), for updates such as Muon's Newton-Schulz step.

A matrix value is a parameter-shaped value of a 2-D parameter, `rows(param)` x
`cols(param)` (size(-2) and size(-1), the rule axis reductions use too). Matrix operations
need a 2-D parameter, as torch.optim.Muon does: on any other a matrix operation is a
ValueError at step time (reshape conv weights, or route them to an elementwise rule).

Shapes are symbolic: the dimensions are `R` (rows) and `C` (cols), so a value is a scalar
(None) or a pair such as ("R", "C") (the view of param), ("R", "R") (G @ G.T) or ("C", "R").
The checker infers them and refuses, at the statement's location, a matmul whose inner
dimensions differ, a matmul of a scalar, and an elementwise combination of two matrices of
different shapes.

In the IR a statement that uses a matrix operation (or reads a value that is not shaped like
the parameter), and each `for` loop, is one value with `matrix` set to a `MatrixBlock`: its
own small program over matrices, which the Reference interpreter and the torch paths run
whole (the foreach path stacks same-shaped matrices and runs the block once per shape, so a
matmul is one torch.bmm for all of them). Its `expr` is `MatrixInputs(operands...)`, so that
every pass that follows dependencies through free symbols sees what the block reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy

from .errors import Loc, SpecError
from .expr import COLS, COLS_SYMBOL, ROWS, ROWS_SYMBOL, GlobalSum, ReduceMax, ReduceMin, ReduceSum, symbol
from .limits import MAX_REPEAT

SHAPE_QUERIES = {ROWS: ROWS_SYMBOL, COLS: COLS_SYMBOL}
MATRIX_FUNCS = {"matmul": 2, "transpose": 1, ROWS: 1, COLS: 1, "bfloat16": 1}

Shape = tuple[str, str] | None
PARAM_SHAPE: Shape = ("R", "C")


class MatrixProduct(sympy.Function):
    """A @ B: a matrix product (not commutative: the order of args is the order of factors)."""

    nargs = 2
    is_real = True
    is_number = False


class Transposed(sympy.Function):
    """A.T of a matrix value."""

    nargs = 1
    is_real = True
    is_number = False

    @classmethod
    def eval(cls, arg):
        if isinstance(arg, Transposed):
            return arg.args[0]
        return None


class BFloat16(sympy.Function):
    """bfloat16(X): X rounded to bfloat16; the torch paths carry on in bfloat16 (as torch
    does after X.bfloat16()) until the value leaves the matrix blocks (see `MatrixLowering`)."""

    nargs = 1
    is_real = True
    is_number = False


class MatrixInputs(sympy.Function):
    """The operands of a matrix block, as the expression of its IR value."""

    is_real = True
    is_number = False


MATRIX_OPS = (MatrixProduct, Transposed)


def has_matrix_op(expr: sympy.Basic) -> bool:
    return expr.has(*MATRIX_OPS)


def uses_matrix_view(expr: sympy.Basic) -> bool:
    """A matmul, a transpose or a bfloat16(): its operands are read as matrix views."""
    return expr.has(*MATRIX_OPS, BFloat16)


def round_bfloat16(x) -> np.ndarray:
    """float64 values rounded to bfloat16 (round to nearest, ties to even, on the float32 bit
    pattern, as torch's .bfloat16()), returned as float64."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    out = rounded.astype(np.uint32).view(np.float32).astype(np.float64)
    nan = np.isnan(np.asarray(x, dtype=np.float64))
    return np.where(nan, np.nan, out) if nan.any() else out


@dataclass
class MatrixBlock:
    """A small program over matrices, run whole for each parameter tensor.

    init   local -> the outer value it starts from (the variables a loop carries)
    body   (local, expression) in order; an expression reads locals, the block's operands
           (IR names) and host values
    count  None: the body runs once; else the number of iterations (an integer constant or
           an integer hyperparameter of range within [0, MAX_REPEAT])
    result the local holding the block's value; `shape` its shape class
    bf16   the result is bfloat16 (it rounds with bfloat16() or reads a bfloat16 value)
    promote the torch paths convert the result back to the parameter's dtype at the end of
           the block (a statement outside the matrix blocks reads it)
    """

    init: dict[str, sympy.Symbol]
    body: list[tuple[str, sympy.Expr]]
    result: str
    shape: Shape
    count: sympy.Expr | None = None
    locs: list[Loc] = field(default_factory=list)
    bf16: bool = False
    promote: bool = False

    @property
    def locals(self) -> set[str]:
        return set(self.init) | {name for name, _ in self.body}

    @property
    def operands(self) -> list[sympy.Symbol]:
        local = self.locals
        free = set().union(*(e.free_symbols for _, e in self.body), *(s.free_symbols for s in self.init.values()))
        if self.count is not None:
            free |= self.count.free_symbols
        return sorted((s for s in free if s.name not in local), key=lambda s: s.name)

    def inputs_expr(self) -> sympy.Expr:
        return MatrixInputs(*self.operands)

    def rename(self, mapping: dict[str, sympy.Symbol]) -> None:
        """Operands renamed (an SSA pass forwarded a copy or a duplicate)."""
        local = self.locals
        subs = {s: mapping[s.name] for s in self.operands if s.name in mapping and s.name not in local}
        if not subs:
            return
        self.init = {k: v.xreplace(subs) for k, v in self.init.items()}
        self.body = [(n, e.xreplace(subs)) for n, e in self.body]
        if self.count is not None:
            self.count = self.count.xreplace(subs)

    @property
    def has_matmul(self) -> bool:
        """Reads its operands as matrix views (a matmul, transpose or bfloat16())."""
        return any(uses_matrix_view(e) for _, e in self.body)


def matrix_location(spec) -> Loc | None:
    """Where the spec first uses a matrix operation or a loop (None: it uses none)."""
    from .spec import If, Repeat, TensorIf

    def walk(statements):
        for stmt in statements:
            if isinstance(stmt, Repeat):
                return stmt.loc
            if isinstance(stmt, (If, TensorIf)):
                found = walk(stmt.body) or walk(stmt.orelse)
                if found:
                    return found
            elif uses_matrix_view(stmt.expr):
                return stmt.loc
        return None

    return walk(spec.update)


def loop_counts(spec) -> set[str]:
    """The hyperparameters that count a loop's iterations (integers at run time)."""
    from .spec import If, Repeat, TensorIf

    def walk(statements):
        for stmt in statements:
            if isinstance(stmt, Repeat):
                yield from (s.name for s in stmt.count.free_symbols)
            elif isinstance(stmt, (If, TensorIf)):
                yield from walk(stmt.body)
                yield from walk(stmt.orelse)

    return set(walk(spec.update))


def fused_refusal(spec) -> str:
    """What of a matrix spec the fused path does not run ("" when it runs all of it): its
    elementwise stages run as fused kernels and its matrix blocks through torch between them
    (optgen/backends/fused_matrix.py)."""
    if matrix_location(spec) is None:
        return ""
    from .backends.fused_matrix import refusal

    return refusal(spec)


def describe_block(block: MatrixBlock) -> str:
    """One line for `optgen show`: the block's statements (and loop), its result's shape."""
    names = {"R": "rows", "C": "cols", "S": "short", "L": "long"}
    body = "; ".join(f"{n} = {e}" for n, e in block.body)
    start = "".join(f"{n} = {s}; " for n, s in block.init.items())
    loop = f"repeat {block.count}: [{body}]" if block.count is not None else body
    shape = "x".join(names[d] for d in block.shape)
    return f"matrix {{{start}{loop}}} -> {block.result} ({shape})"


# --------------------------------------------------------------------------- shapes
def _fmt(shape: Shape) -> str:
    if shape is None:
        return "a scalar"
    names = {"R": "rows", "C": "cols", "S": "short", "L": "long"}
    return f"a {names[shape[0]]}×{names[shape[1]]} matrix"


def infer_shape(expr: sympy.Basic, shapes: dict[str, Shape], loc: Loc) -> Shape:
    """The shape class of `expr` given the shapes of the names it reads (absent: scalar)."""
    if expr.is_Symbol:
        return shapes.get(expr.name)
    if expr.is_Number or isinstance(expr, sympy.logic.boolalg.BooleanAtom):
        return None
    if isinstance(expr, (ReduceSum, ReduceMin, ReduceMax, GlobalSum)):
        infer_shape(expr.args[0], shapes, loc)
        return None
    if isinstance(expr, MatrixProduct):
        a, b = (infer_shape(x, shapes, loc) for x in expr.args)
        for side, shape, arg in (("left", a, expr.args[0]), ("right", b, expr.args[1])):
            if shape is None:
                raise SpecError(loc, f"matmul: the {side} operand `{arg}` is a scalar; `@` takes matrices")
        if a[1] != b[0]:
            raise SpecError(
                loc,
                f"matmul: inner dimensions do not match: {_fmt(a)} @ {_fmt(b)} (in `{expr.args[0]} @ {expr.args[1]}`)",
            )
        return (a[0], b[1])
    if isinstance(expr, BFloat16):
        a = infer_shape(expr.args[0], shapes, loc)
        if a is None:
            raise SpecError(loc, f"bfloat16: `{expr.args[0]}` is a scalar; bfloat16() rounds a tensor value")
        return a
    if isinstance(expr, Transposed):
        a = infer_shape(expr.args[0], shapes, loc)
        if a is None:
            raise SpecError(loc, f"transpose: `{expr.args[0]}` is a scalar; transpose takes a matrix")
        return (a[1], a[0])
    if isinstance(expr, sympy.Piecewise):
        for piece in expr.args:
            if infer_shape(piece.cond, shapes, loc) is not None:
                raise SpecError(loc, "a where(...) between matrices needs a scalar condition (a host-side choice)")
        oriented = _oriented(expr, shapes, loc)
        if oriented is not None:
            return oriented
    parts = [infer_shape(a, shapes, loc) for a in expr.args if isinstance(a, sympy.Basic)]
    found = [s for s in parts if s is not None]
    for s in found[1:]:
        if s != found[0]:
            raise SpecError(loc, f"cannot combine {_fmt(found[0])} with {_fmt(s)} elementwise")
    return found[0] if found else None


# a where on `rows(param) > cols(param)` may choose between a matrix and its transpose: the
# result is then oriented by its short side S = min(rows, cols) and long side L = max(...)
_AS_SHORT_LONG = ({"R": "L", "C": "S", "S": "S", "L": "L"}, {"R": "S", "C": "L", "S": "S", "L": "L"})
_AS_ROWS_COLS = ({"L": "R", "S": "C", "R": "R", "C": "C"}, {"S": "R", "L": "C", "R": "R", "C": "C"})


def _is_tall(cond) -> bool:
    tall = sympy.StrictGreaterThan(ROWS_SYMBOL, COLS_SYMBOL, evaluate=False)
    return isinstance(cond, sympy.core.relational.Relational) and cond.canonical == tall.canonical


def _oriented(expr: sympy.Piecewise, shapes: dict[str, Shape], loc: Loc) -> Shape:
    """The shape of where(rows(param) > cols(param), a, b) when a and b are matrices that
    agree once each side's dimensions are read under its condition (X.T when tall, X when
    wide: short x long), or None when the general rule applies."""
    if len(expr.args) != 2 or not _is_tall(expr.args[0].cond):
        return None
    tall, wide = (infer_shape(piece.expr, shapes, loc) for piece in expr.args)
    if tall is None or wide is None or tall == wide:
        return None
    for when_tall, when_wide in (_AS_ROWS_COLS, _AS_SHORT_LONG):
        a = tuple(when_tall[d] for d in tall)
        b = tuple(when_wide[d] for d in wide)
        if a == b:
            return a
    raise SpecError(loc, f"where(rows(param) > cols(param), ...) chooses between {_fmt(tall)} and {_fmt(wide)}")


def check_count(count: sympy.Expr, hyper_ranges: dict, loc: Loc) -> None:
    """A loop count is an integer constant or an integer hyperparameter whose declared range
    lies within [0, MAX_REPEAT]: a spec cannot ask for an unbounded loop."""
    if count.is_Integer:
        if not 0 <= int(count) <= MAX_REPEAT:
            raise SpecError(loc, f"a loop runs at most {MAX_REPEAT} times; got {count}")
        return
    if count.is_Symbol and count.name in hyper_ranges:
        interval = hyper_ranges[count.name]
        if interval.lo < 0 or interval.hi > MAX_REPEAT:
            raise SpecError(
                loc,
                f"the loop count `{count.name}` must have a range within [0, {MAX_REPEAT}] "
                f"(declared {interval}): a loop is bounded",
            )
        return
    raise SpecError(loc, "a loop count is an integer or an integer hyperparameter: `for _ in range(ns_steps):`")


# --------------------------------------------------------------------------- reference
def matrix_view(x: np.ndarray, param: np.ndarray) -> np.ndarray:
    """A parameter-shaped value as its matrix (the value itself: the parameter is 2-D)."""
    if np.ndim(x) == 0 or np.shape(x) != np.shape(param):
        return x
    if param.ndim != 2:
        raise ValueError(f"a matrix operation needs a 2-D parameter; got shape {tuple(param.shape)}")
    return x


def shape_env(param: np.ndarray) -> dict:
    """rows(param) = size(-2) and cols(param) = size(-1), 1 without the dim."""
    sizes = (1, 1, *param.shape)
    return {ROWS: np.float64(sizes[-2]), COLS: np.float64(sizes[-1])}


def run_block_numpy(block: MatrixBlock, compile_expr, env: dict, param_name: str = "param") -> np.ndarray:
    """The block on float64 arrays: the Reference interpreter's rule for a matrix value."""
    param = env[param_name]
    view = (lambda x: matrix_view(x, param)) if block.has_matmul else (lambda x: x)
    local = {name: view(np.asarray(env[name])) for name in _operand_names(block) if name in env}
    local.update(shape_env(param))
    for name, source in block.init.items():
        local[name] = view(np.asarray(env[source.name]))
    fns = _compiled_body(block, compile_expr)
    count = 1 if block.count is None else _count(compile_expr(block.count)(local))
    for _ in range(count):
        for name, fn in fns:
            local[name] = fn(local)
    out = local[block.result]
    if block.shape == PARAM_SHAPE and np.ndim(out) == 2:
        return np.reshape(out, param.shape)
    return out


def _operand_names(block: MatrixBlock) -> list[str]:
    return [s.name for s in block.operands]


def _compiled_body(block: MatrixBlock, compile_expr) -> list:
    cache = block.__dict__.setdefault("_numpy", None)
    if cache is None:
        cache = [(name, compile_expr(expr)) for name, expr in block.body]
        block.__dict__["_numpy"] = cache
    return cache


def _count(value) -> int:
    n = float(value)
    if n != int(n) or not 0 <= n <= MAX_REPEAT:
        raise ValueError(f"a loop count must be an integer in [0, {MAX_REPEAT}]; got {value}")
    return int(n)


def numpy_handlers(compile_expr) -> dict:
    """Rules for the Reference interpreter's expression compiler. A reduction inside a block
    reduces the whole matrix (a block runs once per parameter tensor)."""

    def binary(fn):
        def rule(e):
            a, b = compile_expr(e.args[0]), compile_expr(e.args[1])
            return lambda env: fn(a(env), b(env))

        return rule

    def unary(fn):
        def rule(e):
            a = compile_expr(e.args[0])
            return lambda env: fn(a(env))

        return rule

    return {
        MatrixProduct: binary(np.matmul),
        Transposed: unary(lambda x: np.swapaxes(x, -1, -2)),
        BFloat16: unary(round_bfloat16),
        ReduceSum: unary(lambda x: np.float64(np.sum(x))),
        ReduceMin: unary(lambda x: np.float64(np.min(x))),
        ReduceMax: unary(lambda x: np.float64(np.max(x))),
    }


# --------------------------------------------------------------------------- lowering
class MatrixLowering:
    """Builds the matrix values of one program while the lowering converts it to SSA:
    `statement` for an assignment that uses a matrix operation (or reads a value that is not
    shaped like the parameter, or a bfloat16 value), `loop` for a `for _ in range(k):` block.

    Precision: bfloat16(X) is X rounded to bfloat16. A block's value is bfloat16 when it
    calls bfloat16() or reads a bfloat16 value, and reads no other matrix or per-element value
    (one in the parameter's dtype promotes it back, as torch's type promotion does); numbers
    (hyperparameters, per-tensor values such as a norm) leave it bfloat16. A statement that reads a bfloat16 value is a matrix block,
    unless it assigns `param` or a state: there (the value is stored) the block that made it
    converts it back to the parameter's dtype at its end (`promote`)."""

    def __init__(self, spec, scopes: dict[str, str]):
        self.spec = spec
        self.scopes = scopes  # IR name -> scope (inputs, and values as they are made)
        self.shapes: dict[str, Shape] = {}  # matrix values -> their shape class
        self.loop_locals: dict[str, Loc] = {}  # a loop's temporaries -> the loop
        self.blocks: dict[str, MatrixBlock] = {}  # bfloat16 values -> the block making them

    def shape_of(self, name: str) -> Shape:
        if name in self.shapes:
            return self.shapes[name]
        return PARAM_SHAPE if self.scopes.get(name) == "element" else None

    def table(self, names) -> dict[str, Shape]:
        return {n: self.shape_of(n) for n in names}

    def is_matrix(self, expr: sympy.Expr, var: str = "", loc: Loc | None = None) -> bool:
        if expr.has(BFloat16):
            return True
        stored = var == "param" or var in self.spec.state
        if not stored and self.reads_bf16(expr):
            # a per-tensor number computed from a bfloat16 value is not a matrix
            return infer_shape(expr, self.table(s.name for s in expr.free_symbols), loc) is not None
        return has_matrix_op(expr) or any(
            s.name in self.shapes and self.shapes[s.name] != PARAM_SHAPE for s in expr.free_symbols
        )

    def reads_bf16(self, expr: sympy.Expr) -> bool:
        return any(s.name in self.blocks for s in expr.free_symbols)

    def promote(self, expr: sympy.Expr) -> None:
        """A statement outside the blocks reads these bfloat16 values: back to the parameter's dtype."""
        for s in expr.free_symbols:
            if s.name in self.blocks:
                self.blocks[s.name].promote = True

    def _bf16(self, expr: sympy.Expr, bf16: set[str], shapes: dict | None = None) -> bool | None:
        """True: bfloat16; False: a tensor in the parameter's dtype; None: a number (a
        hyperparameter or a per-tensor value, which leaves a bfloat16 tensor bfloat16)."""
        if isinstance(expr, BFloat16):
            return True
        if expr.is_Symbol:
            if expr.name in bf16:
                return True
            shape = shapes[expr.name] if shapes and expr.name in shapes else self.shape_of(expr.name)
            return False if shape is not None else None
        kinds = [self._bf16(a, bf16, shapes) for a in expr.args if isinstance(a, sympy.Basic)]
        if False in kinds:
            return False
        return True if True in kinds else None

    def statement(self, name: str, expr: sympy.Expr, loc: Loc, var: str = "") -> MatrixBlock:
        shape = infer_shape(expr, self.table(s.name for s in expr.free_symbols), loc)
        if shape is None and expr.has(BFloat16):
            raise SpecError(loc, "bfloat16() gives a tensor here; round in one statement and reduce it in the next")
        _refuse_scalar(shape, loc)
        if (var == "param" or var in self.spec.state) and shape != PARAM_SHAPE:
            raise SpecError(loc, f"`{var}` is shaped like the parameter, but this is {_fmt(shape)}")
        self.shapes[name] = shape
        block = MatrixBlock({}, [(name, expr)], name, shape, locs=[loc])
        self._made_bf16(name, block, self._bf16(expr, set(self.blocks)) is True)
        return block

    def _made_bf16(self, name: str, block: MatrixBlock, bf16: bool) -> None:
        block.bf16 = bf16
        if bf16:
            self.blocks[name] = block

    def loop(self, stmt, env: dict, fresh, assigns: list, loc: Loc) -> tuple[str, MatrixBlock]:
        """`assigns`: the loop's assignments (options already chosen). Returns the variable
        the loop carries and its block."""
        hypers = {n: h.range for n, (h, _) in self.spec.scalar_hypers.items()}
        check_count(stmt.count, hypers, loc)
        assigned = list(dict.fromkeys(a.target for a in assigns))
        for var in assigned:
            if var == "param" or var in self.spec.state:
                raise SpecError(loc, f"`{var}` is assigned inside a loop; a loop computes a value, assign it after")
        carried, written = [], set()
        for a in assigns:
            for s in sorted(a.expr.free_symbols, key=lambda s: s.name):
                if s.name in assigned and s.name not in written and s.name not in carried:
                    carried.append(s.name)
            written.add(a.target)
        carried += [v for v in assigned if v in env and v not in carried]
        if len(carried) != 1:
            which = ", ".join(f"`{v}`" for v in carried) or "no value"
            raise SpecError(
                loc,
                f"a loop carries exactly one value from one iteration to the next (read before it is assigned); here {which}",
            )
        (var,) = carried
        if var not in env:
            raise SpecError(loc, f"`{var}` is read in the loop before it is assigned")
        local = {v: symbol(fresh(v)) for v in assigned}
        outer = {k: v for k, v in env.items() if k not in local}
        shapes = {sym.name: self.shape_of(sym.name) for sym in outer.values()}
        shapes[local[var].name] = self.shape_of(env[var].name)
        body = []
        bf16 = set(self.blocks) | ({local[var].name} if env[var].name in self.blocks else set())
        for a in assigns:
            subs = {s: local.get(s.name, outer.get(s.name)) for s in a.expr.free_symbols}
            subs = {s: t for s, t in subs.items() if t is not None}
            expr = a.expr.xreplace(subs)
            shapes[local[a.target].name] = infer_shape(expr, shapes, a.loc)
            body.append((local[a.target].name, expr))
            if self._bf16(expr, bf16, shapes) is True:
                bf16.add(local[a.target].name)
            else:
                bf16.discard(local[a.target].name)
        start, end = self.shape_of(env[var].name), shapes[local[var].name]
        if start != end:
            raise SpecError(loc, f"the loop changes the shape of `{var}`: {_fmt(start)} becomes {_fmt(end)}")
        _refuse_scalar(end, loc)
        count = stmt.count.xreplace({s: outer[s.name] for s in stmt.count.free_symbols if s.name in outer})
        block = MatrixBlock({local[var].name: env[var]}, body, local[var].name, end, count, [a.loc for a in assigns])
        block.bf16 = local[var].name in bf16
        return var, block

    def made(self, name: str, block: MatrixBlock) -> None:
        self.shapes[name] = block.shape
        self._made_bf16(name, block, block.bf16)


def _refuse_scalar(shape: Shape, loc: Loc) -> None:
    if shape is None:
        raise SpecError(
            loc, "a statement with a matrix operation gives a matrix here; reduce its result in the next statement"
        )
