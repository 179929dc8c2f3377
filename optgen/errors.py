"""Errors that point at a place in a spec file."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """A position in a spec file: 1-based line and column."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class SpecError(Exception):
    """A spec is malformed. Printed as `file:line:col: message`; the CLI exits 2."""

    def __init__(self, loc: Loc | None, message: str):
        self.loc = loc
        self.message = message
        super().__init__(f"{loc}: {message}" if loc else message)


class CompileError(SpecError):
    """A well-formed spec asks for something the compiler cannot do."""


class SetupError(Exception):
    """The installation lacks something optgen needs (a formatter, a compiler). The CLI
    prints the message and exits 2."""
