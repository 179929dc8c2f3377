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


class SpecErrors(SpecError):
    """Several independent errors of one spec, reported together: `errors` in file order,
    printed one `file:line:col: message` per line. `loc` and `message` are the first's, so a
    caller that handles one SpecError still has a located message."""

    def __init__(self, errors: list[SpecError]):
        flat = [e for err in errors for e in (err.errors if isinstance(err, SpecErrors) else [err])]
        unique = list({str(e): e for e in flat}.values())
        self.errors = sorted(unique, key=_position)
        super().__init__(self.errors[0].loc, self.errors[0].message)
        self.args = ("\n".join(str(e) for e in self.errors),)

    def __str__(self) -> str:
        return self.args[0]

    @staticmethod
    def of(errors: list[SpecError]) -> SpecError:
        """The one error, or all of them as a SpecErrors."""
        combined = SpecErrors(errors)
        return combined.errors[0] if len(combined.errors) == 1 else combined


def _position(error: SpecError) -> tuple:
    loc = error.loc
    return (0, loc.file, loc.line, loc.col) if loc else (1, "", 0, 0)


class CompileError(SpecError):
    """A well-formed spec asks for something the compiler cannot do."""


class SetupError(Exception):
    """The installation lacks something optgen needs (a formatter, a compiler). The CLI
    prints the message and exits 2."""
