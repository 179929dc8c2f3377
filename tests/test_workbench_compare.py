"""`optgen compare`: the files it writes, its tables, determinism, and that the comparison is
a real one (a tuned optimizer beats a badly tuned one; the search keeps the best lr)."""

from __future__ import annotations

import io
import json
import math
import sys

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from optgen.cli import main
from optgen.workbench.cli import contenders
from optgen.workbench.compare import Settings, compare
from optgen.workbench.progress import Progress

SMALL = ["--steps", "25", "--digits-steps", "12", "--seeds", "2", "--functions", "quadratic,saddle", "-q"]


def _run(tmp_path, name, *specs, extra=()):
    out = tmp_path / name
    assert main(["compare", *specs, "-o", str(out), *SMALL, *extra]) == 0
    return out


def _rows(table_lines: list[str]) -> list[str]:
    return [line.split("|")[1].strip() for line in table_lines[2:]]


def _tables(md: str) -> list[list[str]]:
    tables, current = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


def test_files_and_tables(tmp_path, capsys):
    out = _run(tmp_path, "a", "adam", "sgd:momentum=0.9", "lion:lr=3e-4")
    for stem in ("fn-quadratic", "fn-saddle", "digits"):
        for ext in ("png", "svg"):
            assert (out / f"{stem}.{ext}").stat().st_size > 1000
    assert not (out / "fn-rosenbrock.png").exists()
    md = (out / "report.md").read_text()
    labels = ["adam", "sgd(momentum=0.9)", "lion(lr=3e-4)"]
    tables = _tables(md)
    assert len(tables) == 4  # summary, two functions, digits
    for table in tables:
        assert _rows(table) == labels
    digits = tables[-1]
    assert "test accuracy" in digits[0] and all("%" in row for row in digits[2:])
    assert "no search for lion(lr=3e-4)" in md
    assert "![digits](digits.png)" in md
    data = json.loads((out / "results.json").read_text())
    assert data["digits"]["lion(lr=3e-4)"]["lr"] == 3e-4
    assert len(data["digits"]["adam"]["curves"]) == 2
    assert capsys.readouterr().err == ""  # -q: no progress bar


def _without_timing(out):
    data = json.loads((out / "results.json").read_text())
    data.pop("timing")
    return data


def test_deterministic_with_a_seed(tmp_path):
    a = _run(tmp_path, "a", "adamw", "sgd", extra=["--seed", "3"])
    b = _run(tmp_path, "b", "adamw", "sgd", extra=["--seed", "3"])
    c = _run(tmp_path, "c", "adamw", "sgd", extra=["--seed", "4"])
    assert _without_timing(a) == _without_timing(b)
    assert _without_timing(a)["digits"] != _without_timing(c)["digits"]


def test_tuned_beats_badly_tuned_on_the_quadratic():
    entrants = contenders(["sgd:lr=1e-4", "sgd", "adam:lr=1e-4"])
    settings = Settings(functions=("quadratic",), steps_2d=60, digits=False)
    result = compare(entrants, settings)
    paths = result.paths["quadratic"]
    # the searched sgd picks the grid's best lr, and it beats both badly tuned runs by far
    assert paths["sgd"].lr == min(paths["sgd"].tried, key=lambda t: t[1])[0]
    assert len(paths["sgd"].tried) == len(settings.grid_2d)
    assert paths["sgd"].final_gap < 1e-3 * min(paths["sgd(lr=1e-4)"].final_gap, paths["adam(lr=1e-4)"].final_gap)
    assert result.ranking("quadratic")[0] == "sgd"
    assert all(math.isfinite(gap) for _, gap in paths["sgd(lr=1e-4)"].tried)


def test_divergence_is_reported_not_chosen():
    (entrant,) = contenders(["sgd"])
    result = compare([entrant], Settings(functions=("rosenbrock",), steps_2d=40, digits=False))
    path = result.paths["rosenbrock"]["sgd"]
    assert any(math.isinf(gap) for _, gap in path.tried)  # lr = 3.2 blows up on Rosenbrock
    assert not path.diverged and math.isfinite(path.final_gap)


@pytest.mark.parametrize(
    "args, message",
    [
        (["nosuch"], "no catalog spec named 'nosuch'"),
        (["adam:momentum=0.9"], "Adam has no hyperparameter momentum"),
        (["adam:lr=fast"], "'fast' is not a number"),
        (["adam", "--functions", "himmelblau"], "no 2-D function himmelblau"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["compare", *args, "-o", str(out), "-q"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_progress_bar_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = Progress(4, stream=stream)
        bar.advance("adam rosenbrock", 2)
        bar.close()
    assert "[##############..............] 2/4" in tty.getvalue()
    assert pipe.getvalue() == ""


def test_missing_plotting_package_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert main(["compare", "adam", "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "needs matplotlib" in err and "pip install 'optgen[workbench]'" in err
    assert not (tmp_path / "out").exists()


def test_help_lists_the_functions_that_exist():
    from optgen.workbench.cli import _function_names
    from optgen.workbench.problems import FUNCTIONS

    assert _function_names() == list(FUNCTIONS)


def test_digits_are_evaluated_in_eval_mode_for_a_spec_with_modes(monkeypatch):
    """Schedule-free trains at y and is evaluated at x: each evaluation sees eval mode, each
    step train mode."""
    import optgen
    from optgen.workbench import compare as compare_module
    from optgen.workbench.compare import Contender, train_digits
    from optgen.workbench.problems import load_digits

    base = optgen.compile(optgen.load("sgdschedulefree"))
    made, seen = [], []

    class Recording(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

        def step(self, closure=None):
            seen.append(("step", self.param_groups[0]["train_mode"]))
            return super().step(closure)

    evaluate = compare_module._evaluate

    def recording_evaluate(*args):
        seen.append(("eval", made[0].param_groups[0]["train_mode"]))
        evaluate(*args)

    monkeypatch.setattr(compare_module, "_evaluate", recording_evaluate)
    train_digits(Contender("sf", Recording, {}), load_digits(), 0.1, 0, 6, Settings(eval_every=3))
    assert [kind for kind, _ in seen] == ["eval", "step", "step", "step", "eval", "step", "step", "step", "eval"]
    assert all(mode is (kind == "step") for kind, mode in seen)
