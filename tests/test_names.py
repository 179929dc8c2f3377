"""Generated code is immune to the names a spec uses (issue 9, section 2): a hyperparameter,
option, state or value may be named like a builtin (`zip`, `len`, `set`, `enumerate`,
`super`), like an identifier the generated module uses itself (`param_group`, `func`,
`keys`, `i`), or like a list the module derives from another name (`m_list` beside a state
`m`), or like a name of the fused path's Triton kernels and launcher (`pid`, `mask`, `tl`,
`hyper`, a hyperparameter `m_ptr` beside a state `m`, an option `align` beside the `ALIGN`
flag). Each compiles on the for-loop, foreach and fused paths and matches the float64
Reference; the constructor keywords, param_group keys, state_dict keys and the keys the
fused path passes stay the spec's."""

from __future__ import annotations

import builtins
import inspect
import keyword

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optgen
from optgen.backends import triton as triton_backend
from optgen.backends.torch import module as torch_module
from optgen.backends.torch import names as torch_names
from optgen.backends.triton import kernels as triton_kernels
from optgen.errors import CompileError
from optgen.expr import name_problem
from optgen.reference import Reference

ROLES = ("H1", "T", "H2", "H3", "O", "S1", "S2", "L", "R")
TEMPLATE = """name: Names
summary: spec names that the generated module also uses
paper: none
parity: independent
hyperparameters:
  lr: {default: 0.1, range: "(0, inf)"}
  H1: {default: 0.05, range: "[0, inf)"}
  T: {default: [0.9, 0.5], names: [H2, H3], range: "[0, 1)", tex: ['a', 'b']}
options:
  O: false
state:
  S1: {init: 0}
  S2: {init: 1, scope: tensor}
update: |
  grad = grad + H1 * param
  S1 = H2 * S1 + (1 - H2) * grad
  S2 = S2 * H3 + 0.5
  R = sum(S1**2)
  if O:
      L = S1 / (1 + sqrt(R))
  else:
      L = S1 + S2 * grad
  param = param - lr * L
"""


def spec_text(roles: dict[str, str]) -> str:
    import re

    return re.sub(r"\b(" + "|".join(ROLES) + r")\b", lambda m: roles[m.group(1)], TEMPLATE)


def _run(cls, spec, option: bool, **flags):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, dtype=torch.float64, generator=gen).requires_grad_() for s in ((3, 4), (5,))]
    x0 = [p.detach().numpy().copy() for p in params]
    (public_option,) = spec.options
    opt = cls(params, **{public_option: option}, **flags)
    ref = Reference(spec, [{"params": x0, public_option: option}])
    for _ in range(3):
        grads = [torch.randn(p.shape, dtype=torch.float64, generator=gen) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        ref.step([g.numpy() for g in grads])
    return opt, [p.detach().numpy() for p in params], ref.params


def check_names(roles: dict[str, str]) -> None:
    spec = optgen.load(spec_text(roles))
    cls = optgen.compile(spec)
    signature = inspect.signature(cls.__init__).parameters
    assert {roles["H1"], roles["T"], roles["O"]} <= set(signature)  # the spec's keywords
    for option in (False, True):
        results = {}
        for path, flags in (
            ("for-loop", {"foreach": False}),
            ("foreach", {"foreach": True}),
            ("fused", {"fused": True}),
        ):
            opt, ours, expected = _run(cls, spec, option, **flags)
            tol = 1e-5 if path == "fused" else 1e-12
            for a, b in zip(ours, expected):
                assert np.max(np.abs(a - b)) <= tol * max(1.0, np.max(np.abs(b))), (roles, path, option)
            results[path] = ours
            group = opt.param_groups[0]
            assert {roles["H1"], roles["T"], roles["O"]} <= set(group)
            assert set(opt.state_dict()["state"][0]) == {"step", roles["S1"], roles["S2"]}
        for a, b in zip(results["for-loop"], results["foreach"]):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


NAMED = [
    # the names from the issue, each in a role where it broke the generated code
    {
        "H1": "m_list",
        "S1": "m",
        "H2": "zip",
        "H3": "len",
        "T": "super",
        "O": "func",
        "S2": "i",
        "L": "keys",
        "R": "param_group",
    },
    {
        "H1": "enumerate",
        "H2": "keys",
        "H3": "func",
        "T": "zip",
        "O": "len",
        "S1": "super",
        "S2": "set",
        "L": "i",
        "R": "m_list",
    },
    {
        "H1": "param_group",
        "H2": "set",
        "H3": "i",
        "T": "keys",
        "O": "enumerate",
        "S1": "state_dtype",
        "S2": "zip",
        "L": "func",
        "R": "len",
    },
    {
        "H1": "super",
        "H2": "func",
        "H3": "m",
        "T": "len",
        "O": "set",
        "S1": "keys",
        "S2": "enumerate",
        "L": "m_list",
        "R": "zip",
    },
    {
        "H1": "func",
        "H2": "super",
        "H3": "enumerate",
        "T": "set",
        "O": "zip",
        "S1": "param_group",
        "S2": "keys",
        "L": "len",
        "R": "i",
    },
    {
        "H1": "keys",
        "H2": "i",
        "H3": "m_list",
        "T": "param_group",
        "O": "super",
        "S1": "func",
        "S2": "len",
        "L": "zip",
        "R": "set",
    },
]


@pytest.mark.parametrize("roles", NAMED, ids=lambda r: "-".join(r[k] for k in ROLES))
def test_names_from_the_issue_compile_and_match_the_reference(roles):
    check_names(roles)


def test_public_names_stay_the_spec_s_and_identifiers_are_renamed():
    text = torch_module.render_module(optgen.load(spec_text(NAMED[0])), "# test")
    assert "m_list_: float" in text and '"m_list": m_list' in text  # keyword m_list, Python name m_list_
    assert 'zip_, len_ = group["super"]' in text


@pytest.mark.parametrize("role", ["H1", "O"])
def test_a_keyword_of_the_class_itself_is_a_located_error(role):
    roles = dict(NAMED[0], **{role: "state_dtype"})
    with pytest.raises(CompileError) as info:
        optgen.compile(optgen.load(spec_text(roles)))
    assert (
        info.value.loc is not None
        and info.value.loc.line
        == spec_text(roles)
        .splitlines()
        .index(next(line for line in spec_text(roles).splitlines() if line.startswith("  state_dtype:")))
        + 1
    )


def _pool() -> list[str]:
    """Legal spec names that Python or the generated module already uses: keywords (none is
    a legal name today; any that becomes one joins), builtins, and every identifier of a
    module rendered with placeholder names."""
    spec = optgen.load(spec_text(NAMED[0]))
    marked = torch_names.renamed(spec, torch_names.placeholders(spec), public=False)
    text, _ = torch_module._render(marked, marked, "# pool", False, set())
    candidates = set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins)) | torch_names.module_names(text)
    return sorted(n for n in candidates if name_problem(n) is None and n not in ("lr", "state_dtype"))


POOL = _pool()


def test_the_pool_holds_builtins_and_template_names():
    assert {"zip", "len", "set", "enumerate", "super", "param_group", "func", "keys", "i"} <= set(POOL)


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(POOL), min_size=len(ROLES), max_size=len(ROLES), unique=True))
def test_any_names_compile_and_match_the_reference(drawn):
    check_names(dict(zip(ROLES, drawn)))


# --------------------------------------------------------------------------- the Triton module
# names the Triton kernels and launcher use for themselves, each in a role where it collided:
# kernel locals, launcher locals, imports, a pointer argument (`m_ptr` beside a state `m`,
# `v_before` beside a per-tensor state `v`), a launch keyword (`num_warps`) and option flags
# (`align` -> ALIGN, `block_size` -> BLOCK_SIZE, `num_reductions` -> NUM_REDUCTIONS)
TRITON_NAMED = [
    {
        "H1": "pid",
        "T": "tensor",
        "H2": "block",
        "H3": "offsets",
        "O": "align",
        "S1": "mask",
        "S2": "kernel",
        "L": "hyper",
        "R": "tl",
    },
    {
        "H1": "m_ptr",
        "T": "group",
        "H2": "triton",
        "H3": "np",
        "O": "maximize_flag",
        "S1": "m",
        "S2": "options",
        "L": "args",
        "R": "constants",
    },
    {
        "H1": "num_warps",
        "T": "passes",
        "H2": "v_before",
        "H3": "numels",
        "O": "block_size",
        "S1": "step_row",
        "S2": "v",
        "L": "tensor_reductions",
        "R": "global_values",
    },
    {
        "H1": "reductions",
        "T": "block_tensors",
        "H2": "step_scalars",
        "H3": "launch",
        "O": "num_reductions",
        "S1": "block_indices",
        "S2": "ndims",
        "L": "m_offsets",
        "R": "m_ptrs",
    },
]


@pytest.mark.parametrize("roles", TRITON_NAMED, ids=lambda r: "-".join(r[k] for k in ROLES))
def test_names_the_triton_module_uses_compile_and_match_the_reference(roles):
    check_names(roles)


def test_the_triton_module_renames_identifiers_and_keeps_the_keys():
    text = triton_backend.render_module(optgen.load(spec_text(TRITON_NAMED[1])))
    # the hyperparameter m_ptr beside the state m's pointer: the kernels read m_ptr_, the
    # launcher passes hyper["m_ptr"]; the state keeps its key, the per-tensor state options too
    assert "grad = grad + m_ptr_ * param" in text and 'hyper["m_ptr"]' in text
    assert "    m_ptr,\n" in text and "    m_ptr_,\n" in text
    assert '"m",\n)' in text and 'group.base("m")' in text
    assert 'TENSOR_STATES = ("options",)' in text and "options__ptr + tl.load(options__offsets + tensor)" in text
    assert 'MAXIMIZE_FLAG=options["maximize_flag"]' in text and 'OPTIONS = {"maximize_flag": False}' in text
    assert 'triton_ = hyper["triton"]' in text and "import triton\n" in text
    text = triton_backend.render_module(optgen.load(spec_text(TRITON_NAMED[0])))
    assert 'ALIGN_=options["align"]' in text and "ALIGN_: tl.constexpr" in text and "if ALIGN_:" in text
    assert "pid = tl.program_id(0)" in text and 'hyper["pid"]' in text and "grad = grad + param * pid_" in text


def _triton_pool() -> list[str]:
    """Legal spec names the Triton module uses itself: every identifier (and launch keyword)
    of a module rendered with placeholder names."""
    spec = optgen.load(spec_text(NAMED[0]))
    marked = torch_names.renamed(spec, torch_names.placeholders(spec), public=False)
    text = triton_backend._text(triton_kernels.build(marked))
    used = torch_names.module_names(text, call_keywords=True) - set(dir(builtins))
    return sorted(n for n in used if name_problem(n) is None and n not in ("lr", "state_dtype"))


TRITON_POOL = _triton_pool()


def test_the_triton_pool_holds_the_kernels_names():
    assert {"pid", "tensor", "block", "offsets", "mask", "hyper", "tl", "triton", "np", "group", "options"} <= set(
        TRITON_POOL
    )


@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(TRITON_POOL), min_size=len(ROLES), max_size=len(ROLES), unique=True))
def test_any_names_of_the_triton_module_compile_and_match_the_reference(drawn):
    check_names(dict(zip(ROLES, drawn)))


GLOBAL_TEMPLATE = """name: Globals
summary: a cross-parameter reduction whose value has a name the generated code uses
paper: none
parity: independent
hyperparameters:
  lr: {default: 0.1, range: "(0, inf)"}
  H: {default: 0.5, range: "(0, inf)"}
options:
  O: false
state:
  S: {init: 0}
update: |
  S = H * S + grad
  V = global_norm(H * grad)
  if O:
      param = param - lr * S / (1 + V)
  else:
      param = param - lr * grad / (1 + V)
"""


@pytest.mark.parametrize(
    "roles",
    [
        {"H": "beta", "O": "flag", "S": "m", "V": "len"},  # the torch class renames the value
        {"H": "hyper", "O": "mask", "S": "keys", "V": "pid"},  # both modules rename it
    ],
)
def test_a_global_reduction_is_passed_to_the_kernels_by_its_spec_name(roles):
    """The torch class computes the global norm and hands it to the Triton module: both rename
    the value, and the key they exchange it by is the spec's (once NaN on the fused path)."""
    import re

    spec = optgen.load(re.sub(r"\b(H|O|S|V)\b", lambda m: roles[m.group(1)], GLOBAL_TEMPLATE))
    cls = optgen.compile(spec)
    for option in (False, True):
        for flags in ({"foreach": False}, {"foreach": True}, {"fused": True}):
            gen = torch.Generator().manual_seed(0)
            params = [torch.randn(s, dtype=torch.float64, generator=gen).requires_grad_() for s in ((3, 4), (5,))]
            ref = Reference(spec, [{"params": [p.detach().numpy().copy() for p in params], roles["O"]: option}])
            opt = cls(params, **{roles["O"]: option}, **flags)
            for _ in range(3):
                grads = [torch.randn(p.shape, dtype=torch.float64, generator=gen) for p in params]
                for p, g in zip(params, grads):
                    p.grad = g.clone()
                opt.step()
                ref.step([g.numpy() for g in grads])
            tol = 1e-5 if "fused" in flags else 1e-12
            for p, expected in zip(params, ref.params):
                ours = p.detach().numpy()
                assert np.max(np.abs(ours - expected)) <= tol * max(1.0, np.max(np.abs(expected))), (roles, flags)
