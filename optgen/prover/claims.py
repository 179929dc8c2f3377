"""The `claims:` of a spec: validation of the located YAML nodes, and proving them.

Format (docs/spec-language.md, "Claims"):

    claims:
      - equivalent_to: forms/adan_agd      # the other spec: catalog name, forms/NAME, or a path
        given: {hyperparameters: {weight_decay: 0}, options: {amsgrad: false}}   # this spec
        with:  {hyperparameters: {eps: "eps_hat / sqrt(1 - beta2**step)"}, options: {...}}
        map:   {param: "param - lr * (1 - beta1) * exp_avg", ...}   # this spec's state
        ghost: {g_prev: {init: 0, update: grad}}                    # extra state of the other
        when:  "lower_bound <= x and x <= upper_bound"              # conditional equivalence
        expect: proven                                              # proven | refuted | unknown
      - limit: {expr: lower_bound, as: step -> oo, equals: final_lr}
      - invariant: exp_avg_sq >= 0
      - scale_invariant: {expr: cos_sq, of: exp_avg_sq}
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .. import catalog
from ..errors import SpecError
from ..spec import Spec
from ..yamlpos import Node
from .equivalence import Equivalence, prove_equivalence
from .properties import Invariant, Limit, ScaleInvariant, prove_invariant, prove_limit, prove_scale_invariant
from .result import PROVEN, STATUSES, ClaimResult
from .sides import Ghost

COMMON = {"expect", "given", "doc"}
KEYS = {
    "equivalent_to": COMMON | {"equivalent_to", "with", "map", "ghost", "when"},
    "limit": COMMON | {"limit"},
    "invariant": COMMON | {"invariant"},
    "scale_invariant": COMMON | {"scale_invariant"},
}


def prove_spec_claims(spec: Spec) -> list[ClaimResult]:
    """Prove every claim of a spec. A malformed claim raises SpecError at its location.
    Cached on the spec: `optgen check` proves them, then the LaTeX stage prints them."""
    if "_claim_results" not in spec.__dict__:
        spec.__dict__["_claim_results"] = [prove_claim(spec, node, i) for i, node in enumerate(spec.claims, 1)]
    return list(spec.__dict__["_claim_results"])


def prove_claim(spec: Spec, node: Node, index: int = 1) -> ClaimResult:
    kind, expect = _validate(node)
    fields = node.value
    if kind == "equivalent_to":
        proof = prove_equivalence(equivalence_of(spec, node))
    elif kind == "limit":
        proof = prove_limit(_limit(spec, node))
    elif kind == "invariant":
        proof = prove_invariant(
            Invariant(spec, *_given(fields.get("given")), loc=node.loc, relation=fields["invariant"])
        )
    else:
        proof = prove_scale_invariant(_scale(spec, node))
    return ClaimResult(spec.name, index, node.loc, expect, proof)


def _validate(node: Node) -> tuple[str, str]:
    if not isinstance(node.value, dict):
        raise SpecError(node.loc, "a claim is a mapping: equivalent_to, limit, invariant or scale_invariant")
    kinds = [k for k in node.value if k in KEYS]
    if len(kinds) != 1:
        raise SpecError(node.loc, f"a claim has exactly one of {', '.join(KEYS)}; got {', '.join(kinds) or 'none'}")
    kind = kinds[0]
    for key, key_loc in (node.key_locs or {}).items():
        if key not in KEYS[kind]:
            raise SpecError(
                key_loc, f"unknown key {key!r} in a {kind} claim; expected one of: {', '.join(sorted(KEYS[kind]))}"
            )
    expect = node.value.get("expect")
    value = expect.value if expect is not None else PROVEN
    if value not in STATUSES:
        raise SpecError(expect.loc, f"expect: {value!r}; expected one of {', '.join(STATUSES)}")
    return kind, value


def _mapping(node: Node | None, what: str) -> dict[str, Node]:
    if node is None:
        return {}
    if not isinstance(node.value, dict):
        raise SpecError(node.loc, f"{what}: expected a mapping")
    return node.value


def _given(node: Node | None) -> tuple[dict[str, Node], dict[str, Node]]:
    """(options, hyperparameters) of a `given:` or `with:` section."""
    fields = _mapping(node, "a specialisation {hyperparameters: ..., options: ...}")
    for key, loc in ((node.key_locs or {}) if node is not None else {}).items():
        if key not in ("hyperparameters", "options"):
            raise SpecError(loc, f"unknown key {key!r}; a specialisation has `hyperparameters` and `options`")
    return _mapping(fields.get("options"), "options"), _mapping(fields.get("hyperparameters"), "hyperparameters")


# --------------------------------------------------------------------------- kinds
def equivalence_of(spec: Spec, node: Node) -> Equivalence:
    fields = node.value
    other = load_other(fields["equivalent_to"], spec)
    a_options, a_hypers = _given(fields.get("given"))
    b_options, b_hypers = _given(fields.get("with"))
    mapping_node = fields.get("map")
    ghosts = [_ghost(name, value) for name, value in _mapping(fields.get("ghost"), "ghost").items()]
    return Equivalence(
        spec,
        other,
        _mapping(mapping_node, "map"),
        a_options,
        b_options,
        a_hypers,
        b_hypers,
        ghosts,
        fields.get("when"),
        node.loc,
        dict(mapping_node.key_locs or {}) if mapping_node is not None else {},
    )


def _ghost(name: str, node: Node) -> Ghost:
    fields = _mapping(node, f"ghost `{name}`")
    for key in ("init", "update"):
        if key not in fields:
            raise SpecError(node.loc, f"ghost `{name}` needs `{key}`")
    extra = set(fields) - {"init", "update"}
    if extra:
        raise SpecError(node.loc, f"ghost `{name}`: unknown key(s) {', '.join(sorted(extra))}; expected init, update")
    return Ghost(name, fields["init"], fields["update"])


def _limit(spec: Spec, node: Node) -> Limit:
    fields = _mapping(node.value["limit"], "limit: {expr: ..., as: ..., equals: ...}")
    for key in ("expr", "as", "equals"):
        if key not in fields:
            raise SpecError(
                node.value["limit"].loc, f"limit: missing `{key}` (limit: {{expr: ..., as: step -> oo, equals: ...}})"
            )
    options, hypers = _given(node.value.get("given"))
    return Limit(spec, options, hypers, node.loc, fields["expr"], fields["as"], fields["equals"])


def _scale(spec: Spec, node: Node) -> ScaleInvariant:
    fields = _mapping(node.value["scale_invariant"], "scale_invariant: {expr: ..., of: ...}")
    for key in ("expr", "of"):
        if key not in fields:
            raise SpecError(node.value["scale_invariant"].loc, f"scale_invariant: missing `{key}`")
    of = fields["of"].value
    if not isinstance(of, str) or not of.isidentifier():
        raise SpecError(fields["of"].loc, "scale_invariant: `of` names a state or a value of the update")
    options, hypers = _given(node.value.get("given"))
    return ScaleInvariant(spec, options, hypers, node.loc, fields["expr"], of)


# --------------------------------------------------------------------------- other specs
def load_other(ref: Node | str | Spec, spec: Spec | None = None) -> Spec:
    """The spec a claim names: a catalog name, a name beside the claiming spec, forms/NAME,
    or a path relative to the claiming spec's file."""
    if isinstance(ref, Spec):
        return ref
    loc = ref.loc if isinstance(ref, Node) else None
    text = ref.value if isinstance(ref, Node) else ref
    if not isinstance(text, str) or not text.strip():
        raise SpecError(loc, "equivalent_to: expected a spec name or path")
    here = spec.path.parent if spec is not None and spec.path is not None else Path.cwd()
    path = find_spec_path(text, here)
    if path is None:
        raise SpecError(
            loc, f"equivalent_to: no spec {text!r} (a catalog name, forms/NAME or a path relative to {here})"
        )
    stat = path.stat()
    return _load(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def find_spec_path(text: str, here: Path | None = None) -> Path | None:
    suffixed = text if text.endswith((".yaml", ".yml")) else f"{text}.yaml"
    candidates = []
    if "/" not in text and not text.endswith((".yaml", ".yml")):
        candidates.append(catalog.path_of(text))
    for base in (here, catalog.specs_dir(), catalog.specs_dir() / "forms"):
        if base is not None:
            candidates += [base / text, base / suffixed]
    return next((p for p in candidates if p is not None and p.is_file()), None)


@lru_cache(maxsize=64)
def _load(path: str, mtime_ns: int, size: int) -> Spec:
    """A parsed spec, kept while its file is unchanged (claims often name the same spec)."""
    from ..parse import load_path

    return load_path(path)
