"""Which Python name holds which IR value, and which storage each name may share.

The schedule updates buffers in place, so before it writes into a name it must know that
the value the name holds is dead (read by no later value) and that no live name aliases
the same storage (`m_hat = exp_avg` is a view, not a copy). Every name made is taken for
the rest of the function, and on the foreach path its plural (the list) is taken too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import sympy

from ....expr import GRAD, PARAM
from ..prepare import Prepared, plural, tidy_names
from .terms import count


@dataclass
class BufferState:
    """What the scheduler knows about the buffers at a point of the program (a branch
    copies it: each side starts from the same knowledge)."""

    display: dict = field(default_factory=dict)  # IR name -> the Python name holding it
    bound: dict = field(default_factory=dict)  # Python name -> IR name it holds now
    owned: dict = field(default_factory=dict)  # Python name -> a temporary this code made
    buffers: dict = field(default_factory=dict)  # Python name -> ids of the storage it may alias
    current: dict = field(default_factory=dict)  # param/state -> IR name of its latest version
    memo: dict = field(default_factory=dict)  # expression -> Python name, within one value


class Bindings:
    def __init__(self, p: Prepared, foreach: bool, reserved: set[str]):
        self.p = p
        self.foreach = foreach
        self.base = tidy_names(p.values)  # IR name -> the readable name it is spelled after
        self.taken = set(reserved)
        self.st = BufferState()
        self.ids = 0  # storage made so far (never rewound: an id is never reused)
        self.index = 0  # the value being scheduled: a value last read before it is dead
        self.value_expr = sympy.Integer(0)  # that whole value: what it still reads
        program = p.program
        for name in [PARAM, GRAD] + program.input_names + [s.name for s in program.states]:
            self.bind(name, name, owned=False, buffers={f"home:{name}"})
        for name in program.hyper_names + [s.name for s in program.group_states] + [g.name for g in p.globals]:
            self.st.display[name] = name
        self.st.current = {c: c for c in p.chains}

    def snapshot(self) -> BufferState:
        return copy.deepcopy(self.st)

    # ------------------------------------------------------------------ names
    def new_name(self, base: str) -> str:
        """`base`, or `base_1`, `base_2`, ... : the first one free (with its plural)."""

        def free(n):
            return n not in self.taken and (not self.foreach or plural(n) not in self.taken)

        name, k = base, 1
        while not free(name):
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        self.taken.add(plural(name))
        return name

    def host_name(self, v) -> str:
        """A new name for a host value (a Python float), shown for v from now on."""
        name = self.new_name(self.base[v.name])
        self.st.display[v.name] = name
        return name

    def temp_name(self, v) -> str:
        """The Python name for a value: its spec variable, rebinding that name when what it
        held is dead (`grad = grad.add(...)`)."""
        base = self.base[v.name]
        held = self.st.bound.get(base)
        if held is not None and base not in self.p.chains and self.dead(held):
            return base
        return self.new_name(base)

    def free_to_rebind(self, name: str, expr) -> bool:
        """`name` may take a new value inside this value's work: what it holds is read only
        by `expr` (`grad = grad.add(momentum_buffer, alpha=momentum)`)."""
        held = self.st.bound.get(name)
        if held is None or name in self.p.chains or not self.dead(held):
            return False
        return count(self.value_expr, held) == count(expr, held)

    # ------------------------------------------------------------------ storage
    def bind(self, ir: str, name: str, owned: bool | None = None, buffers=None) -> None:
        """`name` now holds IR value `ir` (and, when given, whether this code made its storage
        and which storage it may share)."""
        self.st.display[ir] = name
        self.st.bound[name] = ir
        if owned is not None:
            self.st.owned[name] = owned
        if buffers is not None:
            self.st.buffers[name] = set(buffers)

    def bind_as(self, ir: str, name: str) -> None:
        """`name`, just made, now holds `ir`, with what is known of its storage."""
        self.bind(ir, name, owned=self.st.owned.get(name, False), buffers=self.st.buffers.get(name))

    def fresh_buffer(self, name: str) -> None:
        """`name` holds storage of its own, made by this code."""
        self.ids += 1
        self.st.owned[name] = True
        self.st.buffers[name] = {f"tmp{self.ids}"}

    def alias(self, name: str, source: str) -> None:
        """`name` is another name for the storage of `source` (not this code's to update)."""
        self.st.owned[name] = False
        self.st.buffers[name] = set(self.st.buffers.get(source, set()))

    def hand_over(self, holder: str, name: str) -> None:
        """`name` takes over the storage of `holder`, a temporary that dies here."""
        self.st.owned[holder] = False
        self.st.owned[name] = True
        self.st.buffers[name] = set(self.st.buffers.get(holder, set()))

    def dead(self, ir: str) -> bool:
        return self.p.last_use.get(ir, -1) <= self.index

    def aliased(self, holder: str, keep: str) -> bool:
        """Another live name (other than one holding `keep`) may alias the storage of `holder`."""
        ids = self.st.buffers.get(holder, set())
        for name, ir in self.st.bound.items():
            if name != holder and ir != keep and not self.dead(ir) and ids & self.st.buffers.get(name, set()):
                return True
        return False

    def tensor_symbols(self, expr) -> list[sympy.Symbol]:
        return sorted((s for s in expr.free_symbols if not self.p.is_scalar(s)), key=lambda s: s.name)

    def conflicts(self, holder: str, x: str, expr) -> bool:
        """expr reads, other than through `x`, storage that `holder` may share: writing into
        holder first would change what it reads."""
        ids = self.st.buffers.get(holder, set())
        return any(
            s.name != x and ids & self.st.buffers.get(self.st.display.get(s.name, ""), set())
            for s in self.tensor_symbols(expr)
        )
