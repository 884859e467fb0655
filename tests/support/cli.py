"""Run a command's ``main`` in this process and see what a shell would: the exit status, and stdout / stderr
captured at the file-descriptor level (pytest's ``capfd``: prints, warnings and logging alike). An exception that
escapes ``main`` fails the test, where a subprocess would print a traceback. Each module keeps one real subprocess
run of its command for the user's path; the error cases run in process (a subprocess costs seconds of imports)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence

import pytest


def run_main(main: Callable[[list[str]], int], args: Sequence[str],
             capfd: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess:
    capfd.readouterr()  # drop what came before
    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse's usage errors and --help
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)
