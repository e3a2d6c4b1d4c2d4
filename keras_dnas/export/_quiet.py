"""Capture what native code writes to the process's stdout / stderr file descriptors.

TensorFlow's converter (MLIR, absl logging) and TFLite Micro print from C++ straight to file
descriptors 1 and 2, so `contextlib.redirect_stdout` does not see them. `captured_fds` points
the descriptors at a temporary file for the duration of a block and hands the text back, so the
caller can drop it on success and show it on failure.
"""

import contextlib
import ctypes
import os
import sys
import tempfile


def _flush_all():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    try:  # C stdio buffers (a redirected stdout is fully buffered).
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):
        pass


class CapturedOutput:
    """Text written to the captured descriptors; filled when the block exits."""

    def __init__(self):
        self.text = ""

    def tail(self, max_chars=4000):
        """The last `max_chars` characters of the captured text (whole lines)."""
        text = self.text.strip()
        if len(text) <= max_chars:
            return text
        cut = text[-max_chars:]
        return "...\n" + cut[cut.find("\n") + 1 :]


@contextlib.contextmanager
def captured_fds(fds=(1, 2)):
    """Redirect the file descriptors `fds` into one temporary file inside the block.

    Yields a `CapturedOutput` whose `text` holds everything written (by Python or native code)
    once the block has exited, also when it exits with an exception.
    """
    captured = CapturedOutput()
    _flush_all()
    saved = {}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in fds:
                try:
                    copy = os.dup(fd)
                except OSError:  # descriptor not open (e.g. a GUI process): nothing to hide
                    continue
                saved[fd] = copy
                os.dup2(sink.fileno(), fd)
            yield captured
        finally:
            _flush_all()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", errors="replace")
