"""Property-based fuzzing of the command line: any argument list ends in exit status 2
with a one-line message, or reaches the point where work would start, never in a traceback.

The functions that do the work (training, spectra, comparisons, the report and the
figures) are replaced by one that raises ``Started``, so no example runs a real job.
"""

from __future__ import annotations

import argparse
import string
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rezero_dynamics.cli as cli
import rezero_dynamics.diagnose
import rezero_dynamics.studies
import rezero_dynamics.training

COMMANDS = ("spectrum", "train", "compare", "reproduce", "plot", "diagnose")


class Started(BaseException):
    """Raised where a command would start its work; the arguments were accepted."""


def _start(*args, **kwargs):
    raise Started


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # default output folders land here
    monkeypatch.setattr(cli, "spectrum_study", _start)
    monkeypatch.setattr(rezero_dynamics.training, "train", _start)
    monkeypatch.setattr(rezero_dynamics.studies, "compare", _start)
    monkeypatch.setattr(rezero_dynamics.studies, "reproduce", _start)
    monkeypatch.setattr(sys.modules["rezero_dynamics.studies.reproduce"], "write_figures", _start)
    monkeypatch.setattr(rezero_dynamics.diagnose, "diagnose_model", _start)
    monkeypatch.setattr(rezero_dynamics.diagnose, "diagnose_folder", _start)


def _options(command: str) -> list[argparse.Action]:
    commands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in commands.choices[command]._actions if a.option_strings and "--help" not in a.option_strings]


def _values(action: argparse.Action) -> st.SearchStrategy[str]:
    """Values near the valid space: choices, numbers of every sign and kind, lists, junk."""
    numbers = st.one_of(
        st.integers(-3, 10**6).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["0", "-0", "1e308", "1e-320", "nan", "-inf", "0x10", "1_000"]),
    )
    pieces = st.one_of(numbers, st.sampled_from(["rezero", "pre_norm", "post_norm", "none", "mlp", "cpu", "cuda:9"]))
    junk = st.text(alphabet=string.printable, max_size=12)
    strategies = [numbers, junk, st.lists(pieces, min_size=0, max_size=4).map(",".join)]
    if action.choices:
        strategies.insert(0, st.sampled_from(list(action.choices)))
    return st.one_of(*strategies)


@st.composite
def argument_lists(draw, command: str) -> list[str]:
    options = _options(command)
    argv = [command]
    if command in ("plot", "diagnose"):
        targets = [".", "missing", "mlp", "transformer", "model.py", "model.py:build"]
        argv.append(draw(st.one_of(st.sampled_from(targets), st.text(alphabet=string.printable, max_size=10))))
    for _ in range(draw(st.integers(0, 6))):
        if not options or draw(st.integers(0, 9)) == 0:  # an option that does not exist, or an abbreviation
            name = draw(st.from_regex(r"--?[a-z][a-z-]{0,10}", fullmatch=True))
            if not ("--help".startswith(name) and name.startswith("--h")) and name != "-h":  # help exits 0
                argv.append(name)
            continue
        action = draw(st.sampled_from(options))
        argv.append(draw(st.sampled_from(action.option_strings)))
        if action.nargs != 0 and draw(st.integers(0, 19)):  # sometimes leave the value out
            argv.append(draw(_values(action)))
    return argv


def _check(argv: list[str], capsys) -> None:
    try:
        status = cli.main(argv)
    except SystemExit as exit_:
        status = exit_.code
    except Started:
        capsys.readouterr()
        return
    err = capsys.readouterr().err
    assert "Traceback" not in err, (argv, err)
    assert status == 2, (argv, status, err)
    assert err.startswith("rezero-dynamics"), (argv, err)
    assert "error: " in err, (argv, err)


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_fuzz_never_traceback(command, no_work, capsys):
    @FUZZ
    @given(argument_lists(command))
    def check(argv):
        _check(argv, capsys)

    check()


def test_cli_fuzz_accepts_defaults(no_work, capsys):
    """The fuzz harness can tell acceptance from rejection: defaults reach the work."""
    for command in ("spectrum", "train", "compare", "reproduce"):
        with pytest.raises(Started):
            cli.main([command, "--output-dir", f"out-{command}"])
