"""Stage 2, check: well-formedness and static facts of a parsed spec.

Well-formedness (errors): every name defined before use, every state updated and read,
defaults inside their ranges, every option used, for every combination of options.
Static facts: which states are non-negative (by induction from their init and update),
and whether every denominator can be shown > 0 (a warning when it cannot).

Then every stage a build runs, so that what checks also builds: lowering of every option
combination, the torch module (for-loop and foreach, compiled to bytecode), the Triton
module (rendered and compiled, never launched) and the LaTeX document. A refusal there
(SpecError/CompileError) is a located finding; any other exception is a bug in optgen,
raised as InternalError naming the stage (the CLI prints it on one line and exits 3)."""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field

from .errors import Loc, SpecError
from .ir import Program
from .program_facts import nonneg_states
from .spec import If, Spec, condition_names


@dataclass
class Finding:
    loc: Loc | None
    message: str
    severity: str = "error"  # "error" | "warning"
    kind: str = "spec"  # "spec": the spec is refused (CLI exit 2); "claim": a claim's verdict differs (exit 1)

    def __str__(self) -> str:
        where = f"{self.loc}: " if self.loc else ""
        return f"{where}{self.severity}: {self.message}"


@dataclass
class Report:
    spec: Spec
    findings: list[Finding] = field(default_factory=list)
    nonneg: set[str] = field(default_factory=set)  # states proven >= 0 (all option settings)

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    @property
    def refused(self) -> bool:
        """Whether the spec itself is refused (an error that is not a claim's verdict)."""
        return any(f.severity == "error" and f.kind == "spec" for f in self.findings)

    def add(self, loc, message, severity="error", kind="spec") -> None:
        finding = Finding(loc, message, severity, kind)
        if all(str(f) != str(finding) for f in self.findings):
            self.findings.append(finding)


def check(spec: Spec) -> Report:
    from .lower import lower
    from .prover.facts import denominator_findings

    report = Report(spec)
    _check_defaults(spec, report)
    _check_options_used(spec, report)
    used_hypers: set[str] = set()
    programs = []
    for combo in spec.option_combinations():
        try:
            program = lower(spec, combo)
        except SpecError as exc:
            for error in getattr(exc, "errors", [exc]):  # SpecErrors: every line's error
                report.add(error.loc or spec.loc, error.message)
            continue
        except (KeyboardInterrupt, MemoryError, RecursionError):
            raise
        except Exception as exc:
            raise InternalError(f"lowering ({spec.name}, options: {_fmt(combo)})", exc) from exc
        programs.append(program)
        used_hypers |= _free_names(program)
        _check_states_read(program, report)
        for finding in denominator_findings(spec, program.options, program):
            report.add(finding.loc, finding.message, finding.severity)
    if spec.modes is not None:
        used_hypers |= set().union(*(m.hyper_names for m in spec.modes.maps.values()))
        problem = spec.modes.round_trip_problem()
        if problem is not None:
            report.add(spec.modes.maps["train"].loc, problem)
    for key, h in spec.hyperparameters.items():
        if programs and not any(n in used_hypers for n in h.names):
            report.add(h.loc, f"hyperparameter `{key}` is never used by the update", "warning")
    if programs:
        report.nonneg = set.intersection(*(nonneg_states(spec, p.options) for p in programs))
    if report.ok:
        _check_backends(spec, report)
    if report.ok:
        _check_claims(spec, report)
    return report


class InternalError(Exception):
    """An unexpected exception inside optgen (a bug, not a problem with the spec)."""

    def __init__(self, stage: str, exc: BaseException):
        self.stage = stage
        super().__init__(f"optgen internal error in {stage}: {type(exc).__name__}: {exc}")


def _stage(spec: Spec, report: Report, stage: str, run) -> None:
    """Run one build stage: a refusal is a finding located at the offending line (the spec
    itself when the stage cannot say), anything else an InternalError."""
    try:
        run()
    except SpecError as exc:
        report.add(exc.loc or spec.loc, f"{stage}: {exc.message}" if exc.loc is None else exc.message)
    except (KeyboardInterrupt, MemoryError, RecursionError):
        raise
    except Exception as exc:
        raise InternalError(f"{stage} ({spec.name})", exc) from exc


def _check_backends(spec: Spec, report: Report) -> None:
    """Render every backend a build renders, without formatting or importing the result:
    generated Python is compiled to bytecode (a syntax error there is a bug in optgen)."""
    from . import backends
    from .fused_support import fused_refusal
    from .matrix import matrix_location

    refusal = fused_refusal(spec)
    if refusal and spec.gradient_at is None:  # said once: fused=True raises ValueError with it
        report.add(
            matrix_location(spec) or spec.loc, f"no fused path (fused=True raises ValueError): {refusal}", "warning"
        )
    for backend in backends.available():
        if backend.NAME in ("torch", "triton") and spec.gradient_at is not None:
            continue  # a paper form, for proofs only: build never compiles it
        if backend.NAME in ("triton", "cpp") and refusal:
            continue
        if backend.NAME == "torch":
            from .backends.torch.module import render_module

            def run(render=render_module):
                builtins.compile(render(spec, "# check", compiled=True, formatted=False), "<optgen torch>", "exec")
        elif backend.NAME == "triton":
            from .backends.triton import render_module as render_triton

            def run(render=render_triton):
                builtins.compile(render(spec, formatted=False), "<optgen triton>", "exec")
        else:

            def run(backend=backend):
                getattr(backend, "render_all", backend.render)(spec)  # every option setting, where it has them

        _stage(spec, report, f"the {backend.NAME} backend", run)
        if not report.ok:
            return


def _check_claims(spec: Spec, report: Report) -> None:
    """The spec's own claims are re-proven every time it is checked."""
    from .prover import prove_spec_claims

    try:
        results = prove_spec_claims(spec)
    except SpecError as exc:
        report.add(exc.loc, exc.message)
        return
    for r in results:
        if not r.as_expected:
            report.add(r.loc, f"claim {r.index} ({r.proof.claim}): {r.proof.status}, expected {r.expect}", kind="claim")


def _check_defaults(spec: Spec, report: Report) -> None:
    for key, h in spec.hyperparameters.items():
        if h.captured is not None:
            if h.captured not in spec.hyperparameters or spec.hyperparameters[h.captured].is_tuple:
                report.add(h.loc, f"`{key}` is captured from `{h.captured}`, which is not a scalar hyperparameter")
            continue
        for name, value in zip(h.names, h.default):
            if value is not None and not h.range.contains(value):  # None: `none: dtype_eps`
                report.add(h.loc, f"default of `{name}` ({value:g}) is outside its range {h.range}")


def _check_options_used(spec: Spec, report: Report) -> None:
    used: set[str] = set()

    def walk(block):
        for stmt in block:
            if isinstance(stmt, If):
                used.update(condition_names(stmt.cond))
                walk(stmt.body)
                walk(stmt.orelse)

    walk(spec.update)
    for s in spec.state.values():
        if s.when is not None:
            for name in condition_names(s.when):
                if name not in spec.options:
                    report.add(s.loc, f"`when: {name}`: no option named `{name}`")
                used.add(name)
    for name, opt in spec.options.items():
        if name not in used:
            report.add(opt.loc, f"option `{name}` is never used (no `if {name}:` and no `when: {name}`)")


def _free_names(program: Program) -> set[str]:
    names = set()
    for v in program.values:
        names |= {s.name for s in v.expr.free_symbols}
    for s in program.states:
        names |= {x.name for x in s.init.free_symbols}
    captured = {h.captured for h in program.spec.hyperparameters.values() if h.captured and h.key in names}
    return names | captured


def _check_states_read(program: Program, report: Report) -> None:
    """A state is useful if its old value reaches param's new value, directly or through
    another useful state across steps."""
    states = {s.name for s in program.states}
    useful = program.inputs_of(program.outputs["param"]) & states
    if program.spec.modes is not None:  # or the evaluation parameter (optgen/modes.py)
        useful |= set(program.spec.modes.states) & states
    while True:
        more = (
            set().union(*(program.inputs_of(program.outputs[s]) & states for s in useful)) - useful if useful else set()
        )
        if not more:
            break
        useful |= more
    for s in program.states:
        if s.name not in useful:
            report.add(
                s.loc, f"state `{s.name}` never influences the parameter update (options: {_fmt(program.options)})"
            )


def _short(expr) -> str:
    text = str(expr)
    return text if len(text) <= 60 else text[:57] + "..."


def _fmt(options) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "none"
