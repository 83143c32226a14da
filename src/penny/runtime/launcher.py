"""Penny's own fork server: starts the workers of the default start method.

Why not multiprocessing's forkserver: it re-imports the user's ``__main__``
(in the server and in every child), so a script without a main guard runs
again in each worker; its death looks like the death of every worker (their
sentinels are its sockets); and Penny does not control its lifetime.

The launcher is a fresh interpreter (``python -c``) that imports Penny's
worker code once and never touches the user's ``__main__``.  One serves the
whole main process, started on first use and again if it dies.

    main process                               launcher (child of main)
    ------------                               ------------------------
    Launcher.start(...) --- "start" + memfd --> fork(); the child runs worker.main
                       <-- "started" + pidfd --  (pidfd opened before any reaping)
    LaunchedProcess.sentinel = the pidfd: readable when *the worker* exits,
    whatever happens to the launcher
                       <-- "exit" pid code ---  SIGCHLD: waitpid, report the status

It exits, killing every worker it started or adopted with SIGKILL (which
also ends a stopped worker, or one whose task holds the GIL in C), when the
main process dies (a pidfd of it, and its parent pid changing) or closes the
socket.  If it dies itself, its workers live on (they are reparented, their
pidfds stay valid): the next launcher adopts them, so that they still die
with the main process.  A worker it started whose exit it did not report is
described as "exited (status lost with the launcher)".
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading

_MAX_MSG = 1 << 22


# ---------------------------------------------------------------------------
# main process side
# ---------------------------------------------------------------------------
class LaunchedProcess:
    """What the supervisor needs of a worker process (as multiprocessing.Process)."""

    def __init__(self, pid: int, pidfd: int, launcher: "Launcher", name: str):
        self.pid = pid
        self.sentinel = pidfd
        self.name = name
        self._launcher = launcher
        self._exit = threading.Event()   # the launcher reported our status, or can no more
        self._code = None
        self._lost = False

    # the launcher's reader thread
    def _reported(self, code) -> None:
        self._code = code
        self._exit.set()

    def _orphaned(self) -> None:
        self._lost = True
        self._exit.set()

    def _ended(self, timeout) -> bool:
        if self.sentinel < 0:
            return True
        r, _, _ = select.select([self.sentinel], [], [], timeout)
        return bool(r)

    @property
    def exitcode(self):
        if not self._ended(0):
            return None
        self._exit.wait(2.0)  # the report follows the exit closely
        if self._code is None:
            return 255 if self._lost or not self._exit.is_set() else None
        return self._code

    @property
    def status_lost(self) -> bool:
        return self._code is None and self._ended(0)

    def is_alive(self) -> bool:
        return not self._ended(0)

    def join(self, timeout=None) -> None:
        if self._ended(timeout):
            self._exit.wait(2.0 if timeout is None else min(timeout, 2.0))

    def _signal(self, sig) -> None:
        if self.sentinel < 0:
            return
        try:
            signal.pidfd_send_signal(self.sentinel, sig)
        except (ProcessLookupError, OSError):
            pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def close(self) -> None:
        self._launcher._forget(self)
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


class LauncherError(RuntimeError):
    pass


class Launcher:
    """The main process's end of one launcher process (restarted when it dies)."""

    def __init__(self):
        self._lock = threading.Lock()       # starts and restarts
        self._send_lock = threading.Lock()
        self._sock = None
        self._proc = None
        self._reader = None
        self._pending: dict[int, list] = {}  # token -> [event, (pid, pidfd) | error]
        self._procs: dict[int, LaunchedProcess] = {}  # pid -> live handle of this launcher
        self._adoptable: dict[int, LaunchedProcess] = {}  # every live handle, any launcher
        self._tokens = 0
        self._owner = os.getpid()
        self._users = 0  # supervisors using this launcher; it stops with the last one
        self._closing = False

    def acquire(self) -> None:
        with self._lock:
            self._users += 1

    def _restart(self, sock) -> None:
        """The server died under us: start another at once, which adopts the
        live workers (so that they still die with the main process)."""
        with self._lock:
            if self._closing or self._users <= 0 or self._sock is not sock:
                return
            try:
                # Its socket closes before the process is a zombie: wait for it
                # (so that _ensure does not take it for alive), then start another.
                self._drop_server()
                self._ensure()
            except Exception:  # noqa: BLE001 - the next start tries again
                pass

    def release(self) -> None:
        """One supervisor is done; the last one stops the server (and our
        reader thread): a program whose schedulers are shut down has no
        process or thread of Penny's left."""
        with self._lock:
            self._users -= 1
            if self._users <= 0:
                self._users = 0
                self._closing = True
                try:
                    self._drop_server()
                finally:
                    self._closing = False

    @property
    def pid(self):
        return None if self._proc is None else self._proc.pid

    def _ensure(self) -> None:
        """Start the server process if none runs (under self._lock)."""
        if self._sock is not None and self._proc.poll() is None:
            return
        self._drop_server()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            code = ("import penny.runtime.launcher as l; l.serve(%d, %d)" % (theirs.fileno(), os.getpid()))
            # The interpreter's flags (-X dev, -W ..., -O) as multiprocessing passes them.
            flags = subprocess._args_from_interpreter_flags()
            self._proc = subprocess.Popen(
                [sys.executable, *flags, "-c", code], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        self._reader = threading.Thread(target=self._read, args=(ours,), name="penny-launcher", daemon=True)
        self._reader.start()
        # Workers of a launcher that died live on: this one kills them too
        # if the main process dies (their pidfds travel: no pid can be reused).
        for p in list(self._adoptable.values()):
            if p.sentinel >= 0 and p.is_alive():
                self._send(("adopt",), [p.sentinel])

    def _drop_server(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(5)
        self._reader = None
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._sock is not None:
            self._sock.close()
        self._sock = None

    def _send(self, msg, fds) -> None:
        data = pickle.dumps(msg)
        with self._send_lock:
            socket.send_fds(self._sock, [data], fds)

    def start(self, payload: bytes, fd: int, name: str, timeout: float = 60.0, extra_fds=()) -> LaunchedProcess:
        """Fork a worker that runs ``worker.main`` with the pickled `payload`
        (arguments after the region handle) and the region descriptor `fd`;
        `extra_fds` are the descriptors `payload` names (see `Spawning`)."""
        with self._lock:
            for attempt in range(2):
                self._ensure()
                self._tokens += 1
                token = self._tokens
                ev = threading.Event()
                slot = [ev, None]
                self._pending[token] = slot
                try:
                    main = sys.modules.get("__main__")
                    main_path = getattr(main, "__file__", None)
                    if main_path:
                        main_path = os.path.abspath(main_path)
                    # The authkey too, as multiprocessing gives its children the
                    # parent's: a Manager's proxies among the arguments need it.
                    authkey = bytes(multiprocessing.current_process().authkey)
                    self._send(("start", token, payload, list(sys.path), os.getcwd(), main_path, authkey),
                               [fd, *extra_fds])
                except OSError as e:
                    slot[1] = LauncherError(f"penny: the worker launcher is gone: {e}")
                    ev.set()
                if not ev.wait(timeout):
                    self._pending.pop(token, None)
                    raise LauncherError(f"penny: the worker launcher did not start a worker in {timeout} s")
                self._pending.pop(token, None)
                got = slot[1]
                if isinstance(got, BaseException):
                    if attempt == 0:
                        continue  # it died: start another
                    raise got
                pid, pidfd = got
                return self._procs[pid]
        raise AssertionError("unreachable")

    def _read(self, sock) -> None:
        try:
            while True:
                try:
                    data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MSG, 2, socket.MSG_CMSG_CLOEXEC)
                except OSError:
                    break
                if not data:
                    break
                msg = pickle.loads(data)
                if msg[0] == "started":
                    _, token, pid = msg
                    pidfd = fds[0] if fds else -1
                    p = LaunchedProcess(pid, pidfd, self, f"penny-worker-{pid}")
                    self._procs[pid] = p
                    self._adoptable[pid] = p
                    slot = self._pending.get(token)
                    if slot is not None:
                        slot[1] = (pid, pidfd)
                        slot[0].set()
                    else:  # the starter gave up waiting: nobody will use it
                        p.kill()
                elif msg[0] == "exit":
                    _, pid, code = msg
                    p = self._procs.pop(pid, None)
                    if p is not None:
                        p._reported(code)
                else:
                    for fd in fds:
                        os.close(fd)
        finally:
            # The server is gone (or we closed it): nobody reports these exits now.
            for p in list(self._procs.values()):
                p._orphaned()
            self._procs.clear()
            for slot in list(self._pending.values()):
                if slot[1] is None:
                    slot[1] = LauncherError("penny: the worker launcher died")
                    slot[0].set()
            if not self._closing and self._owner == os.getpid():
                threading.Thread(target=self._restart, args=(sock,), name="penny-launcher-restart",
                                 daemon=True).start()

    def _forget(self, p: LaunchedProcess) -> None:
        self._adoptable.pop(p.pid, None)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            try:
                self._drop_server()
            finally:
                self._closing = False


class Spawning:
    """What multiprocessing's reducers ask of a process being started
    (``context.get_spawning_popen()``): the payload of a worker may hold a
    multiprocessing Queue, Lock or Connection (an Executor's `initargs`),
    whose descriptors travel with the start message, as under
    multiprocessing's own fork server."""

    def __init__(self):
        self.fds: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        self.fds.append(fd)
        return len(self.fds) - 1

    class DupFd:
        def __init__(self, ind: int):
            self.ind = ind

        def detach(self) -> int:
            return _inherited[self.ind]


def dumps_for_worker(obj) -> bytes:
    """Pickle a worker's start arguments: cloudpickle (an Executor's
    initializer may be a lambda) with multiprocessing's own reducers first
    (Connections, and so Queues, send their descriptors through `Spawning`),
    as multiprocessing's start channel pickles them."""
    import collections
    import io
    from multiprocessing.reduction import ForkingPickler

    import cloudpickle

    class _Pickler(cloudpickle.Pickler):
        dispatch_table = collections.ChainMap(ForkingPickler._extra_reducers, cloudpickle.Pickler.dispatch_table)

    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


#: In a worker of the launcher: the descriptors its start message carried
#: besides the region (Spawning.DupFd indexes them).
_inherited: list = []

_launcher: Launcher | None = None
_launcher_lock = threading.Lock()
_supported: bool | None = None


def supported() -> bool:
    """Whether this system has what the launcher needs (pidfds: Linux >= 5.3)."""
    global _supported
    if _supported is None:
        try:
            os.close(os.pidfd_open(os.getpid()))
            _supported = hasattr(signal, "pidfd_send_signal") and hasattr(socket, "send_fds")
        except (AttributeError, OSError):
            _supported = False
    return _supported


def get() -> Launcher:
    """This process's launcher (made on first use)."""
    global _launcher
    with _launcher_lock:
        if _launcher is None or _launcher._owner != os.getpid():
            _launcher = Launcher()
        return _launcher


def _forget_in_child() -> None:
    """A fork of the main process: the launcher is the parent's; leave it alone."""
    global _launcher, _launcher_lock
    old = _launcher
    _launcher = None
    _launcher_lock = threading.Lock()
    if old is not None and old._sock is not None:
        try:
            os.close(old._sock.detach())  # our copy only: the parent's stays open
        except OSError:
            pass


os.register_at_fork(after_in_child=_forget_in_child)


@atexit.register
def _close_at_exit() -> None:
    # Registered before the schedulers' atexit hook (this module is imported
    # first), so it runs after they stopped their workers: the launcher then
    # exits before we do, and no helper process outlives the program.
    if _launcher is not None and _launcher._owner == os.getpid():
        _launcher.close()


# ---------------------------------------------------------------------------
# the launcher process
# ---------------------------------------------------------------------------
def _prepare_child() -> None:
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_worker(payload: bytes, fd: int, sys_path: list, cwd: str, main_path) -> int:
    """A worker's life in the launcher's child.  The user's __main__ is not
    imported at start: functions defined there travel by value, and only one
    that cannot (it names an unpicklable global) makes the worker import the
    script, when a task first needs it (wire/functions.py)."""
    sys.path[:] = sys_path
    try:
        os.chdir(cwd)
    except OSError:
        pass
    from .. import _context
    from ..shm.region import RegionHandle
    from . import worker

    _context.main_path = main_path
    try:
        layout, wid, static, method, seed, options = pickle.loads(payload)
        worker.main(RegionHandle(fd, layout, owned=True), wid, static, method, seed, options)
        return 0
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass


def _kill_all(children: dict, adopted: dict) -> None:
    for pid in list(children):
        try:
            os.kill(pid, signal.SIGKILL)  # our child, not reaped yet: the pid is its own
        except OSError:
            pass
    for pidfd in adopted.values():
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except OSError:
            pass
    for pid in list(children):
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass


def serve(fd: int, main_pid: int) -> None:
    """The launcher's loop (in its own process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's business
    sock = socket.socket(fileno=fd)
    try:
        main_fd = os.pidfd_open(main_pid)
    except (AttributeError, OSError):
        main_fd = -1
    if os.getppid() != main_pid:
        os._exit(0)  # the main process died before we watched it
    import penny.runtime.worker  # noqa: F401 - preloaded: workers fork with it imported

    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    children: dict[int, None] = {}
    adopted: dict[int, int] = {}
    watch = [sock, wake_r] + ([main_fd] if main_fd >= 0 else [])

    def reply(msg, fds=()):
        try:
            socket.send_fds(sock, [pickle.dumps(msg)], list(fds))
        except OSError:
            pass

    def reap():
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.pop(pid, None)
            reply(("exit", pid, os.waitstatus_to_exitcode(status)))

    while True:
        ready, _, _ = select.select(watch, [], [], 1.0)
        if (main_fd >= 0 and main_fd in ready) or os.getppid() != main_pid:
            _kill_all(children, adopted)
            os._exit(0)
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        reap()
        for key, pidfd in list(adopted.items()):
            if select.select([pidfd], [], [], 0)[0]:
                os.close(pidfd)
                del adopted[key]
        if sock not in ready:
            continue
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MSG, 4, socket.MSG_CMSG_CLOEXEC)
        except OSError:
            data, fds = b"", []
        if not data:
            # The main process closed its end (or died): nobody wants the workers.
            _kill_all(children, adopted)
            os._exit(0)
        msg = pickle.loads(data)
        if msg[0] == "start":
            _, token, payload, sys_path, cwd, main_path, authkey = msg
            region_fd, extra = fds[0], fds[1:]
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    _prepare_child()
                    sock.close()
                    for f in [wake_r, wake_w, main_fd, *adopted.values()]:
                        if f >= 0:
                            os.close(f)
                    _inherited[:] = extra
                    multiprocessing.current_process().authkey = authkey
                    code = _run_worker(payload, region_fd, sys_path, cwd, main_path)
                finally:
                    try:  # flush what multiprocessing objects of the task buffer (a Queue's feeder)
                        from multiprocessing import util

                        util._exit_function()
                    except BaseException:  # noqa: BLE001 - exiting anyway
                        pass
                    os._exit(code)
            os.close(region_fd)
            for f in extra:
                os.close(f)
            children[pid] = None
            try:
                pidfd = os.pidfd_open(pid)  # our unreaped child: this pid is still it
            except OSError:
                pidfd = -1
            reply(("started", token, pid), [pidfd] if pidfd >= 0 else [])
            if pidfd >= 0:
                os.close(pidfd)
        elif msg[0] == "adopt":
            for f in fds:
                adopted[f] = f  # a pidfd of a worker that an earlier launcher started
        else:
            for f in fds:
                os.close(f)
