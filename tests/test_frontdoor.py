"""`optgen check` is the front door: it runs every stage a build runs, so a spec that checks
compiles on every path (for-loop, foreach, fused) and matches the float64 Reference, and a
spec that cannot be built is refused at check time with `file:line:col`. Each case below
crashed or computed wrong numbers after a clean check (issue 9, section 2)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

import optgen
from optgen import cli
from optgen.errors import SpecError
from optgen.parse import loads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spec_runner import run_paths


def spec_text(
    update: str, state: str = "m: {init: 0}\n  s: {init: 1, scope: tensor}", betas_tex: bool = True, extra: str = ""
) -> str:
    tex = ", tex: ['\\beta_1', '\\beta_2']" if betas_tex else ""
    body = textwrap.indent(textwrap.dedent(update).strip(), "  ")
    return (
        "name: Case\nsummary: a test case.\nparity: independent\nhyperparameters:\n"
        "  lr: {default: 0.1, range: \"(0, inf)\", tex: '\\gamma'}\n"
        f'  betas: {{default: [0.9, 0.99], names: [beta1, beta2], range: "[0, 1)"{tex}}}\n{extra}'
        f"state:\n  {state}\nupdate: |\n{body}\n"
    )


CASES = {
    # a tensor-scope state set from host values only was never written back
    "prev_lr": spec_text(
        """
        m = beta1 * m + grad
        param = param - (lr + s) * m
        s = lr
        """
    ),
    "lr_max": spec_text(
        """
        lr_t = lr / step
        m = beta1 * m + grad
        param = param - (lr_t + s) * m
        s = lr_t
        """
    ),
    # an element state set from host values only
    "element_from_host": spec_text(
        """
        s = s * beta2
        param = param - lr * s * grad - m
        m = lr / step
        """
    ),
    # per-tensor scalar state kept at the parameter's precision (float32 gave -0.10000000149)
    "lr_sum": spec_text(
        """
        m = beta1 * m + grad
        s = s + lr
        param = param - s * m
        """
    ),
    "log_exp_of_hyperparameters": spec_text(
        """
        m = beta1 * m + grad
        s = s * beta2
        param = param - lr * log(1 + lr) * exp(beta2 * step / 10) * m - s * log(beta1) * grad * exp(-lr)
        """
    ),
    "every_function_at_every_scope": spec_text(
        """
        h = sqrt(lr) + abs(beta1 - 0.95) + sign(beta1 - 0.5) + exp(-lr) + log(1 + lr) + maximum(lr, beta1) + minimum(lr, beta2) + clamp(lr, 0.01, 0.05) + where(step > 1, lr, beta1)
        s = s * beta2 + 0.001 * (sqrt(s) + abs(s - 0.5) + sign(s - 0.5) + exp(-s) + log(1 + s) + maximum(s, 0.3) + minimum(s, 0.7) + clamp(s, 0.2, 0.8) + where(s > 0.5, s, 0.1))
        n = norm(grad)
        t = sqrt(n) + abs(n - 1) + sign(n - 1) + exp(-n) + log(1 + n) + maximum(n, 0.3) + minimum(n, 0.7) + clamp(n, 0.2, 0.8) + where(n > 0.5, n, 0.1)
        m = beta1 * m + grad
        e = sqrt(abs(m)) + abs(m) + sign(m) + exp(-abs(m)) + log(1 + abs(m)) + maximum(m, 0) + minimum(m, 0) + clamp(m, -0.1, 0.1) + where(m > 0, m, 0.1)
        param = param - lr * 0.01 * (h + s + t) * e
        """
    ),
    "where_on_a_tensor_state": spec_text(
        """
        m = beta1 * m + grad
        s = s * beta2
        param = param - lr * where(s > 0.95, m, grad)
        """
    ),
    "tuple_hyperparameter_without_tex": spec_text(
        """
        m = beta1 * m + grad
        s = s * beta2
        param = param - lr * s * m
        """,
        betas_tex=False,
    ),
    "maximum_of_a_constant_sum": spec_text(
        """
        m = beta1 * m + grad
        s = s * beta2
        param = param - lr * s * m * maximum(sum(2), 1)
        """
    ),
    "norm_of_a_norm": spec_text(
        """
        m = beta1 * m + grad
        s = s * beta2
        param = param - lr * s * m * norm(norm(grad))
        """
    ),
    "global_norm_clip_in_the_update": spec_text(
        """
        grad = grad * minimum(1, 1 / (global_norm(grad) + 1e-6))
        m = beta1 * m + grad
        s = s * beta2
        param = param - lr * s * m
        """
    ),
    "global_norm_scaling_a_product": spec_text(
        """
        m = beta1 * m + grad
        s = s * beta2
        param = param - lr * s * m * grad / (global_norm(grad) + 1e-6)
        """
    ),
    # found by the property test: one reduction met twice in a statement
    "repeated_reduction": spec_text(
        """
        m = beta1 * m + grad
        s = s * beta2
        param = param - lr * s * (m * amax(grad) + grad / (1 + amax(grad)))
        """
    ),
    # found by the property test: a comparison of two `where`s (SymPy's ITE)
    "comparison_of_wheres": spec_text(
        """
        m = beta1 * m + where(where(m > 0, grad, m) > where(grad > 0.5, param, m), grad, param)
        s = s * beta2
        param = param - lr * s * m
        """
    ),
    # found by the property test: `grad = sign(grad) + c * param` rebound `grad`, then took
    # the sign of the new tensor (for-loop and foreach)
    "rebinding_a_name_it_reads": spec_text(
        """
        grad = sign(grad) + weight_decay * param
        m = beta1 * m + (1 - beta1) * grad
        v = maximum(beta2 * v, abs(grad) + 1e-8)
        param = param - lr / (1 - beta1**step) * m / v
        """,
        state="m: {init: 0}\n  v: {init: 0}",
        extra="  weight_decay: {default: 0.0, range: '[0, inf)', tex: '\\lambda'}\n",
    ),
    # found by the property test: torch.where of two floats made a float32 tensor
    "where_between_two_hyperparameters": spec_text(
        """
        m = beta1 * m + grad
        param = param - lr * (m + v)
        v = where(m > 0, beta1, lr)
        """,
        state="m: {init: 0}\n  v: {init: 0}",
    ),
    # found by the property test: the Reference reduced a constant element value once, not
    # once per element
    "reduction_of_a_constant_element_value": spec_text(
        """
        param = param - lr * (m + v)
        v = 0.5
        m = beta1 * m + grad + mean(v * step) + sum(v)
        """,
        state="m: {init: 0}\n  v: {init: 0}",
    ),
    # found by the property test: the Triton printer wrote a / v**2 as a / v * v
    "division_by_a_square": spec_text(
        """
        m = beta1 * m + grad
        s = s * beta2
        param = param - lr * s * m / (1 + m**2) + lr * grad / (2 + param)**2
        """
    ),
    # found by the property test: a per-element and a host condition joined (fused path)
    "element_and_host_condition": spec_text(
        """
        m = beta1 * m + where(grad > 0 and step < 3, grad, 0.5 * grad)
        s = s * beta2
        param = param - lr * s * where(m > 0 or step > 2, m, -m)
        """
    ),
    "chained_reassignments": spec_text(
        "x = grad\n" + "x = x * beta1\n" * 40 + "m = beta1 * m + x\ns = s * beta2\nparam = param - lr * s * m"
    ),
}


# Cases that cannot be built: refused by check at the offending line (a reduction of a
# per-tensor value: sum(2) is not a per-element value, nor is norm(grad)).
REFUSED = {"maximum_of_a_constant_sum": 13, "norm_of_a_norm": 13}


@pytest.mark.parametrize("name", list(CASES))
def test_checked_spec_runs_right_on_every_path(name):
    if name in REFUSED:  # refused where it stands, by the parser or by check
        try:
            report = optgen.check(loads(CASES[name], f"{name}.yaml"))
            errors = [f for f in report.findings if f.severity == "error"]
        except SpecError as exc:
            errors = getattr(exc, "errors", [exc])
        assert errors and all(f.loc.file == f"{name}.yaml" and f.loc.line == REFUSED[name] for f in errors)
        return
    spec = loads(CASES[name], f"{name}.yaml")
    report = optgen.check(spec)
    assert report.ok, [str(f) for f in report.findings]
    assert run_paths(spec) == {"forloop": None, "foreach": None, "fused": None}


@pytest.mark.parametrize("parity", ["independent", "torch.optim.Adam"])
def test_scalar_state_keeps_the_parameter_precision(parity):
    """Only a state its parity reference rounds to torch's scalar dtype (NAdam's mu_product,
    tests/test_torch_behaviour.py) is kept there; any other stays at the param's precision."""
    text = CASES["lr_sum"].replace("parity: independent", f"parity: {parity}")
    cls = optgen.compile(loads(text, "lr_sum.yaml"))
    for dtype in (torch.float64, torch.float32):
        p = torch.zeros(3, dtype=dtype, requires_grad=True)
        opt = cls([p], foreach=False)
        p.grad = torch.ones(3, dtype=dtype)
        opt.step()
        assert opt.state[p]["s"].dtype == dtype
        assert opt.state[p]["s"].item() == (1 + 0.1 if dtype == torch.float64 else torch.tensor(1.1).item())


def test_a_refusal_in_a_backend_is_a_located_finding(tmp_path, monkeypatch, capsys):
    """A CompileError a backend raises without a location still names the spec's file."""
    from optgen.backends.torch import module
    from optgen.errors import CompileError

    def refuse(*args, **kwargs):
        raise CompileError(None, "cannot do this")

    monkeypatch.setattr(module, "render_module", refuse)
    path = tmp_path / "case.yaml"
    path.write_text(CASES["lr_sum"])
    report = optgen.check(optgen.load(path))
    assert not report.ok
    (finding,) = report.findings
    assert finding.loc is not None and finding.loc.file == str(path) and "torch backend" in finding.message


def test_an_internal_error_is_one_line_exit_3(tmp_path, monkeypatch, capsys):
    from optgen.backends import latex

    def crash(spec):
        raise RuntimeError("boom")

    monkeypatch.setattr(latex, "render", crash)
    path = tmp_path / "case.yaml"
    path.write_text(CASES["lr_sum"])
    assert cli.main(["check", str(path)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("optgen internal error in the latex backend (Case): RuntimeError: boom")
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "update, state, line",
    [
        ("s = s * beta2 + grad\nm = beta1 * m + grad\nparam = param - lr * s * m", None, 11),
        (
            "s = s * beta2\nm = beta1 * m + grad\nparam = param - lr * s * m",
            "m: {init: 0}\n  s: {init: grad, scope: tensor}",
            9,
        ),
    ],
)
def test_a_tensor_state_never_holds_a_per_element_value(update, state, line):
    """Found by the property test: a `scope: tensor` state assigned per-element values
    (SGD's momentum_buffer made per tensor) crashed every path after a clean check."""
    text = spec_text(update, state) if state else spec_text(update)
    report = optgen.check(loads(text, "t.yaml"))
    assert not report.ok
    assert [f.loc.line for f in report.findings if f.severity == "error"] == [line]
