"""Run untrusted Python (a model's answer) in a limited subprocess, and say whether its tests passed.

:func:`run` writes the answer (``code``) and its tests into a fresh scratch directory, starts
``python -I -S -B -u`` there in a new session (so a new process group), waits at most ``wall_s``
seconds, kills the whole process group in every case, reads the tails of stdout and stderr and removes
the scratch directory. The answer passes when the child ran the code and then the tests without an
exception and printed the pass marker (a random nonce it reads from stdin before any untrusted code
runs), so an answer that exits early with status 0 (``sys.exit(0)``, ``os._exit(0)``) does not pass.

What is enforced (Linux, no root needed):

* CPU time: ``RLIMIT_CPU`` (SIGXCPU at ``cpu_s``, SIGKILL one second later).
* Memory: ``RLIMIT_AS`` = ``mem_mb`` of address space: a large allocation raises ``MemoryError`` in the
  child; the caller is another process and is not touched.
* Wall clock: the parent kills the child's process group after ``wall_s`` (a sleeping or blocked child
  uses no CPU time, so ``RLIMIT_CPU`` alone would not stop it).
* Files: ``RLIMIT_FSIZE`` caps each file the child writes, stdout and stderr included (they go to files
  in the scratch directory, not to pipes, so a print loop cannot fill the caller's memory);
  ``RLIMIT_NOFILE`` caps open descriptors; ``RLIMIT_CORE`` = 0.
* Processes: an audit hook (``sys.addaudithook``, installed before the untrusted code runs, and
  irremovable from Python) refuses ``os.fork``/``forkpty``/``posix_spawn``/``exec*``/``system``,
  ``subprocess.Popen``, ``os.kill``/``killpg``, ``setrlimit`` (root could raise the hard limits), and
  importing ``ctypes``, ``_posixsubprocess``, ``multiprocessing``, ``pty`` and ``resource``. Threads are
  allowed: they share the process's CPU-time and memory limits. ``RLIMIT_NPROC`` = 0 is set as well, which
  stops ``fork(2)`` at the kernel for an unprivileged user; **root ignores RLIMIT_NPROC**, so as root
  the audit hook is the guard, and the process-group kill cleans up whatever got through.
* Network: the audit hook refuses every ``socket.*`` event (creating, connecting, binding, resolving).
* Files outside the scratch directory: the hook refuses ``open`` for writing, and removing, renaming,
  linking, ``chmod``/``chown``/``utime`` and ``mkdir``, outside the scratch directory (reading is allowed:
  the standard library has to load).
* Environment: a minimal one (``PATH``, ``LANG``, ``HOME`` and ``TMPDIR`` = the scratch directory); ``-I``
  ignores ``PYTHON*`` variables and the user site, ``-S`` skips ``site`` (no site-packages: the answer
  sees the standard library only).

What is *not* enforced without root (say so before trusting it with a hostile model):

* No network namespace, seccomp filter, chroot or user namespace (``unshare`` needs privileges that this
  machine does not give). The audit hook works at the Python level: code that reaches raw system calls
  (a C extension, ``ctypes`` if it were importable) would bypass it. We block the imports that give that
  reach, but the hook is a tripwire, not a jail.
* Total disk use: only per-file size is capped; the wall and CPU limits bound how much can be written.
* Reading files the caller's user can read (the answer has no network to send them anywhere).
* A hostile answer that digs the nonce out of the interpreter (``gc``, ``sys._getframe``) can forge a
  pass (refusing ``sys._getframe`` would break ``namedtuple``, ``enum`` and ``typing``). The sandbox
  protects the *host*; the pass marker guards against accidental early exits, not against an
  adversary optimising the reward (MOPD's dense teacher reward is what the paper relies on there).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

__all__ = ["SandboxResult", "run"]

_TAIL = 2000  # characters of stdout/stderr kept in the result
_PASS = "MIMO-SANDBOX-PASS "

# The child's entry point. It sets its own resource limits (not a preexec_fn: that is unsafe when the
# caller has threads, as a torch process does), reads the nonce, installs the audit hook, then runs
# solution.py and tests.py in one namespace. It imports everything it needs before the hook goes in.
_RUNNER = r'''
import os, resource, sys, traceback

def _limit(kind, value):
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):  # RLIMIT_NPROC can be refused; the audit hook still stands
        pass

def _main():
    cpu, mem_mb, fsize_mb, nofile = (int(a) for a in sys.argv[1:5])
    # Hard CPU limit one second above the soft one: SIGXCPU first, then SIGKILL if it is ignored.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    _limit(resource.RLIMIT_AS, mem_mb << 20)
    _limit(resource.RLIMIT_FSIZE, fsize_mb << 20)
    _limit(resource.RLIMIT_NOFILE, nofile)
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_NPROC, 0)  # stops fork(2) for an unprivileged user; root is exempt
    nonce = sys.stdin.readline().strip()
    scratch = os.path.realpath(os.getcwd())
    refused_imports = {"ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "_multiprocessing",
                       "resource", "pty"}
    refused_events = {"os.fork", "os.forkpty", "os.posix_spawn", "os.posix_spawnp", "os.spawn", "os.exec",
                      "os.system", "os.startfile", "os.kill", "os.killpg", "signal.pthread_kill", "subprocess.Popen",
                      "sys._current_frames", "sys.setprofile", "sys.settrace", "os.chdir",
                      "pty.spawn", "resource.setrlimit", "resource.prlimit"}
    path_events = {"os.remove", "os.rmdir", "os.rename", "os.truncate", "os.chmod", "os.chown", "os.link",
                   "os.symlink", "os.mkdir", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
    def inside(path):
        if isinstance(path, int):  # a file descriptor the child already holds
            return True
        try:
            p = os.path.realpath(os.fsdecode(path))
        except Exception:
            return False
        return p == scratch or p.startswith(scratch + os.sep)
    def hook(event, args):
        if event in refused_events or event.startswith("socket."):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0].split(".")[0] in refused_imports:
            raise PermissionError(f"sandbox: import {args[0]} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))
            if writing and path is not None and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} is not allowed")
        elif event in path_events:
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
            if not all(inside(p) for p in paths):
                raise PermissionError(f"sandbox: {event} outside the scratch directory is not allowed")
    with open("solution.py", encoding="utf-8") as f:
        code = compile(f.read(), "solution.py", "exec")
    with open("tests.py", encoding="utf-8") as f:
        tests = compile(f.read(), "tests.py", "exec")
    write = sys.stdout.write
    flush = sys.stdout.flush
    sys.addaudithook(hook)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
        exec(tests, namespace)
    except BaseException:  # SystemExit too: exiting before the tests ran is not a pass
        traceback.print_exc()
        sys.stderr.flush()
        return 1
    write("\n" + "MIMO-SANDBOX-PASS " + nonce + "\n")
    flush()
    return 0

sys.exit(_main())
'''


@dataclass(frozen=True)
class SandboxResult:
    """How one sandboxed run ended.

    ``killed_by``: ``"wall"`` when the parent killed it at ``wall_s``, ``"cpu"`` when ``RLIMIT_CPU`` did
    (SIGXCPU, or the hard limit's SIGKILL), another signal's name when a signal ended it, else ``None``.
    """

    passed: bool
    returncode: int | None
    timed_out: bool
    killed_by: str | None
    stdout_tail: str
    stderr_tail: str
    seconds: float


def _cpu_seconds(cpu_s: float) -> int:
    return max(1, int(cpu_s + 0.999))  # RLIMIT_CPU counts whole seconds


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * _TAIL))
            return f.read().decode("utf-8", "replace")[-_TAIL:]
    except OSError:
        return ""


def run(code: str, tests: str | None = None, *, cpu_s: float = 2, mem_mb: int = 512, wall_s: float = 5,
        fsize_mb: int = 16, nofile: int = 64, python: str | None = None) -> SandboxResult:
    """Run ``code`` then ``tests`` (Python source, e.g. ``assert`` statements) in one namespace, sandboxed.

    Returns a :class:`SandboxResult`; never raises because of what the code does. ``tests=None`` runs the
    code alone (passed = it ran to the end without an exception).
    """
    scratch = tempfile.mkdtemp(prefix="mimo-sandbox-")
    nonce = secrets.token_hex(16)
    start = time.monotonic()
    timed_out = False
    try:
        for name, text in (("_runner.py", _RUNNER), ("solution.py", code), ("tests.py", tests or "")):
            with open(os.path.join(scratch, name), "w", encoding="utf-8") as f:
                f.write(text)
        out_path, err_path = os.path.join(scratch, "stdout.txt"), os.path.join(scratch, "stderr.txt")
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": scratch, "TMPDIR": scratch}
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [python or sys.executable, "-I", "-S", "-B", "-u", "_runner.py",
                 str(_cpu_seconds(cpu_s)), str(mem_mb), str(fsize_mb), str(nofile)],
                cwd=scratch, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err, close_fds=True,
                start_new_session=True,
            )
        pgid = proc.pid  # start_new_session: the child leads its own process group
        try:
            proc.stdin.write((nonce + "\n").encode())
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # the child died before reading: its exit status says why
        # Reap with wait4 (not Popen.wait) to get the child's CPU time, which tells RLIMIT_CPU's SIGKILL
        # from another one (the kernel's OOM killer, say).
        deadline = start + wall_s
        reaped = None
        while reaped is None:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                reaped = status, usage
            elif time.monotonic() >= deadline:
                timed_out = True
                break
            else:
                time.sleep(0.01)
        # Always: whatever the child started (if anything got past the hook) dies with it.
        _kill_group(pgid)
        if reaped is None:
            _, status, usage = os.wait4(proc.pid, 0)
            reaped = status, usage
        status, usage = reaped
        rc = proc.returncode = os.waitstatus_to_exitcode(status)
        cpu_used = usage.ru_utime + usage.ru_stime
        seconds = time.monotonic() - start
        stdout, stderr = _tail(out_path), _tail(err_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    killed_by = None
    if timed_out:
        killed_by = "wall"
    elif rc is not None and rc < 0:
        sig = signal.Signals(-rc)
        # RLIMIT_CPU sends SIGXCPU at the soft limit and SIGKILL at the hard one (one second later).
        cpu_limit = sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= _cpu_seconds(cpu_s) - 0.05)
        killed_by = "cpu" if cpu_limit else sig.name
    passed = not timed_out and rc == 0 and (_PASS + nonce) in stdout
    if passed:  # the marker is ours, not the answer's output
        stdout = stdout.replace("\n" + _PASS + nonce + "\n", "")
    return SandboxResult(passed, rc, timed_out, killed_by, stdout, stderr, seconds)
