"""New Python processes that start with TensorFlow already imported: `run` and `Popen` as in `subprocess`.

Importing TensorFlow costs about 4 CPU-seconds, and the tests start a few hundred `python -m
tftune.cli` processes. Here a helper process imports TensorFlow once (as the CLI does, through
`tftune.quiet_import`'s settings) and forks each command from there: the command runs in a new
process, with its own arguments, environment, working directory and standard streams, and imports
tftune and everything else afresh, so a missing Keras registration still fails as it would for a
user. Only TensorFlow (and what it imports: NumPy, parts of Keras) is already loaded.

`run(command, ...)` and `Popen(command, ...)` take the same arguments as `subprocess`'s for
commands of the form `[sys.executable, "-m", MODULE, ...]`, `[sys.executable, "-c", CODE, ...]` or
`[sys.executable, "FILE.py", ...]`.
Anything else (another program, `preexec_fn`, `pass_fds`, ...) goes to `subprocess` unchanged,
and so does everything when `TFTUNE_TESTS_COLD_START=1`, to run the suite with cold processes.
A test of what a command imports (TensorFlow, pandas, matplotlib, ...) uses `subprocess` itself.

Example:

>>> done = run([sys.executable, "-m", "tftune.cli", "--help"], capture_output=True, text=True)
>>> done.returncode
0
"""

import atexit
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from subprocess import DEVNULL, PIPE, STDOUT, CalledProcessError, CompletedProcess, TimeoutExpired

__all__ = ["run", "Popen", "PIPE", "DEVNULL", "STDOUT"]

# The helper process: imports TensorFlow, then forks one child per request read from its socket.
# A request is one JSON message with the command's stdin, stdout and stderr attached as file
# descriptors; the helper answers {"id", "pid"} when it forked and {"exited": pid, "returncode"}
# when it reaped the child.
FORK_SERVER = r"""
import json, os, selectors, socket, sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # as tftune.quiet_import sets it
import tensorflow as tf

tf.config.list_physical_devices()  # prints its notices here, not in every command
channel = socket.socket(fileno=int(sys.argv[1]))
base_path = sys.path[1:]
children = set()


def become(request, fds):
    '''In the child: the command's streams, environment and sys.path, then its module or code.'''
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    import tempfile
    tempfile.tempdir = None  # found again from TMPDIR, as in a new process
    first = {"-m": os.getcwd(), "-c": ""}.get(request["mode"], os.path.dirname(os.path.realpath(request["target"])))
    extra = [path for path in request["env"].get("PYTHONPATH", "").split(os.pathsep) if path]
    sys.path[:] = [first, *extra, *base_path]
    encoding = os.environ.get("PYTHONIOENCODING", "utf-8").split(":")[0] or "utf-8"
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = sys.__stdin__ = open(0, "r", encoding=encoding, closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", encoding=encoding, closefd=False,
                                       buffering=1 if os.isatty(1) else -1)
    sys.stderr = sys.__stderr__ = open(2, "w", encoding=encoding, errors="backslashreplace",
                                       closefd=False, buffering=1)
    if unbuffered:
        sys.stdout.reconfigure(write_through=True)
    import numpy
    numpy.random.seed()  # a new process draws its own seed
    if request["mode"] == "-m":
        import runpy
        sys.argv = ["-m", *request["args"]]
        runpy.run_module(request["target"], run_name="__main__", alter_sys=True)
    elif request["mode"] == "-c":
        sys.argv = ["-c", *request["args"]]
        exec(compile(request["target"], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    else:
        import runpy
        sys.argv = [request["target"], *request["args"]]
        runpy.run_path(request["target"], run_name="__main__")
    sys.exit(0)


def reap():
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            children.discard(pid)
            channel.send(json.dumps({"exited": pid, "returncode": os.waitstatus_to_exitcode(status)}).encode())


selector = selectors.DefaultSelector()
selector.register(channel, selectors.EVENT_READ)
while True:
    if selector.select(timeout=0.05):
        message, fds, _, _ = socket.recv_fds(channel, 1 << 20, 3)
        if not message:
            break
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            selector.close()
            channel.detach()  # become() closes the descriptor; the object must not close a reused one later
            become(request, fds)
        for fd in fds:
            os.close(fd)
        children.add(pid)
        channel.send(json.dumps({"id": request["id"], "pid": pid}).encode())
    reap()
"""


class _ForkServer:
    """The helper process of this test process, started on first use."""

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", FORK_SERVER, str(theirs.fileno())],
            pass_fds=[theirs.fileno()], env=env, stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL,
        )
        theirs.close()
        self.channel = ours
        self.lock = threading.Lock()
        self.next_id = 0
        self.started = {}  # request id -> pid, once forked
        self.exited = {}  # pid -> return code, once reaped
        self.changed = threading.Condition()
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self):
        while True:
            message = self.channel.recv(1 << 16)
            if not message:
                with self.changed:
                    self.process = None
                    self.changed.notify_all()
                return
            answer = json.loads(message)
            with self.changed:
                if "exited" in answer:
                    self.exited[answer["exited"]] = answer["returncode"]
                else:
                    self.started[answer["id"]] = answer["pid"]
                self.changed.notify_all()

    def start(self, mode, target, args, env, cwd, fds):
        with self.lock:
            self.next_id += 1
            request_id = self.next_id
            request = {"id": request_id, "mode": mode, "target": target, "args": args, "env": env, "cwd": cwd}
            socket.send_fds(self.channel, [json.dumps(request).encode()], fds)
        with self.changed:
            self.changed.wait_for(lambda: request_id in self.started or self.process is None)
            if self.process is None:
                raise RuntimeError("the preloaded Python process has stopped")
            return self.started.pop(request_id)

    def wait(self, pid, timeout):
        with self.changed:
            if not self.changed.wait_for(lambda: pid in self.exited, timeout):
                return None
            return self.exited[pid]

    def close(self):
        self.channel.shutdown(socket.SHUT_RDWR)  # wakes the listening thread; the helper reads the end
        self.channel.close()
        if self.process is not None:
            self.process.wait(timeout=60)  # its commands' CPU time then counts as this process's children's


_server = None
_server_lock = threading.Lock()


def _fork_server():
    global _server
    with _server_lock:
        if _server is None:
            _server = _ForkServer()
            atexit.register(_server.close)
        return _server


def _preloadable(command, kwargs):
    """(mode, target, args) when `command` can run in a preloaded process, else None."""
    unsupported = set(kwargs) - {"env", "cwd", "stdin", "stdout", "stderr", "text", "encoding", "errors"}
    if unsupported or os.environ.get("TFTUNE_TESTS_COLD_START") or not hasattr(socket, "send_fds"):
        return None
    command = [os.fsdecode(part) for part in command]  # as a new Python decodes its arguments
    if len(command) < 2 or command[0] != sys.executable:
        return None
    if command[1] in ("-m", "-c") and len(command) >= 3:
        return command[1], command[2], command[3:]
    if command[1].endswith(".py"):  # a script: python FILE ARGS...
        return "script", command[1], command[2:]
    return None


class _PreloadedPopen:
    """The part of `subprocess.Popen` the tests use, for a process forked from the helper."""

    def __init__(self, command, mode, target, args, env=None, cwd=None, stdin=None, stdout=None, stderr=None,
                 text=False, encoding=None, errors=None):
        self.args = command
        self.returncode = None
        text_mode = text or encoding is not None or errors is not None
        ends, ours = [], []  # the child's descriptors, and the parent ends of its pipes to close

        def stream(spec, fd_number, writable):
            if spec is None:
                return None, os.dup(fd_number)
            if spec == DEVNULL:
                return None, os.open(os.devnull, os.O_RDWR)
            if spec == PIPE:
                read_end, write_end = os.pipe()
                parent_end, child_end = (write_end, read_end) if writable else (read_end, write_end)
                ours.append(parent_end)
                handle = os.fdopen(parent_end, "wb" if writable else "rb")
                if text_mode:
                    handle = io.TextIOWrapper(handle, encoding=encoding or "utf-8", errors=errors or "strict",
                                              write_through=writable)
                return handle, child_end
            fd = spec if isinstance(spec, int) else spec.fileno()
            return None, os.dup(fd)

        self.stdin, stdin_fd = stream(stdin, 0, writable=True)
        self.stdout, stdout_fd = stream(stdout, 1, writable=False)
        if stderr == STDOUT:
            self.stderr, stderr_fd = None, os.dup(stdout_fd)
        else:
            self.stderr, stderr_fd = stream(stderr, 2, writable=False)
        ends = [stdin_fd, stdout_fd, stderr_fd]
        environment = dict(os.environ if env is None else env)
        try:
            self._server = _fork_server()
            self.pid = self._server.start(mode, target, args, environment, os.fspath(cwd or os.getcwd()), ends)
        finally:
            for fd in ends:
                os.close(fd)

    def poll(self):
        if self.returncode is None:
            self.returncode = self._server.wait(self.pid, 0)
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            self.returncode = self._server.wait(self.pid, timeout)
            if self.returncode is None:
                raise TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, input=None, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        output = {}

        def read(name, handle):
            output[name] = handle.read()
            handle.close()

        readers = [threading.Thread(target=read, args=(name, handle), daemon=True)
                   for name, handle in (("stdout", self.stdout), ("stderr", self.stderr)) if handle is not None]
        for reader in readers:
            reader.start()
        if self.stdin is not None:
            try:
                if input:
                    self.stdin.write(input)
                self.stdin.close()
            except BrokenPipeError:
                pass
        for reader in readers:
            reader.join(None if deadline is None else max(0, deadline - time.monotonic()))
            if reader.is_alive():
                raise TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0, deadline - time.monotonic()))
        return output.get("stdout"), output.get("stderr")

    def send_signal(self, number):
        if self.returncode is None:
            os.kill(self.pid, number)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        for handle in (self.stdin, self.stdout, self.stderr):
            if handle is not None:
                handle.close()
        self.wait()


def Popen(command, **kwargs):
    """`subprocess.Popen(command, **kwargs)`, forked from a process that has imported TensorFlow when it can be."""
    preloadable = _preloadable(command, kwargs)
    if preloadable is None:
        return subprocess.Popen(command, **kwargs)
    return _PreloadedPopen(command, *preloadable, **kwargs)


def run(command, *, input=None, capture_output=False, timeout=None, check=False, **kwargs):
    """`subprocess.run(command, ...)`, forked from a process that has imported TensorFlow when it can be."""
    if _preloadable(command, kwargs) is None:
        return subprocess.run(command, input=input, capture_output=capture_output, timeout=timeout, check=check,
                              **kwargs)
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = PIPE
    if input is not None:
        kwargs["stdin"] = PIPE
    process = Popen(command, **kwargs)
    try:
        stdout, stderr = process.communicate(input, timeout=timeout)
    except TimeoutExpired:
        process.kill()
        process.wait()
        raise
    if check and process.returncode:
        raise CalledProcessError(process.returncode, command, stdout, stderr)
    return CompletedProcess(command, process.returncode, stdout, stderr)
