"""Print a schedule as the body of `_single_tensor_<name>` (a loop over tensors, method
calls chained as in torch/optim/adam.py) or `_multi_tensor_<name>` (torch._foreach_* over
the lists, Python floats per tensor as lists)."""

from __future__ import annotations

import re
from dataclasses import replace

import sympy

from ...expr import COLS, NDIM, NUMEL, ROWS, SIZE_RANKS, STEP
from ...shapes import ALL_RANKS, guard_of
from .matrix_ops import (
    MATRIX_RANKS,
    MatrixOp,
    MatrixPrinter,
    MatrixRun,
    batched_lines,
    count_check,
    matrix_runs,
    ndim_check,
    shape_text,
    single_lines,
)
from .ops import Alias, Eval, Fill, HostAssign, If, InPlace, New, Reduce, S, T
from .prepare import PER_TENSOR, Prepared, plural
from .printer import TensorPrinter, compiled_host_printer, host_printer
from .reduce_pass import ReducePass
from .schedule import Schedule
from .statements import Block, Line, render


class _Texts:
    """How an IR symbol is spelled inside one tensor's computation (the for-loop body, or the
    body of a foreach list comprehension)."""

    def __init__(self, p: Prepared, sched: Schedule):
        self.p = p
        self.display = sched.display
        self.rename: dict[str, str] = {}  # a Python name -> the name that holds it in a branch
        self.traced = False  # the for-loop path: a scalar state is read with _get_value
        self.ranks = sched.ranks  # the ranks the tensor may have here (None: any)

    def name(self, ir: str) -> str:
        if ir == NUMEL:
            return "numel"  # the whole tensor's (numels[i]): a shard's own numel is less
        if ir == NDIM:
            return "param.ndim"
        if ir in SIZE_RANKS:
            return size_text("param", SIZE_RANKS[ir], self.ranks)
        name = self.display.get(ir, ir)
        return self.rename.get(name, name)

    def host(self, ir: str) -> str:
        if self.p.var_of.get(ir, ir) in self.p.scalar_states:
            if self.traced:
                return f"_get_value({self.display[ir]}, param)"
            return f"{self.display[ir]}.item()"
        return self.name(ir)


class SinglePrinter:
    # the for-loop path is the one torch.compile traces (see _get_value): a host value that
    # reads the step count is a 0-d tensor there, and a branch on it is taken by torch.where
    compiled_forms = True

    def __init__(self, p: Prepared, sched: Schedule, batched: dict[str, str] | None = None):
        self.p = p
        self.batched = batched or {}  # reductions a reduce-only loop combined: name -> its list
        self.texts = _Texts(p, sched)
        self.texts.traced = self.compiled_forms
        self.host_printer = host_printer(self.texts.host)
        self.compiled_host_printer = compiled_host_printer(self.texts.host)
        self.tensor_printer = TensorPrinter(self.texts.name, p.is_scalar, self.texts.host)
        self.traced: set[str] = set()  # host values that are tensors under torch.compile
        self.defined = {"param", "grad", *(s.name for s in p.program.states)}  # bound so far
        # a spec that reduces over axes or multiplies matrices refuses sharded (DTensor)
        # tensors: nothing to combine
        self.shardable = not whole_tensors_only(p.program)

    def is_traced(self, expr) -> bool:
        """Whether `expr` is a 0-d tensor under torch.compile: it reads the step count, a
        scalar state (both read with _get_value) or a host value computed from them."""
        for s in expr.free_symbols:
            if s.name == STEP or self.p.var_of.get(s.name, s.name) in self.p.scalar_states:
                return True
            if self.texts.name(s.name) in self.traced:
                return True
        return False

    def host(self, expr) -> str:
        return self.host_printer.doprint(expr)

    def tensor(self, expr) -> str:
        return self.tensor_printer.doprint(expr)

    def arg(self, a) -> str:
        return a.name if isinstance(a, T) else self.host(a.expr)

    def kwargs(self, kw: dict) -> str:
        return "".join(f", {k}={self.arg(v)}" for k, v in kw.items())

    # ------------------------------------------------------------------ ops
    def statements(self, ops: list) -> list:
        """One line per op; in-place ops on the tensor the last line made or updated extend
        that line (`denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(eps)`).
        Reductions are combined across shards before the first op that reads one of them."""
        out: list = []
        chain: str | None = None  # the tensor the last line can be extended on
        pending: list[Reduce] = []  # reductions not yet combined across shards
        ops = list(ops)
        for k, op in enumerate(ops):
            if pending and self._reads(op, pending):
                hoisted = self._hoistable(ops, k)
                out += [self._Reduce(r) for r in hoisted]
                out.append(self._combine(pending + hoisted))
                pending, chain = [], None
            if op is None:  # hoisted
                continue
            if isinstance(op, Reduce) and op.target in self.batched:
                out.append(self._read_combined([op] + self._hoistable(ops, k + 1)))
                chain = None
                continue
            if isinstance(op, InPlace) and op.target == chain and _chainable(op):
                out[-1] = Line(out[-1].text + self._method(op))
                continue
            made = getattr(self, f"_{type(op).__name__}")(op)
            out.extend(made if isinstance(made, list) else [made])
            if isinstance(op, (HostAssign, New, Eval, Alias, Reduce, MatrixOp)):
                self.defined.add(op.name if isinstance(op, HostAssign) else op.target)
            chain = op.target if isinstance(op, New) or (isinstance(op, InPlace) and _chainable(op)) else None
            if isinstance(op, Reduce) and self.shardable:
                pending.append(op)
        if pending:
            out.append(self._combine(pending))
        return out

    def _reads(self, op, pending: list[Reduce]) -> bool:
        """Whether the op's text names the result of a pending reduction."""
        return op is not None and self._mentions(op, [self.reduced(r.target) for r in pending])

    def _mentions(self, op, names: list[str]) -> bool:
        made = getattr(self, f"_{type(op).__name__}")(op)
        text = render(made if isinstance(made, list) else [made], 0)
        return any(re.search(rf"\b{re.escape(name)}\b", text) for name in names)

    def _hoistable(self, ops: list, k: int) -> list[Reduce]:
        """The reductions after ops[k] that can run before it, so that one collective
        combines them with the pending ones: those separated from ops[k] only by ops that
        make new tensors (no in-place write, which might reach their source through an
        alias) and name neither their source nor their result. Taken out of `ops`."""
        hoisted, between = [], []
        for j in range(k, len(ops)):
            op = ops[j]
            if op is None:
                continue
            if isinstance(op, Reduce):
                names = [self.reduced(op.source.name), self.reduced(op.target)]
                if not any(self._mentions(b, names) for b in between):
                    hoisted.append(op)
                    ops[j] = None
                    continue
            if not isinstance(op, (New, Eval, HostAssign, Reduce)):
                break
            between.append(op)
        return hoisted

    def reduced(self, target: str) -> str:
        return target

    def _read_combined(self, reduces: list[Reduce]) -> Block:
        """Unsharded, the reductions as they are; under sharding (FSDP2), the reduce-only
        loop's combined results (reductions it does not batch: their own collective)."""
        batched = [r for r in reduces if r.target in self.batched]
        others = [r for r in reduces if r.target not in self.batched]
        sharded = [Line(f"{r.target} = {self.batched[r.target]}[i]") for r in batched]
        sharded += [self._Reduce(r) for r in others]
        if others:
            sharded.append(self._combine(others))
        return Block("if shard_groups is None:", [self._Reduce(r) for r in reduces], sharded)

    def _combine(self, pending: list[Reduce]) -> Block:
        """Under sharding (FSDP2), the reductions of this tensor's local shard made those of
        the whole tensor: one collective per kind of reduction, for this tensor alone."""
        kinds: dict[str, list[str]] = {}
        for r in pending:
            kinds.setdefault(_KIND[r.fn], []).append(f"[{r.target}]")
        args = ", ".join(f"{kind}=[{', '.join(columns)}]" for kind, columns in kinds.items())
        return Block("if shard_groups is not None:", [Line(f"_all_reduce_partials([shard_groups[i]], {args})")])

    def _HostAssign(self, op: HostAssign):
        line = Line(f"{op.name} = {self.host(op.expr)}")
        if not (self.compiled_forms and self.is_traced(op.expr)):
            return line
        self.traced.add(op.name)
        if not op.expr.has(sympy.Piecewise):
            return line
        compiled = Line(f"{op.name} = {self.compiled_host_printer.doprint(op.expr)}")
        return Block("if torch.compiler.is_compiling():", [compiled], [line])

    def _New(self, op: New) -> Line:
        return Line(f"{op.target} = {self._new(op)}")

    def _InPlace(self, op: InPlace) -> Line:
        if _chainable(op):
            return Line(op.target + self._method(op))
        return Line(f"torch.{op.fn}({op.target}, {self.arg(op.args[0])}, out={op.target})")

    def _Alias(self, op: Alias) -> Line:
        return Line(f"{op.target} = {op.source}")

    def _Eval(self, op: Eval) -> Line:
        return Line(f"{op.target} = {self.tensor(op.expr)}")

    def _Reduce(self, op: Reduce) -> Line:
        return Line(f"{op.target} = {_reduce(op.fn, op.source.name)}")

    def _Fill(self, op: Fill) -> Line:
        return Line(f"{op.target}.fill_({self.host(op.expr)})")

    def _If(self, op: If) -> Block:
        defined = set(self.defined)
        block = Block(f"if {self.host(op.cond)}:", *self._sides(op))
        # a branch nested in it stays a Python `if` (a graph break under torch.compile)
        nested = any(isinstance(o, If) for o in op.body + op.orelse)
        if nested or not (self.compiled_forms and self.is_traced(op.cond)):
            return block
        self.defined = defined
        return Block("if torch.compiler.is_compiling():", self._select(op), [block])

    def _select(self, op: If) -> list:
        """A branch on a tensor condition, for torch.compile: each side runs on copies of the
        tensors it updates in place (and under its own names for what it makes), and
        torch.where picks each result."""
        cond = self.compiled_host_printer.doprint(op.cond)
        lines = [Line("# the condition is a tensor: both sides run, torch.where picks")]
        defined_before = set(self.defined)
        sides = []
        for tag, ops in (("then", op.body), ("else", op.orelse)):
            renamed: dict[str, str] = {}
            updated: set[str] = set()
            for o in ops:
                lines += self._side_op(o, tag, renamed, updated)
            sides.append((renamed, updated))
        (then_names, then_updated), (else_names, else_updated) = sides
        for name in dict.fromkeys([*then_names, *else_names]):
            picked = f"torch.where({cond}, {then_names.get(name, name)}, {else_names.get(name, name)})"
            if name in then_updated | else_updated:
                lines.append(Line(f"{name}.copy_({picked})"))
            elif name in defined_before or (name in then_names and name in else_names):
                lines.append(Line(f"{name} = {picked}"))
        self.defined = defined_before | set(then_names) & set(else_names)
        return lines

    def _side_op(self, op, tag: str, renamed: dict, updated: set) -> list:
        """One op of a side of _select, on that side's names."""
        lines = []
        self.texts.rename = renamed
        try:
            args = tuple(
                T(renamed.get(a.name, a.name), a.per_tensor) if isinstance(a, T) else a for a in getattr(op, "args", ())
            )
            if isinstance(op, (InPlace, Fill)) and op.target not in renamed:
                renamed[op.target] = f"{op.target}_{tag}"
                updated.add(op.target)
                lines.append(Line(f"{renamed[op.target]} = {op.target}.clone()"))
            target = renamed.get(op.target, op.target) if isinstance(op, (InPlace, Fill)) else f"{op.target}_{tag}"
            fields = {"target": target} | ({"args": args} if hasattr(op, "args") else {})
            if isinstance(op, Alias):
                fields["source"] = renamed.get(op.source, op.source)
            if isinstance(op, Reduce):
                fields["source"] = T(renamed.get(op.source.name, op.source.name), op.source.per_tensor)
            lines += self.statements([replace(op, **fields)])
        finally:
            self.texts.rename = {}
        if not isinstance(op, (InPlace, Fill)):
            renamed[op.target] = target
        return lines

    def _sides(self, op: If) -> tuple[list, list]:
        """The statements of each side of `op`; on a condition on ndim(param), each printed
        knowing the ranks the tensor has there (rows(param) is then its size, or 1)."""
        known = self.texts.ranks
        if not op.per_tensor:
            return self.statements(op.body), self.statements(op.orelse)
        try:
            guard = guard_of(op.cond)
        except ValueError:  # the condition reads more than ndim(param)
            return self.statements(op.body), self.statements(op.orelse)
        known = ALL_RANKS if known is None else known
        return self._knowing(known & guard, op.body), self._knowing(known - guard, op.orelse)

    def _knowing(self, ranks: frozenset, ops: list) -> list:
        outer = self.texts.ranks
        self._set_ranks(ranks)
        try:
            return self.statements(ops)
        finally:
            self._set_ranks(outer)

    def _set_ranks(self, ranks: frozenset | None) -> None:
        self.texts.ranks = ranks

    def _checked(self) -> bool:
        """Whether the tensor is known to be 2-D here (its matrix blocks need no check)."""
        return self.texts.ranks is not None and self.texts.ranks <= MATRIX_RANKS

    def _MatrixOp(self, op: MatrixOp) -> list:
        def text(name: str) -> str:
            if name in op.locals:
                return op.locals[name]
            if name in op.tensors:
                return op.tensors[name]
            return self.texts.host(name)

        printer = MatrixPrinter(text, _scalar_in(op), text, batched=False)
        return single_lines(op, printer, self.host, self._checked())

    def _new(self, op: New) -> str:
        a = op.args
        if op.fn in ("maximum", "minimum"):
            return f"torch.{op.fn}({self.arg(a[0])}, {self.arg(a[1])})"
        if op.fn == "full_like":
            if a[1].expr == 0:
                return f"torch.zeros_like({self.arg(a[0])})"
            return f"torch.full_like({self.arg(a[0])}, {self.arg(a[1])})"
        first = a[0].name
        return first + self._call(op.fn, a[1:], op.kw, in_place=False)

    def _method(self, op: InPlace) -> str:
        return self._call(op.fn, op.args, op.kw, in_place=True)

    def _call(self, fn: str, args: tuple, kw: dict, in_place: bool) -> str:
        suffix = "_" if in_place else ""
        alpha = kw.get("alpha")
        if fn == "add" and alpha is not None and alpha.expr == -1:
            return f".sub{suffix}({self.arg(args[0])})"
        # a number only: an alpha that may be a tensor (a tensor lr, a host value under
        # torch.compile) stays add_(x, alpha=-lr), as torch.optim writes it, since dynamo
        # reads a float32 tensor alpha of sub with a host sync (torch 2.13)
        if fn == "add" and alpha is not None and _negative(alpha.expr) and alpha.expr.is_Number:
            return f".sub{suffix}({self.arg(args[0])}, alpha={self.host(-alpha.expr)})"
        if fn == "clamp":
            return f".clamp{suffix}({', '.join(f'{k}={self.arg(v)}' for k, v in kw.items())})"
        if fn == "fill":
            return f".fill_({self.arg(args[0])})"
        if fn == "copy":
            return f".copy_({self.arg(args[0])})"
        return f".{fn}{suffix}({', '.join(self.arg(x) for x in args)}{self.kwargs(kw)})"


def _scalar_in(op: MatrixOp):
    tensors = set(op.locals) | set(op.tensors)
    return lambda expr: not any(s.name in tensors for s in expr.free_symbols)


def _chainable(op: InPlace) -> bool:
    return op.fn not in ("maximum", "minimum")


def _negative(expr) -> bool:
    """-2 reads better as sub_(x, alpha=2); 1 - dampening stays as it is."""
    return not isinstance(expr, sympy.Add) and expr.as_coeff_Mul()[0] < 0


def _reduce(fn: str, source: str) -> str:
    if fn == "norm":
        return f"torch.linalg.vector_norm({source})"
    if fn in ("min", "max"):  # the identity for an empty shard, where amin() raises
        return f"_a{fn}({source})"
    return f"{source}.sum()"


class ReducePassPrinter(SinglePrinter):
    """The reduce-only loop: each reduction's local partial appended to its list."""

    compiled_forms = False  # it runs under sharding only, never traced by torch.compile

    def statements(self, ops: list) -> list:
        out: list = []
        for op in ops:
            made = getattr(self, f"_{type(op).__name__}")(op)
            out.extend(made if isinstance(made, list) else [made])
        return out

    def _If(self, op: If) -> Block:
        return Block(f"if {self.host(op.cond)}:", self.statements(op.body), self.statements(op.orelse))

    def _Reduce(self, op: Reduce) -> Line:
        return Line(f"{op.target}.append({_reduce(op.fn, op.source.name)})")


# the keyword of _all_reduce_partials for each kind of reduction
_KIND = {"sum": "sums", "norm": "norms", "min": "mins", "max": "maxs"}


class ForeachPrinter(SinglePrinter):
    """The same schedule over lists: `torch._foreach_*`, per-tensor floats as lists."""

    compiled_forms = False  # torch.compile traces the for-loop implementation instead

    def __init__(self, p: Prepared, sched: Schedule, combined: dict[str, int] | None = None):
        super().__init__(p, sched)
        self.display = sched.display
        self.combined = combined or {}  # reductions a split group combined: name -> column
        self.first_texts = _FirstTexts(p, sched)
        self.first_printer = host_printer(self.first_texts.host)

    # ------------------------------------------------------------------ operands
    def arg(self, a) -> str:
        if isinstance(a, T):
            return plural(a.name) if a.per_tensor else a.name
        if not self.p.per_tensor(a.expr):
            return self.host(a.expr)
        if a.expr.is_Symbol:
            return self.list_of(a.expr.name)
        return self.comprehension(self.host(a.expr), a.expr)

    def list_of(self, ir: str) -> str:
        if ir == STEP:
            return "steps"
        if ir == NUMEL:
            return "numels"
        if ir == NDIM or ir in SIZE_RANKS:
            return f"[{self.texts.name(ir)} for param in params]"
        return plural(self.display[ir])

    def loop_vars(self, expr) -> list[tuple[str, str]]:
        pairs: list[tuple[str, str]] = []
        for s in sorted(expr.free_symbols, key=lambda s: s.name):
            if self.p.kinds.get(s.name, "uniform") not in PER_TENSOR:
                continue
            if s.name == NUMEL:
                pair = ("numel", "numels")
            elif s.name == NDIM or s.name in SIZE_RANKS:
                pair = ("param", "params")
            elif s.name == STEP:
                pair = ("step", "steps")
            else:
                pair = (self.display[s.name], plural(self.display[s.name]))
            if pair not in pairs:
                pairs.append(pair)
        return pairs

    def comprehension(self, body: str, expr, extra: list[tuple[str, str]] = ()) -> str:
        pairs = list(extra) + [p for p in self.loop_vars(expr) if p not in extra]
        names, lists = ", ".join(v for v, _ in pairs), ", ".join(l for _, l in pairs)
        if len(pairs) == 1:
            return f"[{body} for {names} in {lists}]"
        return f"[{body} for {names} in zip({lists})]"

    def first(self, expr) -> str:
        """A per-tensor condition, read from the first tensor (a batch agrees on it)."""
        return self.first_printer.doprint(expr)

    # ------------------------------------------------------------------ ops
    def statements(self, ops: list) -> list:
        out: list = []
        pending: list[Reduce] = []  # reductions not yet combined across shards
        ops = matrix_runs(list(ops))
        for k, op in enumerate(ops):
            if pending and self._reads(op, pending):
                hoisted = self._hoistable(ops, k)
                out += [self._Reduce(r) for r in hoisted]
                out.append(self._combine(pending + hoisted))
                pending = []
            if op is None:  # hoisted
                continue
            if isinstance(op, Reduce) and op.target in self.combined:
                out.append(self._read_combined([op] + self._hoistable(ops, k + 1)))
                continue
            lines = getattr(self, f"_{type(op).__name__}")(op)
            out.extend(lines if isinstance(lines, list) else [lines])
            if isinstance(op, Reduce) and self.shardable:
                pending.append(op)
        if pending:
            out.append(self._combine(pending))
        return out

    def reduced(self, target: str) -> str:
        return plural(target)

    def _MatrixRun(self, run: MatrixRun) -> list:
        """Per group of same-shaped tensors; a per-tensor host value a block reads splits
        the groups too (a group reads it from its first tensor)."""
        keys = list(
            dict.fromkeys(
                self.list_of(s.name)
                for op in run.ops
                for s in op.block.operands
                if self.p.kinds.get(s.name, "uniform") in ("host", "scalar") and s.name not in (ROWS, COLS)
            )
        )
        printers, made, stacks = [], {}, {}
        for op in run.ops:
            for ir in op.tensors:  # an operand two blocks read is stacked once, by the first
                op.stacked[ir] = stacks.setdefault(ir, op.stacked[ir])
            printers.append(self._matrix_printer(op, dict(made)))
            made[op.ir] = op.locals[op.block.result]
        order = [v.name for v in self.p.values]
        end = order.index(run.ops[-1].ir)
        kept = {op.ir for op in run.ops if self.p.last_use.get(op.ir, end + 1) > end}  # read after the run
        return batched_lines(run.ops, printers, printers[0].host, keys, kept, self._checked())

    def _matrix_printer(self, op: MatrixOp, made: dict) -> MatrixPrinter:
        def text(name: str) -> str:
            if name in op.locals:
                return op.locals[name]
            if name in made:  # an earlier block of the run made it, stacked
                return made[name]
            if name in op.tensors:
                return op.stacked[name]
            if name in (ROWS, COLS):
                return shape_text(name, batched=True)
            if self.p.kinds.get(name, "uniform") in ("host", "scalar"):
                return f"{self.list_of(name)}[idx[0]]"
            return self.texts.host(name)

        return MatrixPrinter(text, _scalar_in(op), text, batched=True)

    def _read_combined(self, reduces: list[Reduce]) -> Block:
        """A batch of a split group reads the reductions the group combined (`combined`);
        otherwise it reduces its tensors, combined across shards if sharded."""
        given = [r for r in reduces if r.target in self.combined]
        others = [r for r in reduces if r.target not in self.combined]
        read = [Line(f"{plural(r.target)} = [values[{self.combined[r.target]}] for values in combined]") for r in given]
        read += [self._Reduce(r) for r in others]
        if others:
            read.append(self._combine(others))
        return Block("if combined is None:", [*(self._Reduce(r) for r in reduces), self._combine(reduces)], read)

    def _combine(self, pending: list[Reduce]) -> Block:
        """Under sharding (FSDP2), the reductions of the local shards made those of the whole
        tensors: one collective per kind of reduction for the whole batch."""
        kinds: dict[str, list[str]] = {}
        for r in pending:
            kinds.setdefault(_KIND[r.fn], []).append(plural(r.target))
        args = ", ".join(f"{kind}=[{', '.join(columns)}]" for kind, columns in kinds.items())
        return Block("if shard_groups is not None:", [Line(f"_all_reduce_partials(shard_groups, {args})")])

    def _HostAssign(self, op: HostAssign) -> Line:
        if op.per_tensor:
            return Line(f"{plural(op.name)} = {self.comprehension(self.host(op.expr), op.expr)}")
        return Line(f"{op.name} = {self.host(op.expr)}")

    def _New(self, op: New) -> list:
        return self._new_lines(op)

    def _InPlace(self, op: InPlace) -> list:
        return self._in_place_lines(op)

    def _Alias(self, op: Alias) -> Line:
        return Line(f"{plural(op.target)} = {plural(op.source)}")

    def _Eval(self, op: Eval) -> Line:
        if self.p.per_tensor(op.expr):
            return Line(f"{plural(op.target)} = {self.comprehension(self.tensor(op.expr), op.expr)}")
        return Line(f"{op.target} = {self.tensor(op.expr)}")

    def _Reduce(self, op: Reduce) -> Line:
        return Line(f"{plural(op.target)} = {self._reduce(op)}")

    def _Fill(self, op: Fill) -> Block:
        return self._fill(op.target, S(op.expr))

    def _If(self, op: If) -> Block:
        cond = self.first(op.cond) if op.per_tensor else self.host(op.cond)
        return Block(f"if {cond}:", *self._sides(op))

    def _set_ranks(self, ranks: frozenset | None) -> None:
        self.texts.ranks = self.first_texts.ranks = ranks

    def _reduce(self, op: Reduce) -> str:
        xs = plural(op.source.name)
        if op.fn == "norm":
            return f"torch._foreach_norm({xs})"
        if op.fn in ("min", "max"):  # the identity for an empty shard, where amin() raises
            return f"[_a{op.fn}(x) for x in {xs}]"
        return f"[x.sum() for x in {xs}]"

    def _fill(self, target: str, value: S) -> Block:
        ts = plural(target)
        if self.p.per_tensor(value.expr):
            return Block(f"for {target}, value in zip({ts}, {self.arg(value)}):", [Line(f"{target}.fill_(value)")])
        return Block(f"for {target} in {ts}:", [Line(f"{target}.fill_({self.arg(value)})")])

    def _foreach_call(self, fn: str, args: list[str], kw: dict, in_place: bool) -> str:
        suffix = "_" if in_place else ""
        alpha = kw.get("alpha")
        if fn == "add" and alpha is not None and alpha.expr == -1:
            return f"torch._foreach_sub{suffix}({', '.join(args)})"
        if fn == "square":
            return f"torch._foreach_mul{suffix}({args[0]}, {args[0]})"
        extra = ""
        for key, value in kw.items():
            if key == "value" and self.p.per_tensor(value.expr):
                extra += f", {self.arg(value)}"  # a list of scalars is positional
            else:
                extra += f", {key}={self.arg(value)}"
        return f"torch._foreach_{fn}{suffix}({', '.join(args)}{extra})"

    def _list_args(self, fn: str, args: tuple, first: int) -> list[str]:
        """Operands of a foreach call; `first` is the position of args[0] in the call. A 0-d
        tensor shared by the group (a global norm) is a valid second operand of mul/div/add/
        sub only: anywhere else it is repeated into a list, one per tensor."""
        out = []
        for i, a in enumerate(args, first):
            text = self.arg(a)
            if isinstance(a, T) and not a.per_tensor and not (i == 1 and fn in ("mul", "div", "add", "sub")):
                text = f"[{text}] * len(params)"
            out.append(text)
        return out

    def _new_lines(self, op: New) -> list:
        target = plural(op.target)
        args = self._list_args(op.fn, op.args, 0)
        if op.fn == "clone":
            return [Line(f"{target} = [x.clone() for x in {args[0]}]")]
        if op.fn == "clamp":
            (bound, value), *rest = op.kw.items()
            lines = [Line(f"{target} = torch._foreach_clamp_{bound}({args[0]}, {self.arg(value)})")]
            return lines + [Line(f"torch._foreach_clamp_{k}_({target}, {self.arg(v)})") for k, v in rest]
        if op.fn == "full_like":
            value = op.args[1]
            body = "torch.zeros_like(param)" if value.expr == 0 else f"torch.full_like(param, {self.host(value.expr)})"
            return [Line(f"{target} = {self.comprehension(body, value.expr, [('param', 'params')])}")]
        return [Line(f"{target} = {self._foreach_call(op.fn, args, op.kw, in_place=False)}")]

    def _in_place_lines(self, op: InPlace) -> list:
        target = plural(op.target)
        args = [target] + self._list_args(op.fn, op.args, 1)
        if op.fn == "copy":
            return [Line(f"torch._foreach_copy_({args[0]}, {args[1]})")]
        if op.fn == "fill":
            return [self._fill(op.target, op.args[0])]
        if op.fn == "clamp":
            return [Line(f"torch._foreach_clamp_{k}_({target}, {self.arg(v)})") for k, v in op.kw.items()]
        return [Line(self._foreach_call(op.fn, args, op.kw, in_place=True))]


class _FirstTexts(_Texts):
    def __init__(self, p: Prepared, sched: Schedule):
        super().__init__(p, sched)

    def host(self, ir: str) -> str:
        if ir in SIZE_RANKS:
            return size_text("params[0]", SIZE_RANKS[ir], self.ranks)
        if ir in (NUMEL, NDIM):
            return "numels[0]" if ir == NUMEL else "params[0].ndim"
        if ir == STEP:
            return "steps[0]"
        if self.p.kinds.get(ir, "uniform") in PER_TENSOR:
            text = f"{plural(self.display[ir])}[0]"
            return f"{text}.item()" if self.p.var_of.get(ir, ir) in self.p.scalar_states else text
        return self.display.get(ir, ir)


def size_text(param: str, rank: int, ranks: frozenset | None) -> str:
    """rows(param) (rank 2) or cols(param) (rank 1): the size along that dim, 1 on a tensor
    without it; the test of ndim only where the tensor's rank is not known."""
    if ranks and min(ranks) >= rank:
        return f"{param}.size({-rank})"
    if ranks and max(ranks) < rank:
        return "1"
    return f"({param}.size({-rank}) if {param}.ndim >= {rank} else 1)"


# --------------------------------------------------------------------------- function bodies
def single_body(p: Prepared, sched: Schedule, passes: list[ReducePass] = (), index: str = "i") -> list:
    """`i` is reserved: no value of the spec takes that name. `passes`: the reduce-only
    loops that run first under sharding, one per phase."""
    printer = SinglePrinter(p, sched, {name: lst for one in passes for name, lst in one.lists.items()})
    loop = [Line(f"grad = grads[{index}] if not maximize else -grads[{index}]")]
    for name in p.program.input_names:
        loop.append(Line(f"{name} = {plural(name)}[{index}]"))
    for s in p.program.states:
        loop.append(Line(f"{s.name} = {plural(s.name)}[{index}]"))
    loop += [Line(f"step_t = state_steps[{index}]"), Line("step_t += 1")]
    if any(s.name == NUMEL for v in p.program.values for s in v.expr.free_symbols):
        loop.append(Line(f"numel = numels[{index}]"))
    if sched.uses_step and p.kinds.get(STEP) != "uniform":
        loop.append(Line("step = _get_value(step_t, param)"))
    loop += printer.statements(sched.per_tensor_host) + printer.statements(sched.work)
    group = printer.statements(sched.group)
    if p.kinds.get(STEP) == "uniform" and sched.uses_step:  # `step: per_group` with group states
        group = [Line("step = _get_value(state_steps[0], params[0]) + 1  # the group's count"), *group]
    if group:  # the group's values may read a cross-parameter value that no tensor needed
        group = [Block("if not params:", [Line("return")]), *group]
    reduce_first = [Line("# the local partials of every tensor's reductions before any update")]
    for one in passes:
        reduce_first += _reduce_pass(p, one, index)
    if passes:
        group.append(Block("if shard_groups is not None:", reduce_first))
    checks = _checks_up_front(sched, printer.host)
    return checks + group + [Block(f"for {index}, param in enumerate(params):", loop)]


def _checks_up_front(sched: Schedule, host) -> list:
    """What a matrix spec checks before any tensor is updated: every parameter 2-D when a
    block runs on every tensor (torch.optim.Muon checks in _init_group), and each loop count
    read from the group an integer in range."""
    lines = []
    if sched.ranks == MATRIX_RANKS:
        lines.append(Block("for param in params:", [ndim_check("param")]))
    counts = dict.fromkeys(op.block.count for op in _matrix_ops(sched.work) if op.block.count is not None)
    for count in counts:
        lines += count_check(count, host)
    return lines


def _matrix_ops(ops: list):
    for op in ops:
        if isinstance(op, If):
            yield from _matrix_ops(op.body + op.orelse)
        elif isinstance(op, MatrixOp):
            yield op


def _reduce_pass(p: Prepared, pre: ReducePass, index: str) -> list:
    """Under sharding: every tensor's reductions of one phase of local shards, from
    unchanged memory, then one collective per kind of reduction for the whole group."""
    printer = ReducePassPrinter(pre.prepared, pre.schedule)
    body = printer.statements(pre.schedule.per_tensor_host) + printer.statements(pre.schedule.work)
    text = render(body, 0)
    inputs = ["grad", "numel", "step"] + p.program.input_names + [s.name for s in p.program.states]
    reads = {name for name in inputs if re.search(rf"\b{name}\b", text)}  # what the loop loads
    loop = [Line(f"grad = grads[{index}] if not maximize else -grads[{index}]")] if "grad" in reads else []
    arrays = p.program.input_names + [s.name for s in p.program.states]
    loop += [Line(f"{name} = {plural(name)}[{index}]") for name in arrays if name in reads]
    if "numel" in reads:
        loop.append(Line(f"numel = numels[{index}]"))
    if "step" in reads:
        loop.append(Line(f"step = state_steps[{index}].item() + 1"))
    loop += [Line(f"{name} = {lst}[{index}]") for name, lst in pre.reads.items()]  # earlier phases
    lists = list(pre.lists.values())
    kinds: dict[str, list[str]] = {}
    for name in lists:
        kinds.setdefault(_KIND[pre.kinds[name]], []).append(name)
    args = ", ".join(f"{kind}=[{', '.join(columns)}]" for kind, columns in kinds.items())
    return [
        Line(f"{', '.join(lists)} = {', '.join('[]' for _ in lists)}"),
        Block(f"for {index}, param in enumerate(params):", loop + body),
        Line(f"_all_reduce_partials(shard_groups, {args})"),
    ]


def multi_body(
    p: Prepared, sched: Schedule, recurse: str, lists: list[str], extra: list[str] = (), passes: list[ReducePass] = ()
) -> list:
    """`recurse` is the call that runs one batch: `_multi_tensor_adam(*batch, lr=lr, ...)`;
    `extra` the per-tensor lists it takes as keywords (numels, shard_groups, combined).
    With `combined` and branch conditions, `passes` (the for-loop's reduce-only loops)
    combine the group's reductions before it is split into batches."""
    precombine = "combined" in extra and bool(sched.branch_conditions and passes)
    columns = [name for one in passes for name in one.lists] if precombine else []
    printer = ForeachPrinter(p, sched, {name: i for i, name in enumerate(columns)})
    host: list = []
    if sched.uses_step and p.kinds.get(STEP) == "uniform":  # `step: per_group` with group states
        host.append(Line("step = state_steps[0].item() + 1  # the group's count"))
    elif sched.uses_step:
        host.append(Line("steps = [step_t.item() + 1 for step_t in state_steps]"))
    host += printer.statements(sched.group) + printer.statements(sched.per_tensor_host)
    conds = sched.branch_conditions
    key_parts = ["param.device", "param.dtype", "chunk"] + [printer.host(c) for c in conds]
    key_expr = sympy.Tuple(*conds) if conds else sympy.Tuple()
    sharded = "shard_groups is not None" if "shard_groups" in extra else ""
    pairs = [("param", "params"), ("chunk", f"_cpu_chunks(params{', ' + sharded if sharded else ''})")]
    keys = printer.comprehension(f"({', '.join(key_parts)})", key_expr, pairs)
    why = ", dtype, CPU chunk and side of each host-side branch" if conds else ", dtype and CPU chunk"
    combine_first: list = []
    if precombine:
        reduce_first = [Line("# combined once for the group: one collective per kind, not one per batch")]
        for one in passes:
            reduce_first += _reduce_pass(p, one, "i")
        made = ", ".join(one.lists[name] for one in passes for name in one.lists)
        reduce_first.append(Line(f"combined = list(zip({made}))"))
        combine_first = [Block("if shard_groups is not None:", reduce_first)]
    split = [
        Line(f"# one foreach call per device{why}"),
        Line(f"keys = {keys}"),
        Block(
            "if len(set(keys)) > 1:",
            combine_first
            + [
                Block(
                    f"for {', '.join(['*batch' if extra else 'batch'] + [f'batch_{k}' for k in extra])} "
                    f"in _batches(keys, {', '.join(lists + list(extra))}):",
                    [Line(f"new_values = {recurse}" if p.program.group_states else recurse)],
                ),
                # every batch computes the group states' new values from the same host values
                # and global sums (they read nothing per tensor): the last batch's are the group's
                Line("return new_values" if p.program.group_states else "return"),
            ],
        ),
    ]
    # host values are computed once, in the call that runs the batch (the split needs them
    # only when a host-side branch separates tensors)
    body: list = [Block("if not params:", [Line("return")]), *_checks_up_front(sched, printer.host)]
    if elementwise(p.program):
        # each element's update reads only its own elements: a large tensor is updated as
        # views, before anything is computed per tensor
        body += [
            Line("# a CPU tensor larger than a chunk: updated as chunk-sized views"),
            Block(
                "if _has_large_cpu_tensor(params):", [Line(f"{', '.join(lists)} = _split_large({', '.join(lists)})")]
            ),
        ]
    body += host + split if conds else split + host
    body.append(Line("torch._foreach_add_(state_steps, 1)"))
    body.append(Block("if maximize:", [Line("grads = torch._foreach_neg(grads)")]))
    return body + printer.statements(sched.work)


def whole_tensors_only(program) -> bool:
    """Whether each tensor's update needs the whole tensor (axis reductions, matrix blocks):
    the class refuses sharded tensors for such a spec."""
    return program.has_axes or any(v.matrix is not None for v in program.values)


def elementwise(program) -> bool:
    """Whether each element's update reads only its own elements and host scalars (no
    per-tensor reduction, per-tensor state, numel or ndim): then a tensor may be updated as
    several views of it."""
    if program.reductions("tensor") or any(st.scope == "tensor" for st in program.states) or program.has_axes:
        return False
    if any(v.matrix is not None for v in program.values):
        return False  # a matrix block reads the whole tensor
    return not any(s.name in (NUMEL, NDIM, ROWS, COLS) for v in program.values for s in v.expr.free_symbols)
