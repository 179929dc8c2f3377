"""Spec-language features real optimizers needed (issue 9, section 5): every-k schedules
(`%`, `//` on step), snapshot states, YAML numerals, all errors at once, `tex:` on values."""

from __future__ import annotations

import textwrap

import pytest

import optgen
from optgen.errors import SpecError, SpecErrors
from optgen.lower import lower
from optgen.parse import loads
from optgen.reference import Reference

TINY = textwrap.dedent(
    """\
    name: Tiny
    summary: A tiny momentum method.
    parity: independent
    hyperparameters:
      lr: {default: LR, range: "(0, inf)"}
      betas: {default: [B1, B2], names: [beta1, beta2], range: "[0, 1)"}
      eps: {default: EPS, range: "[0, 1e-1]"}
    state:
      buf: {init: INIT}
    update: |
      buf = beta1 * buf + (1 - beta1) * grad
      param = param - lr * beta2 * buf / (1 + eps)
    """
)


def tiny(lr="0.001", b1="0.9", b2="0.99", eps="0.00000001", init="0.001") -> str:
    return TINY.replace("LR", lr).replace("B1", b1).replace("B2", b2).replace("EPS", eps).replace("INIT", init)


# --------------------------------------------------------------------------- YAML numerals
def test_numerals_without_a_dot_are_numbers_everywhere():
    """PyYAML reads `1e-3` as text; it is a number in defaults, tuple defaults, ranges and
    inits alike, and gives the same spec as the dotted spelling."""
    dotted = loads(tiny(), "t.yaml")
    bare = loads(tiny(lr="1e-3", b1="9e-1", b2="+99e-2", eps="1e-8", init="1e-3"), "t.yaml")
    for key in ("lr", "betas", "eps"):
        assert bare.hyperparameters[key].default == dotted.hyperparameters[key].default
    assert bare.hyperparameters["eps"].range.hi == 0.1
    assert bare.state["buf"].init == dotted.state["buf"].init
    assert optgen.check(bare).ok


@pytest.mark.parametrize("field", ["lr", "b1", "eps"])
@pytest.mark.parametrize("text", ["fast", "1e-3x", "e-3", "'1/3'", "nan", ".inf"])
def test_text_that_is_not_a_numeral_is_still_refused(field, text):
    with pytest.raises(SpecError) as info:
        loads(tiny(**{field: text}), "t.yaml")
    line = {"lr": 5, "b1": 6, "eps": 7}[field]
    assert str(info.value).startswith(f"t.yaml:{line}:")
    assert "expected a number" in info.value.message or "finite" in info.value.message


# --------------------------------------------------------------------------- running every path
PATHS = [{"foreach": False}, {"foreach": True}, {"fused": True}]
SHAPES = [(3, 2), (5,), (1,)]


def _run_paths(spec, steps: int, **kw):
    """Each path's parameters and optimizer after `steps` steps on fixed float64 gradients,
    and the gradients, for a hand-written loop to replay."""
    import torch

    cls = optgen.compile(spec)
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(steps)]
    out = []
    for flag in PATHS:
        params = [p.clone().requires_grad_() for p in start]
        opt = cls(params, **flag, **kw)
        for g in grads:
            for p, x in zip(params, g):
                p.grad = x.clone()
            opt.step()
        out.append((flag, params, opt))
    return [p.numpy() for p in start], [[x.numpy() for x in g] for g in grads], out


def _close(flag, got, want) -> None:
    """float64 paths agree to rounding; the fused path computes in float32."""
    import numpy as np

    rtol = 1e-5 if flag.get("fused") else 1e-12
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=rtol, atol=rtol * 1e-2, err_msg=str(flag))


# --------------------------------------------------------------------------- snapshot states
L2SP = textwrap.dedent(
    """\
    name: L2SP
    summary: SGD decayed towards the starting point (L2-SP, Li et al. 2018).
    parity: independent
    hyperparameters:
      lr: {default: 0.1, range: "(0, inf)"}
      alpha: {default: 0.5, range: "[0, inf)"}
    state:
      start: {init: param}
      lr0: {init: lr, scope: tensor}
    update: |
      param = param - lr0 * (grad + alpha * (param - start))
    """
)


def test_a_snapshot_state_is_set_once_and_read_on_every_path():
    """`start` and `lr0` are set by their init and never assigned: allowed, kept in the
    state dict, never written back, and the result is the hand-written loop's."""
    import numpy as np

    spec = loads(L2SP, "l2sp.yaml")
    assert optgen.check(spec).ok
    program = lower(spec)
    assert set(program.writes) == {"param"}
    start, grads, runs = _run_paths(spec, 6, lr=0.25)  # exact in float32 (a tensor state's dtype)
    want = [p.copy() for p in start]
    for g in grads:
        want = [p - 0.25 * (x + 0.5 * (p - p0)) for p, x, p0 in zip(want, g, start)]  # lr0: lr at step 1
    for flag, params, opt in runs:
        for p, w, p0 in zip(params, want, start):
            _close(flag, p, w)
            state = opt.state[p]
            assert set(state) == {"step", "start", "lr0"}
            np.testing.assert_array_equal(state["start"].numpy(), p0)  # never written back
            assert float(state["lr0"]) == 0.25
        assert {"start", "lr0"} <= set(opt.state_dict()["state"][0])
    ref = Reference(spec, [{"params": start, "lr": 0.25}])
    for g in grads:
        ref.step(g)
    for p, w in zip(ref.params, want):
        np.testing.assert_allclose(p, w, rtol=1e-13)


def test_a_snapshot_that_nothing_reads_is_still_an_error():
    text = L2SP.replace("lr0 * (grad", "lr * (grad")
    report = optgen.check(loads(text, "l2sp.yaml"))
    assert [(f.loc.line, f.message.split(" (")[0]) for f in report.findings if f.severity == "error"] == [
        (9, "state `lr0` never influences the parameter update")
    ]


# --------------------------------------------------------------------------- every-k schedules
LOOKAHEAD = textwrap.dedent(
    """\
    name: LookaheadSGD
    summary: Lookahead over SGD; the inner step size decays with each sync round.
    parity: independent
    hyperparameters:
      lr: {default: 0.1, range: "(0, inf)"}
      k: {default: 3, range: "[1, inf)", tex: 'k'}
      alpha: {default: 0.5, range: "[0, 1]", tex: '\\alpha'}
    state:
      slow: {init: param, tex: '\\phi'}
    update: |
      rounds = step // k
      fast = param - lr / (1 + rounds) * grad
      slow = where(step % k == 0, slow + alpha * (fast - slow), slow)
      param = where(step % k == 0, slow, fast)
    """
)


def _lookahead_by_hand(start, grads, lr=0.1, k=3, alpha=0.5):
    params, slows = [p.copy() for p in start], [p.copy() for p in start]
    for t, g in enumerate(grads, 1):
        for i, x in enumerate(g):
            fast = params[i] - lr / (1 + t // k) * x
            if t % k == 0:
                slows[i] = slows[i] + alpha * (fast - slows[i])
                params[i] = slows[i].copy()
            else:
                params[i] = fast
    return params, slows


@pytest.mark.parametrize("k", [3, 2.5])
def test_every_k_steps_with_mod_and_floor_division_on_every_path(k):
    """`step % k` and `step // k` are floored host arithmetic (a float k too, as Python's):
    the for-loop, foreach and fused paths and the Reference match a float64 loop."""
    import numpy as np

    spec = loads(LOOKAHEAD, "lookahead.yaml")
    assert optgen.check(spec).ok
    start, grads, runs = _run_paths(spec, 7, k=k)
    want, slow = _lookahead_by_hand(start, grads, k=k)
    for flag, params, opt in runs:
        for p, w, s in zip(params, want, slow):
            _close(flag, p, w)
            _close(flag, opt.state[p]["slow"], s)
    ref = Reference(spec, [{"params": start, "k": k}])
    for g in grads:
        ref.step(g)
    for p, w in zip(ref.params, want):
        np.testing.assert_allclose(p, w, rtol=1e-13)


def test_mod_and_floor_division_print_as_host_code_and_latex():
    spec = loads(LOOKAHEAD, "lookahead.yaml")
    source = __import__("inspect").getsource(__import__("inspect").getmodule(optgen.compile(spec)))
    assert "rounds = step // k" in source and "if (step % k) == 0:" in source
    tex = optgen.latex(spec)
    assert r"t \bmod k = 0" in tex and r"\left\lfloor{\frac{t}{k}}\right\rfloor" in tex


@pytest.mark.parametrize(
    "old, new, line, col, words",
    [
        ("rounds = step // k", "rounds = grad // k", 11, 12, "`//` takes host values"),
        ("step % k == 0, slow +", "slow % k == 0, slow +", 13, 16, "its left operand reads `slow`"),
        ("rounds = step // k", "rounds = sum(grad) // k", 11, 12, "reads `grad`"),
        ("rounds = step // k", "rounds = step // (k - k)", 11, 12, "`//` by zero"),
        ("slow: {init: param,", "slow: {init: param % 2,", 9, 16, "reads `param`"),
    ],
)
def test_mod_and_floor_division_of_tensor_values_are_refused_where_they_stand(old, new, line, col, words):
    with pytest.raises(SpecError) as info:
        loads(LOOKAHEAD.replace(old, new), "lookahead.yaml")
    assert (info.value.loc.line, info.value.loc.col) == (line, col), str(info.value)
    assert words in info.value.message


def test_mod_of_a_tensor_value_through_a_local_is_refused_at_its_line():
    text = LOOKAHEAD.replace("rounds = step // k", "n = sum(grad)\n  rounds = n // k")
    (finding,) = optgen.check(loads(text, "lookahead.yaml")).findings
    assert finding.loc.line == 12 and "`//` takes host values" in finding.message


SGD_ROUNDS = textwrap.dedent(
    """\
    name: SGDRounds
    summary: SGD whose step size decays each k steps.
    parity: independent
    hyperparameters:
      lr: {default: 0.1, range: "(0, inf)"}
      k: {default: 3, range: "[1, inf)"}
    update: |
      param = param - lr / (1 + step // k) * grad
    """
)


@pytest.mark.parametrize("alpha, status", [(1, "proven"), (0.5, "refuted")])
def test_the_prover_reasons_about_mod_and_floor_division(alpha, status):
    """Lookahead with alpha = 1 is SGD on the decayed step size (its slow weights are the
    parameter at the last sync, a ghost of SGD): proven symbolically over both cases of
    `step % k == 0`; with alpha = 0.5 refuted by a run."""
    spec = loads(LOOKAHEAD, "lookahead.yaml")
    other = loads(SGD_ROUNDS, "rounds.yaml")
    ghost = {"g": {"init": "param", "update": "where(step % k == 0, param - lr / (1 + step // k) * grad, g)"}}
    proof = optgen.prove(spec, other, {"slow": "g"}, given={"hyperparameters": {"alpha": alpha}}, ghost=ghost)
    assert proof.status == status
    cases = [o.name for o in proof.obligations if "Mod(1, k), 0)]" in o.name]  # the first step, split on the sync
    assert any(c.endswith("[Eq(Mod(1, k), 0)]") for c in cases) and any("[not Eq" in c for c in cases)
    if status == "proven":
        assert all(o.status == "proven" for o in proof.obligations)
    else:
        assert proof.counterexample is not None and proof.counterexample["step"] in (1, 2, 3)


# --------------------------------------------------------------------------- all errors at once
MANY_ERRORS = textwrap.dedent(
    """\
    name: Many
    summary: A spec with one error in each of several independent places.
    parity: independent
    hyperparameters:
      lr: {default: fast, range: "(0, inf)"}
      betas: {default: [0.9, 0.99], names: [beta1, beta2], range: "[0, 1)"}
    options:
      flip: 3
      amsgrad: false
    state:
      exp_avg: {init: 0, scop: tensor}
      exp_avg_sq: {init: 0}
    update: |
      exp_avg = beta1 * exp_avg + (1 - beta1) * grad
      exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad**2
      if amsgrd:
          exp_avg = exp_avg
      if flip:
          exp_avg = -exp_avg
      denom = sqr(exp_avg_sq) + 1
      param = param - lr * exp_avgg / denom
    """
)
MANY_EXPECTED = [
    "many.yaml:5:17: expected a number for the default of `lr`, got text 'fast'",
    "many.yaml:8:9: option `flip` must be true or false",
    "many.yaml:11:22: unknown key 'scop' in state `exp_avg`; did you mean `scope`?",
    "many.yaml:16:6: `if` takes an option (compile-time switch); `amsgrd` is not one; did you mean `amsgrad`?",
    "many.yaml:20:11: unknown function `sqr`; did you mean `sqrt`?",
    "many.yaml:21:24: unknown name `exp_avgg`; did you mean `exp_avg`?",
]


def test_every_independent_error_is_reported_at_once_in_file_order():
    """One run reports an error per hyperparameter, option, state and update line, with
    "did you mean" for misspelled names; uses of `lr` and `flip` (whose declarations have
    errors) are not reported again."""
    with pytest.raises(SpecError) as info:  # SpecErrors is a SpecError: callers keep working
        loads(MANY_ERRORS, "many.yaml")
    error = info.value
    assert isinstance(error, SpecErrors)
    lines = str(error).splitlines()
    assert len(lines) == len(MANY_EXPECTED), lines
    for line, want in zip(lines, MANY_EXPECTED):
        assert line.startswith(want), (line, want)
    assert [str(e) for e in error.errors] == lines
    assert (error.loc.line, error.loc.col) == (5, 17) and error.message.startswith("expected a number")


def test_one_error_is_a_plain_spec_error():
    with pytest.raises(SpecError) as info:
        loads(MANY_ERRORS.split("options:")[0] + "update: |\n  param = param - lr * grad\n", "many.yaml")
    assert type(info.value) is SpecError and "\n" not in str(info.value)


def test_cli_prints_each_error_on_its_own_line_and_exits_2(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "many.yaml"
    path.write_text(MANY_ERRORS)
    run = subprocess.run(
        [sys.executable, "-m", "optgen.cli", "check", str(path)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert [line.replace(str(path), "many.yaml")[: len(w)] for line, w in zip(lines, MANY_EXPECTED)] == MANY_EXPECTED
    assert len(lines) == len(MANY_EXPECTED) and "Traceback" not in run.stderr


def test_each_line_that_lowering_refuses_is_reported_without_its_consequences():
    text = tiny().replace(
        "  buf = beta1 * buf + (1 - beta1) * grad\n",
        "  early = later + grad\n  n = sum(grad)\n  also = n // 2 + grad\n"
        "  buf = beta1 * buf + (1 - beta1) * early * also\n  later = 1\n",
    )
    report = optgen.check(loads(text, "t.yaml"))
    errors = [(f.loc.line, f.message.split(" (options")[0]) for f in report.findings if f.severity == "error"]
    assert errors == [
        (11, "`later` is used before it is assigned"),
        (13, "`//` takes host values (hyperparameters, step, numbers); here it reads a tensor value"),
    ]


# --------------------------------------------------------------------------- tex of values, one symbol per role
def _catalog_specs():
    from optgen import catalog

    paths = [catalog.path_of(n) for n in catalog.names()] + sorted((catalog.specs_dir() / "forms").glob("*.yaml"))
    return [optgen.load(p) for p in paths]


def test_the_catalog_uses_one_symbol_per_role():
    """A hyperparameter (or an assigned value with a `tex:`) of one name has one symbol in
    every spec; the learning rate is \\gamma, as in torch.optim's documentation; inside a
    spec no two names share a symbol."""
    by_name: dict[str, dict[str, str]] = {}
    for spec in _catalog_specs():
        symbols = {}
        for name in spec.scalar_hypers:
            symbols[name] = spec.tex_symbols[name]
        symbols |= {n: t for n, t in spec.tex_symbols.items() if n not in spec.state}
        for name, tex in symbols.items():
            by_name.setdefault(name, {})[spec.name] = tex
        shared = {t for t in spec.tex_symbols.values() if list(spec.tex_symbols.values()).count(t) > 1}
        assert not shared, (spec.name, shared)
    mixed = {name: specs for name, specs in by_name.items() if len(set(specs.values())) > 1}
    assert not mixed, mixed
    assert set(by_name["lr"].values()) == {r"\gamma"} and len(by_name["lr"]) == 30
    assert set(by_name["bias_correction1"].values()) == {"c_1"}
    assert by_name["rho_t"]["RAdam"] == by_name["n_sma"]["AdaBelief"] == r"\rho_t"


def test_tex_of_assigned_values_reaches_every_latex_output():
    """RAdam's locals print with their `tex:` in the algorithm box and the equations, the
    formula sheet and the generated class's docstring: no \\mathrm{bias\\_correction1}."""
    from pathlib import Path

    import optgen.optimizers

    spec = optgen.load("radam")
    document = optgen.latex(spec)
    sheet = (Path(__file__).resolve().parents[1] / "generated" / "latex" / "catalog.tex").read_text()
    doc = optgen.optimizers.RAdam.__doc__
    for text in (document, sheet, doc):
        assert r"\mathrm{bias\_correction" not in text and r"\mathrm{n\_sma" not in text
        assert r"\rho_t \leftarrow \rho_\infty - \frac{2 \beta_2^{t} t}{c_2}" in text
    assert r"\rho_t &= \rho_\infty - \frac{2 \beta_2^{t} t}{c_2}" in document  # the equations


@pytest.mark.parametrize(
    "tex, line, col, words",
    [
        ("  lr: '\\eta'\n", 11, 3, "`lr` is a hyperparameter: give its tex in its declaration"),
        ("  buf: 'b'\n", 11, 3, "`buf` is a state: give its tex in its declaration"),
        ("  stepdir: 'd'\n", 11, 3, "`tex:` names `stepdir`, which the update never assigns; did you mean `step_dir`?"),
        ("  step_dir: '\\input{x}'\n", 11, 13, "control sequence \\input is not in the math vocabulary"),
        ("  step_dir: [d]\n", 11, 13, "expected LaTeX for `step_dir`"),
    ],
)
def test_tex_of_values_is_checked_where_it_stands(tex, line, col, words):
    text = tiny().replace("update: |\n", "tex:\n" + tex + "update: |\n")
    text = text.replace(
        "  param = param - lr * beta2 * buf / (1 + eps)",
        "  step_dir = buf / (1 + eps)\n  param = param - lr * beta2 * step_dir",
    )
    assert loads(text.replace(tex, "  step_dir: 'd'\n"), "t.yaml").tex_symbols["step_dir"] == "d"
    with pytest.raises(SpecError) as info:
        loads(text, "t.yaml")
    assert (info.value.loc.line, info.value.loc.col) == (line, col), str(info.value)
    assert words in info.value.message


def test_a_syntax_error_in_the_update_does_not_make_its_tex_entries_errors():
    text = tiny().replace("update: |\n", "tex:\n  step_dir: 'd'\nupdate: |\n").replace("buf = beta1", "buf = = beta1")
    with pytest.raises(SpecError) as info:
        loads(text, "t.yaml")
    assert type(info.value) is SpecError and "syntax error" in info.value.message


def test_a_snapshot_state_reads_as_its_initial_value_in_latex():
    tex = optgen.latex(loads(L2SP, "l2sp.yaml"))
    assert r"\mathrm{start}_{0} \leftarrow \theta_{0}" in tex  # initialised ...
    assert r"\theta_{t-1} - \mathrm{start}_{0}" in tex and r"\mathrm{start}_{t-1}" not in tex  # ... and read as such
