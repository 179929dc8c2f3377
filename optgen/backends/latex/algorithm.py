"""The update of a spec as LaTeX lines: the algorithm box (torch.optim documentation style,
`x <- ...` with options as conditionals) and the equations (`x_t = ...`, options at their
defaults). The docstrings, the per-spec files and the formula sheet all come from here."""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from ...expr import COLS, GRAD, NDIM, NUMEL, PARAM, ROWS, STEP
from ...spec import Assign, If, Repeat, Spec, TensorIf, holds
from . import config
from .loops import LoopNames, carried, inlined
from .printer import ALL_PARAMS, OptgenLatexPrinter, decimal
from .symbols import GRAD_TEX, PARAM_TEX, STEP_TEX, default_tex, escape_name, with_index

PREVIOUS, CURRENT = f"{STEP_TEX}-1", STEP_TEX


def option_tex(name: str) -> str:
    return rf"\textit{{{escape_name(name)}}}"


def condition_tex(cond) -> str:
    if isinstance(cond, sympy.Basic):  # a per-tensor rule on ndim(param) (optgen/shapes.py)
        return rank_condition_tex(cond)
    if isinstance(cond, str):
        return option_tex(cond)
    op, arg = cond
    if op == "not":
        return r"\textbf{not}\ " + condition_tex(arg)
    parts = [condition_tex(c) if isinstance(c, str) or c[0] == "not" else rf"({condition_tex(c)})" for c in arg]
    return rf"\ \textbf{{{op}}}\ ".join(parts)


def rank_condition_tex(cond) -> str:
    """`if ndim(param) >= 2:` as \\dim(\theta) \\geq 2."""
    return OptgenLatexPrinter({NDIM: rf"\dim({PARAM_TEX})"}, set()).doprint(cond)


def symbol_tex(spec: Spec, name: str) -> str:
    """The spec's LaTeX for a hyperparameter, state or local value (validated when the spec
    was parsed: optgen/texcheck.py), or the default symbol for its name."""
    return spec.tex_symbols.get(name) or default_tex(name)


@dataclass
class Namer:
    """Symbol name -> LaTeX as the update is read statement by statement.

    box mode (`x <- ...`): a state reads x_{t-1} until it is assigned, x_t after.
    equation mode (`x = ...`): every assignment is a new value; all but the last of a state
    or the parameter, and every reassignment of a local or the gradient, get a prime."""

    spec: Spec
    equations: bool = False
    last_writes: dict[str, int] = field(default_factory=dict)  # equation mode: writes per name
    writes: dict[str, int] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    tensors: set[str] = field(default_factory=set)
    loops: LoopNames | None = None
    definitions: list[Definition] = field(default_factory=list)  # shared by copies: one per loop

    def __post_init__(self):
        self.loops = self.loops or LoopNames.of(self.spec)
        spec = self.spec
        for name in spec.scalar_hypers:
            self.names[name] = symbol_tex(spec, name)
        snapshots = set(spec.state) - _written(spec.update, set(spec.state), definitely=False)
        for name in spec.state:
            # a state the update never assigns keeps its initial value: x_0 at every step
            self.names[name] = with_index(symbol_tex(spec, name), "0" if name in snapshots else PREVIOUS)
        self.names.update(
            {
                PARAM: with_index(PARAM_TEX, PREVIOUS),
                GRAD: with_index(GRAD_TEX, CURRENT),
                STEP: STEP_TEX,
                NUMEL: rf"\operatorname{{numel}}({PARAM_TEX})",
                NDIM: rf"\operatorname{{ndim}}({PARAM_TEX})",
                ROWS: rf"\operatorname{{rows}}({PARAM_TEX})",
                COLS: rf"\operatorname{{cols}}({PARAM_TEX})",
            }
        )
        # an input of step() is given anew at every step, as the gradient is: h_t
        self.names.update({name: with_index(symbol_tex(spec, name), CURRENT) for name in spec.inputs})
        self.tensors = set(spec.state) | set(spec.inputs) | {PARAM, GRAD}

    def copy(self) -> Namer:
        other = Namer(self.spec, self.equations, self.last_writes, loops=self.loops, definitions=self.definitions)
        other.writes, other.names, other.tensors = dict(self.writes), dict(self.names), set(self.tensors)
        return other

    def merge(self, *branches: Namer) -> None:
        """After an if/else: a name assigned in any branch reads as assigned."""
        for branch in branches:
            for name, count in branch.writes.items():
                if count > self.writes.get(name, 0):
                    self.writes[name] = count
                    self.names[name] = branch.names[name]
            self.tensors |= branch.tensors

    def printer(self, first: str | None = None) -> OptgenLatexPrinter:
        return OptgenLatexPrinter(self.names, self.tensors, first)

    def expr(self, expr: sympy.Expr, first: str | None = None) -> str:
        return self.printer(first).doprint(expr)

    def write(self, name: str, expr: sympy.Expr) -> str:
        """Record an assignment to `name`; its LaTeX as a target."""
        count = self.writes.get(name, 0) + 1
        self.writes[name] = count
        if any(s.name in self.tensors for s in expr.free_symbols):
            self.tensors.add(name)
        self.names[name] = self._target(name, count)
        return self.names[name]

    def _target(self, name: str, count: int) -> str:
        stateful = name == PARAM or name in self.spec.state
        base = PARAM_TEX if name == PARAM else GRAD_TEX if name == GRAD else symbol_tex(self.spec, name)
        tex = with_index(base, CURRENT) if stateful or name == GRAD else base
        if not self.equations:
            return tex
        primes = self.last_writes.get(name, count) - count if stateful else count - (name != GRAD)
        return f"{{{tex}}}" + "'" * primes if primes else tex


@dataclass
class Row:
    """One line of the update: an assignment, or an `if`/`else if`/`else` head."""

    depth: int
    head: str | None = None  # "if", "else if", "else"
    cond: str = ""
    target: str = ""
    value: str = ""


def _written(statements: list, stateful: set[str], definitely: bool) -> set[str]:
    out: set[str] = set()
    for stmt in statements:
        if isinstance(stmt, Assign):
            out |= {stmt.target} & stateful
        elif isinstance(stmt, Repeat):
            out |= set() if definitely else _written(stmt.body, stateful, definitely)
        elif isinstance(stmt, TensorIf):  # a state of some tensors only: written, never completed
            if not definitely:
                out |= _written(stmt.body, stateful, False) | _written(stmt.orelse, stateful, False)
        else:
            body, orelse = (_written(b, stateful, definitely) for b in (stmt.body, stmt.orelse))
            out |= (body & orelse) if definitely else (body | orelse)
    return out


def complete_branches(spec: Spec, statements: list) -> list:
    """The statements with `x <- x` copies added so that every branch of an `if` assigns the
    same states (and param): after the `if`, x_t then means one thing on every path."""
    stateful = {s.name for s in spec.state.values() if s.when is None} | {PARAM}

    def ensure(stmts: list, need: set[str]) -> list:
        missing = sorted(need - _written(stmts, stateful, definitely=True))
        return stmts + [Assign(n, spec.symbols[n], stmts[0].loc if stmts else None, None) for n in missing]

    def complete_if(stmt: If, required: set[str]) -> If:
        body, orelse = complete(stmt.body), complete(stmt.orelse)
        need = required | _written(body, stateful, False) | _written(orelse, stateful, False)
        if len(orelse) == 1 and isinstance(orelse[0], If):
            orelse = [complete_if(orelse[0], need)]
        else:
            orelse = ensure(orelse, need)
        return If(stmt.cond, ensure(body, need), orelse, stmt.loc)

    def complete(stmts: list) -> list:
        out = []
        for s in stmts:
            if isinstance(s, TensorIf):
                s = TensorIf(s.cond, complete(s.body), complete(s.orelse), s.loc)
            out.append(complete_if(s, set()) if isinstance(s, If) else s)
        return out

    return complete(statements)


def update_rows(spec: Spec, namer: Namer, statements: list, depth: int = 0) -> list[Row]:
    rows: list[Row] = []
    for stmt in statements:
        if isinstance(stmt, Assign):
            value = namer.expr(stmt.expr, first=stmt.target)
            rows.append(Row(depth, target=namer.write(stmt.target, stmt.expr), value=value))
        elif isinstance(stmt, Repeat):
            rows.append(loop_row(spec, namer, stmt, depth))
        else:
            rows += _if_rows(spec, namer, stmt, depth)
    return rows


@dataclass
class Definition:
    """A loop's function, defined once below the algorithm: `lhs` is NS_k(O), `rhs` what it
    does; `rows` the body when it cannot be one line (an `if` in it, a name assigned twice)."""

    lhs: str
    rhs: str
    rows: list[Row] = field(default_factory=list)


def loop_row(spec: Spec, namer: Namer, stmt: Repeat, depth: int) -> Row:
    """`O <- NS_k(O)` for the loop, its function defined (once) in `namer.definitions`."""
    var = carried(stmt.body, namer.names)
    count = namer.expr(stmt.count)
    function = namer.loops.function(stmt, count)
    namer.definitions.append(_definition(spec, namer, stmt, var, function, count))
    argument = namer.names[var]
    return Row(depth, target=namer.write(var, spec.symbols[var]), value=f"{function}({argument})")


def _definition(spec: Spec, namer: Namer, stmt: Repeat, var: str, function: str, count: str) -> Definition:
    """The loop's body read with the names outside it as they are at the loop, the carried
    value by its own symbol (the function's argument) and the temporaries by theirs."""
    inner = namer.copy()
    inner.equations, inner.definitions = False, []
    inner.names[var] = symbol_tex(spec, var)
    inner.tensors.add(var)
    lhs = f"{function}({inner.names[var]})"
    parts = inlined(stmt.body, var) if all(isinstance(s, Assign) for s in stmt.body) else None
    if parts is None:
        return Definition(lhs, rf"\text{{: }}{count}\text{{ times}}", update_rows(spec, inner, stmt.body, 1))
    clauses = []
    for name, expr in parts[0]:
        value = inner.expr(expr, first=name)
        clauses.append(f"{inner.write(name, expr)} = {value}")
    rhs = rf"\text{{: }}{count}\text{{ times }}{inner.names[var]} \leftarrow {inner.expr(parts[1], first=var)}"
    if clauses:
        rhs += r",\ \text{with }" + r",\ ".join(clauses)
    return Definition(lhs, rhs)


def _if_rows(spec: Spec, namer: Namer, stmt: If, depth: int, head: str = "if") -> list[Row]:
    body = namer.copy()
    rows = [Row(depth, head, condition_tex(stmt.cond))] + update_rows(spec, body, stmt.body, depth + 1)
    branches = [body]
    if len(stmt.orelse) == 1 and isinstance(stmt.orelse[0], If):
        other = namer.copy()
        rows += _if_rows(spec, other, stmt.orelse[0], depth, "else if")
        branches.append(other)
    elif stmt.orelse:
        other = namer.copy()
        rows += [Row(depth, "else")] + update_rows(spec, other, stmt.orelse, depth + 1)
        branches.append(other)
    namer.merge(*branches)
    return rows


def specialise(statements: list, options: dict[str, bool]) -> list[Assign | Repeat]:
    """The assignments and loops (their bodies specialised too) that run under `options`."""
    out: list[Assign | Repeat] = []
    for stmt in statements:
        if isinstance(stmt, Assign):
            out.append(stmt)
        elif isinstance(stmt, Repeat):
            out.append(Repeat(stmt.count, specialise(stmt.body, options), stmt.loc))
        elif isinstance(stmt, TensorIf):  # a per-tensor rule: both sides stay
            out.append(TensorIf(stmt.cond, specialise(stmt.body, options), specialise(stmt.orelse, options), stmt.loc))
        else:
            out += specialise(stmt.body if holds(stmt.cond, options) else stmt.orelse, options)
    return out


# --------------------------------------------------------------------------- inputs
def default_tex_value(spec: Spec, hyper) -> str:
    if hyper.captured:
        source = spec.scalar_hypers.get(hyper.captured)
        return (symbol_tex(spec, hyper.captured) if source else escape_name(hyper.captured)) + r"\text{ at creation}"
    values = [decimal(v) if v is not None else r"\epsilon_{\mathrm{dtype}}" for v in hyper.default]
    return values[0] if len(values) == 1 else "(" + ", ".join(values) + ")"


def hyper_symbol(spec: Spec, hyper) -> str:
    symbols = [symbol_tex(spec, n) for n in hyper.names]
    return symbols[0] if len(symbols) == 1 else "(" + ", ".join(symbols) + ")"


def input_items(spec: Spec) -> list[str]:
    items = [
        rf"{hyper_symbol(spec, h)} = {default_tex_value(spec, h)} \text{{ ({escape_name(h.key)})}}"
        for h in spec.hyperparameters.values()
    ]
    items += [
        rf"{with_index(symbol_tex(spec, name), CURRENT)} \text{{ ({escape_name(name)}, given to step)}}"
        for name in spec.inputs
    ]
    items.append(rf"{with_index(PARAM_TEX, '0')} \text{{ (params)}}, f(\theta) \text{{ (objective)}}")
    return items


def option_items(spec: Spec) -> list[str]:
    return [rf"{option_tex(o.name)} = \text{{{str(o.default).lower()}}}" for o in spec.options.values()]


def init_items(spec: Spec) -> list[str]:
    names = {n: symbol_tex(spec, n) for n in spec.scalar_hypers}
    names.update({PARAM: with_index(PARAM_TEX, "0"), GRAD: with_index(GRAD_TEX, "1")})
    names.update({name: with_index(symbol_tex(spec, name), "1") for name in spec.inputs})
    printer = OptgenLatexPrinter(names, {PARAM, GRAD, *spec.inputs})
    items = []
    for state in spec.state.values():
        item = rf"{with_index(symbol_tex(spec, state.name), '0')} \leftarrow {printer.doprint(state.init)}"
        if state.when is not None:
            item += rf" \text{{ (if }}{condition_tex(state.when)}\text{{)}}"
        items.append(item)
    return items


def gradient_tex(spec: Spec, namer: Namer) -> str:
    point = namer.expr(spec.gradient_at) if spec.gradient_at is not None else namer.names[PARAM]
    return rf"\nabla_{{\theta}} f_{{t}}\left({point}\right)"


def legend(spec: Spec) -> list[str]:
    """What the reduction notation means, for the reductions this spec uses."""
    from ...expr import GlobalSum, reductions_in

    used = set()
    for stmt in specialise_all(spec.update):
        used |= {type(r) for r in reductions_in(stmt.expr)}
    notes = []
    if used - {GlobalSum}:
        notes.append(
            r"\textstyle\sum_i,\ \min_i,\ \max_i,\ \lVert\cdot\rVert\text{: over the elements of one parameter tensor}"
        )
    if GlobalSum in used:
        notes.append(rf"{ALL_PARAMS}\text{{: every parameter tensor of the optimizer}}")
    return notes


def specialise_all(statements: list) -> list[Assign]:
    """Every assignment under any option."""
    out: list[Assign] = []
    for stmt in statements:
        out += (
            [stmt]
            if isinstance(stmt, Assign)
            else specialise_all(stmt.body) + specialise_all(getattr(stmt, "orelse", []))
        )
    return out


# --------------------------------------------------------------------------- the two forms
def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _labelled(label: str, items: list[str], per_line: int) -> list[str]:
    lines = []
    for i, chunk in enumerate(_chunks(items, per_line)):
        lead = rf"\textbf{{{label}}}: " if i == 0 else rf"\hspace{{{config.CONTINUATION}}}"
        lines.append(lead + ",\\ ".join(chunk) + ("," if i < (len(items) - 1) // per_line else ""))
    return lines


def _indent(depth: int) -> str:
    return rf"\hspace{{{config.INDENT_MM * (depth + 1)}mm}}"


def row_line(row: Row) -> str:
    if row.head == "else":
        return _indent(row.depth) + r"\textbf{else}"
    if row.head:
        return _indent(row.depth) + rf"\textbf{{{row.head}}}\ {row.cond}"
    return _indent(row.depth) + rf"{row.target} \leftarrow {row.value}"


def box_lines(spec: Spec) -> list[str]:
    """The lines of the algorithm box, each to be placed after `&` in an aligned environment."""
    rule = rf"\rule{{{config.RULE_WIDTH}}}{{0.4pt}}"
    namer = Namer(spec)
    lines = [rule]
    lines += _labelled("input", input_items(spec), config.ITEMS_PER_LINE)
    if spec.options:
        lines += _labelled("options", option_items(spec), config.ITEMS_PER_LINE)
    lines += _labelled("initialize", init_items(spec), config.ITEMS_PER_LINE)
    lines += [rule, r"\textbf{for}\ t = 1, 2, \ldots\ \textbf{do}"]
    lines.append(_indent(0) + rf"{namer.names[GRAD]} \leftarrow {gradient_tex(spec, namer)}")
    lines += [row_line(row) for row in update_rows(spec, namer, complete_branches(spec, spec.update))]
    lines += [rule, rf"\textbf{{return}}\ {with_index(PARAM_TEX, CURRENT)}"]
    if spec.modes is not None:
        lines += [rule, *mode_lines(spec)]
    for definition in namer.definitions:
        lines.append(rf"\textit{{where }} {definition.lhs}{definition.rhs}")
        lines += [row_line(row) for row in definition.rows]
    lines += [rf"\textit{{where }} {note}" for note in legend(spec)]
    lines.append(rule)
    return lines


def aligned(lines: list[str], indent: str = "    ", env: str = "aligned") -> str:
    """`lines` as an `aligned` environment (math mode; also Sphinx/MathJax) or an `align*`
    display (documents: it may break across pages)."""
    body = "".join(f"{indent}    &{line} \\\\\n" for line in lines)
    return f"{indent}\\begin{{{env}}}\n{body}{indent}\\end{{{env}}}"


def equation_rows(spec: Spec, options: dict[str, bool] | None = None) -> tuple[list[tuple[str, str]], list[Definition]]:
    """(lhs, rhs) pairs of the update specialised to `options` (default: the spec's defaults),
    and the definitions of its loops' functions."""
    options = spec.default_options() if options is None else options
    statements = specialise(spec.update, options)
    namer = Namer(spec, equations=True, last_writes=_write_counts(statements))
    rows = [(namer.names[GRAD], gradient_tex(spec, namer)), *_equations(spec, namer, statements, "")]
    return rows, namer.definitions


def _write_counts(statements: list) -> dict[str, int]:
    """How often each name is assigned (a loop assigns its carried value); the two sides of
    a per-tensor rule are alternatives."""
    counts: dict[str, int] = {}
    for i, stmt in enumerate(statements):
        if isinstance(stmt, TensorIf):
            sides = [_write_counts(stmt.body), _write_counts(stmt.orelse)]
            for name in set(sides[0]) | set(sides[1]):
                counts[name] = counts.get(name, 0) + max(side.get(name, 0) for side in sides)
            continue
        target = carried(stmt.body, _assigned_before(statements, i)) if isinstance(stmt, Repeat) else stmt.target
        counts[target] = counts.get(target, 0) + 1
    return counts


def _assigned_before(statements: list, index: int) -> set[str]:
    """The names assigned before statement `index` (a loop's carried value is one of them)."""
    return {s.target for s in statements[:index] if isinstance(s, Assign)}


def _equations(spec: Spec, namer: Namer, statements: list, when: str) -> list[tuple[str, str]]:
    """Each side of a per-tensor rule (`if ndim(param) >= 2:`) marked with the tensors it
    holds for, both read from the values before the rule; a loop as one application."""
    rows = []
    suffix = rf" \quad \text{{if }} {when}" if when else ""
    for stmt in statements:
        if isinstance(stmt, TensorIf):
            body, other = namer.copy(), namer.copy()
            rows += _equations(spec, body, stmt.body, rank_condition_tex(stmt.cond))
            rows += _equations(spec, other, stmt.orelse, rank_condition_tex(sympy.Not(stmt.cond)))
            namer.merge(body, other)
        elif isinstance(stmt, Repeat):
            row = loop_row(spec, namer, stmt, 0)
            rows.append((row.target, row.value + suffix))
        else:
            value = namer.expr(stmt.expr, first=stmt.target)
            rows.append((namer.write(stmt.target, stmt.expr), value + suffix))
    return rows


def align_env(spec: Spec, options: dict[str, bool] | None = None) -> str:
    """The equations; a loop's function is defined below them, after "where"."""
    rows, definitions = equation_rows(spec, options)
    body = " \\\\\n".join(f"  {lhs} &= {rhs}" for lhs, rhs in rows)
    lines = []
    for definition in definitions:
        lines.append(f"  {definition.lhs} &{definition.rhs}")
        lines += [f"  &{row_line(row)}" for row in definition.rows]
    if lines:  # \intertext follows the row's \\ and starts the next one
        body += " \\\\\n\\intertext{where}\n" + " \\\\\n".join(lines)
    return f"\\begin{{align*}}\n{body}\n\\end{{align*}}"


def mode_lines(spec: Spec) -> list[str]:
    """The eval() and train() maps of a spec with `modes:` (optgen/modes.py): the parameter
    of one mode from the other's and the current states."""
    names = {n: symbol_tex(spec, n) for n in spec.scalar_hypers}
    names.update({s: symbol_tex(spec, s) for s in spec.state})
    names[PARAM] = PARAM_TEX
    printer = OptgenLatexPrinter(names, {PARAM, *spec.state})
    lines = [
        rf"\textbf{{{mode}()}}:\ {PARAM_TEX} \leftarrow {printer.doprint(spec.modes.maps[mode].expr)}"
        for mode in ("eval", "train")
    ]
    start = spec.modes.start
    lines.append(rf"\text{{the update runs in train mode; a new optimizer starts in {start} mode}}")
    return lines
