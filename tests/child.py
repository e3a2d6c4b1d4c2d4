"""Scripts that need a fresh Keras process, run in a child kept for the whole test session.

Keras fixes its backend when first imported, and a "reloads without keras_dnas" check needs a
process that never imported keras_dnas: such tests run a script in another interpreter. Starting
one per test costs an interpreter and a Keras (and TensorFlow or JAX) import each, 5-9 s of CPU;
here each kind of child (backend, and whether keras_dnas may be imported) starts once and runs
every test's script in turn, each script in a fresh namespace as `__main__`.

`run(script, backend=...)` returns what `subprocess.run([python, "-c", script, *argv])` would:
a `subprocess.CompletedProcess` with the script's stdout and stderr, returncode 0, or 1 with the
traceback on stderr (a `SystemExit` gives its code). If the child itself dies, its returncode and
the end of its log are returned and the next script gets a new child.

`plain=True`: a child with an empty PYTHONPATH, started outside the repository and running only
such scripts, so keras_dnas is not imported there unless a script imports it.
"""

import atexit
import contextlib
import io
import os
import pickle
import select
import subprocess
import sys
import tempfile
import threading
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `python -c`: drop the current directory from sys.path, then run this file as __main__
_BOOT = "import runpy, sys; sys.path.pop(0); runpy.run_path(sys.argv[1], run_name='__main__')"
_PLAIN = "--plain"
_children = {}  # (backend, plain) -> {"proc", "log"}
_locks = {}  # (backend, plain) -> lock: one script at a time (tests/background.py runs some)
_locks_lock = threading.Lock()


def _stop_all():
    for key in list(_children):
        _stop(key)


def _stop(key):
    child = _children.pop(key, None)
    if child is None:
        return
    proc = child["proc"]
    if proc.poll() is None:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    child["log"].close()


def _child(backend, plain):
    key = (backend, plain)
    child = _children.get(key)
    if child is not None and child["proc"].poll() is None:
        return child
    _stop(key)
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    if plain:
        env["PYTHONPATH"] = ""
        cwd = tempfile.gettempdir()
    else:
        env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
        cwd = ROOT
    log = tempfile.TemporaryFile()
    argv = [sys.executable, "-c", _BOOT, os.path.abspath(__file__)] + ([_PLAIN] if plain else [])
    proc = subprocess.Popen(argv, cwd=cwd,
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
    if not _children:
        atexit.register(_stop_all)
    _children[key] = child = {"proc": proc, "log": log}
    return child


def run(script, backend="tensorflow", *, plain=False, argv=(), cwd=None, env=None, timeout=1200):
    """Run `script` (Python source) as `__main__` in the session's child for `backend`."""
    with _locks_lock:
        lock = _locks.setdefault((backend, plain), threading.Lock())
    with lock:
        return _run(script, backend, plain, argv, cwd, env, timeout)


def _run(script, backend, plain, argv, cwd, env, timeout):
    child = _child(backend, plain)
    proc = child["proc"]
    request = {"script": script, "argv": [str(a) for a in argv], "cwd": cwd,
               "env": dict(env or {})}
    try:
        pickle.dump(request, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            proc.kill()
            raise subprocess.TimeoutExpired(["child", backend], timeout)
        reply = pickle.load(proc.stdout)
    except (EOFError, BrokenPipeError, pickle.UnpicklingError):
        proc.wait()
        child["log"].seek(0)
        text = child["log"].read().decode("utf-8", errors="replace")[-6000:]
        _stop((backend, plain))
        return subprocess.CompletedProcess(["child", backend], proc.returncode or 1, "", text)
    return subprocess.CompletedProcess(["child", backend], reply["returncode"], reply["stdout"],
                                       reply["stderr"])


def _serve_one(request):
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd, saved_env = sys.argv, os.getcwd(), dict(os.environ)
    sys.argv = ["-c", *request["argv"]]
    os.environ.update(request["env"])
    code = 0
    try:
        if request["cwd"]:
            os.chdir(request["cwd"])
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                exec(compile(request["script"], "<script>", "exec"), {"__name__": "__main__"})
            except SystemExit as e:
                if e.code is None or isinstance(e.code, int):
                    code = e.code or 0
                else:
                    print(e.code, file=sys.stderr)
                    code = 1
            except BaseException:  # noqa: BLE001 - reported to the test like a child's crash
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return {"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def _serve():
    if _PLAIN not in sys.argv:  # scripts import tests.* and this copy of keras_dnas
        sys.path.insert(0, ROOT)
    reply = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what native code prints goes to the log, not into the replies
    while True:
        try:
            request = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        pickle.dump(_serve_one(request), reply, protocol=pickle.HIGHEST_PROTOCOL)
        reply.flush()


if __name__ == "__main__":
    _serve()
