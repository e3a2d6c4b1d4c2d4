"""Whether this process is a `keras-dnas` command that needs neither Keras nor TensorFlow.

`keras-dnas targets` prints plain data (the targets' JSON files). Importing Keras imports its
backend (TensorFlow: seconds), so `keras_dnas/__init__.py` skips its imports in such a process
and loads them on first use of anything else. Read from the process's own command line: the
console script (`keras-dnas targets`) or `python -m keras_dnas.cli targets`.
"""

import os
import sys

#: `keras-dnas` commands that read plain data only (`keras_dnas.targets`)
COMMANDS = ("targets",)
#: the package's modules those commands import (none imports Keras)
MODULES = ("targets", "cli", "vocabulary")
_PROGRAMS = ("keras-dnas", "keras-dnas.exe", "keras-dnas-script.py")
_MODULE = "keras_dnas.cli"
_state = {"keras": False}


def cli_arguments():
    """The arguments after the program of this process's `keras-dnas` command line, or None
    when the process is not that command."""
    orig = list(getattr(sys, "orig_argv", None) or [])
    for i, arg in enumerate(orig[:-1]):
        if arg == "-m" and orig[i + 1] == _MODULE:
            return orig[i + 2:]
    if sys.argv and os.path.basename(sys.argv[0]) in _PROGRAMS:
        return sys.argv[1:]
    return None


def runs_without_keras():
    """True in a `keras-dnas targets` process until `keras_needed()`."""
    if _state["keras"]:
        return False
    args = cli_arguments()
    return bool(args) and args[0] in COMMANDS


def keras_needed():
    """From now on `keras_dnas` imports Keras (something beyond the light command was used)."""
    _state["keras"] = True


def keras_was_needed():
    return _state["keras"]
