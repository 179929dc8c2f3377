"""YAML loading that remembers where every value came from.

PyYAML's composer gives nodes with marks; we turn them into plain Python values
wrapped so that each mapping key, mapping and scalar keeps its location. Only the safe
subset is used: no tags, no anchors that construct objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from .errors import Loc, SpecError


@dataclass
class Node:
    """A YAML value with its location. `value` is a str/int/float/bool/None, a list of
    Node, or a dict of str -> Node. `key_locs` holds the location of each mapping key."""

    value: Any
    loc: Loc
    style: str | None = None  # scalar style: None (plain), "'", '"', "|", ">"
    key_locs: dict[str, Loc] | None = None
    raw_lines: list[str] | None = None  # file lines, for block-scalar positions

    def plain(self) -> Any:
        """The value with locations stripped."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value


def _loc(file: str, mark) -> Loc:
    return Loc(file, mark.line + 1, mark.column + 1)


_RESOLVER = yaml.SafeLoader


_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null")}
_ALLOWED_TAGS = _PLAIN_TAGS | {"tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"}


def _check_tag(node: yaml.Node, file: str) -> None:
    if node.tag not in _ALLOWED_TAGS:
        raise SpecError(_loc(file, node.start_mark), f"tag {node.tag!r} is not allowed in a spec")


# Budgets (a spec is untrusted input): nesting, and values after alias expansion.
MAX_DEPTH = 32
MAX_VALUES = 20_000
# Control characters break the generated modules' docstrings and comments; bidirectional
# overrides hide text. Newline and tab are allowed.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")


def _check_events(text: str, file: str) -> None:
    """Refuse a document nested deeper than MAX_DEPTH before it is composed (the composer
    recurses), scanning PyYAML's events, which its parser makes without recursion."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise SpecError(
                        _loc(file, event.start_mark), f"the YAML is nested more than {MAX_DEPTH} levels deep"
                    )
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError:
        return  # reported, with its place, by the composer


class _Budget:
    """Counts values as aliases expand (a 'billion laughs' document is small until then)."""

    def __init__(self) -> None:
        self.values = 0

    def spend(self, file: str, node: yaml.Node) -> None:
        self.values += 1
        if self.values > MAX_VALUES:
            raise SpecError(
                _loc(file, node.start_mark),
                f"the spec has more than {MAX_VALUES} YAML values once aliases are expanded",
            )


def _scalar(node: yaml.ScalarNode, file: str, lines: list[str]) -> Node:
    if node.tag not in _PLAIN_TAGS:
        # dates and the like stay the text written; explicit tags are refused
        if node.tag.startswith("!") or "python" in node.tag or node.tag.endswith((":seq", ":map")):
            _check_tag(node, file)
        _check_text(node.value, node, file)
        return Node(node.value, _loc(file, node.start_mark), node.style, raw_lines=lines)
    loader = yaml.SafeLoader("")
    try:
        value = loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        raise SpecError(_loc(file, node.start_mark), f"bad scalar: {exc}") from None
    finally:
        loader.dispose()
    if isinstance(value, str):
        _check_text(value, node, file)
    return Node(value, _loc(file, node.start_mark), node.style, raw_lines=lines)


def _check_text(value: str, node: yaml.ScalarNode, file: str) -> None:
    bad = _CONTROL.search(value)
    if bad:
        raise SpecError(
            _loc(file, node.start_mark),
            f"control character U+{ord(bad.group()):04X} in text (at offset {bad.start()}); only newline and tab are allowed",
        )


def _convert(node: yaml.Node, file: str, lines: list[str], budget: _Budget) -> Node:
    budget.spend(file, node)
    if isinstance(node, yaml.ScalarNode):
        return _scalar(node, file, lines)
    if not isinstance(node, yaml.ScalarNode):
        _check_tag(node, file)
    if isinstance(node, yaml.SequenceNode):
        return Node([_convert(n, file, lines, budget) for n in node.value], _loc(file, node.start_mark))
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Node] = {}
        key_locs: dict[str, Loc] = {}
        for key_node, value_node in node.value:
            key_loc = _loc(file, key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError(key_loc, "a mapping key must be a plain name")
            key = str(key_node.value)
            if key == "<<":
                raise SpecError(key_loc, "YAML merge keys are not allowed in a spec; use `extends:`")
            if key in out:
                raise SpecError(key_loc, f"duplicate key {key!r} (first at line {key_locs[key].line})")
            out[key] = _convert(value_node, file, lines, budget)
            key_locs[key] = key_loc
        return Node(out, _loc(file, node.start_mark), key_locs=key_locs)
    raise SpecError(_loc(file, node.start_mark), "unsupported YAML node")


def load_yaml(text: str, file: str) -> Node:
    """Parse YAML text into a located Node tree; YAML errors become SpecError."""
    try:
        _check_events(text, file)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = _loc(file, mark) if mark else Loc(file, 1, 1)
        raise SpecError(loc, f"invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise SpecError(Loc(file, 1, 1), f"invalid YAML: {exc}") from None
    if root is None:
        raise SpecError(
            Loc(file, 1, 1), "empty spec: expected a mapping with `name`, `hyperparameters`, `state`, `update`"
        )
    node = _convert(root, file, text.splitlines(), _Budget())
    if not isinstance(node.value, dict):
        raise SpecError(node.loc, "a spec must be a YAML mapping")
    return node


def scalar_text_origin(node: Node) -> tuple[int, int]:
    """(line, col) in the file of the first character of a string scalar's content, and
    for block scalars the first content line; used to map expression offsets to the file."""
    line, col = node.loc.line, node.loc.col
    if node.style in ("|", ">"):
        lines = node.raw_lines or []
        for i in range(line, len(lines)):  # content starts on the line after the indicator
            text = lines[i]
            if text.strip():
                return i + 1, len(text) - len(text.lstrip()) + 1
        return line + 1, 1
    if node.style in ("'", '"'):
        return line, col + 1
    return line, col
