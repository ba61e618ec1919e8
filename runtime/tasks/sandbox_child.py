"""Runs one untrusted program; started by ``runtime.tasks.sandbox`` with ``python -I``, never imported.

stdin holds one line of JSON settings (with the run's secret marker), then the program. With ``namespaces`` set
this process is PID 1 of fresh PID, network, mount, IPC and UTS namespaces (under ``unshare``). It builds a
minimal root on a size-limited tmpfs: read-only binds of /usr, /etc, /lib* and the interpreter's prefix, its own
/proc (hidepid=2) and a few device nodes; every writable place (/tmp, /var/tmp, /dev/shm, /run/lock) lives in that
one tmpfs; the checkout, the home and the model store are not there (and are covered with an empty tmpfs where
they lie under an exposed folder). It pivots into that root, forks a worker that drops to ``nobody`` and runs the
program, and exits with the worker's status; the kernel then kills whatever the program left behind.
Without namespaces the worker runs as the current user in a scratch folder, with Python's sockets blocked.
In both modes the worker gets rlimits and a seccomp filter refusing memfd_create and SysV shared memory (memory
that RLIMIT_AS does not count), and writes the marker to its marker fd only after the program's last line ran.
This file uses the standard library only.
"""

import ctypes
import errno
import json
import os
import resource
import sys
import traceback

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MNT_DETACH = 4096, 16384, 2
NOBODY = 65534
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
DEVICES = ("null", "zero", "full", "random", "urandom")
WRITABLE = ("tmp", "var/tmp", "dev/shm", "run/lock")  # sticky, world-writable folders of the root tmpfs
# per machine: (pivot_root, AUDIT_ARCH, syscalls refused by the seccomp filter)
ARCH = {"x86_64": (155, 0xC000003E, (319, 447, 29)),  # memfd_create, memfd_secret, shmget
        "aarch64": (41, 0xC00000B7, (279, 447, 194))}
libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str = "", flags: int = 0, data: str = "") -> None:
    _check(libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()),
           f"mount {source} on {target}")


def expose(path: str, root: str) -> None:
    """Bind ``path`` read-only at the same place under ``root`` (a symlink such as /bin -> usr/bin is copied)."""
    if not os.path.lexists(path):
        return
    target = root + path
    if os.path.islink(path):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(os.readlink(path), target)
        return
    parent = root
    for part in path.strip("/").split("/"):  # folders made on the way can be crossed but not listed
        parent = f"{parent}/{part}"
        if not os.path.isdir(parent):
            os.mkdir(parent, 0o711)
    mount(path, target, flags=MS_BIND | MS_REC)
    mount("", target, flags=MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def cover(path: str, root: str) -> None:
    """An empty tmpfs over ``path`` if it lies under an exposed folder (a checkout in /usr/src, say)."""
    target = root + path
    if path != "/" and os.path.isdir(target):
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16k")


def populate(root: str) -> None:
    for name in WRITABLE:
        os.makedirs(f"{root}/{name}", exist_ok=True)
        os.chmod(f"{root}/{name}", 0o1777)
    os.makedirs(f"{root}/proc", exist_ok=True)
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            open(f"{root}/dev/{name}", "w").close()
            mount(f"/dev/{name}", f"{root}/dev/{name}", flags=MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    # a fresh proc of this PID namespace; hidepid=2: a process sees only its own user's processes
    mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")


def pivot(root: str) -> None:
    """Make ``root`` the root and drop the old one from this mount namespace (chroot where pivot_root is unknown)."""
    os.chdir(root)
    number = ARCH.get(os.uname().machine, (None,))[0]
    if number is None:
        os.chroot(".")
    else:
        _check(libc.syscall(number, b".", b"."), "pivot_root")
        _check(libc.umount2(b".", MNT_DETACH), "umount the old root")
    os.chdir("/")


def build_root(settings: dict) -> None:
    os.umask(0o022)
    root = "/tmp"  # any folder will do: the tmpfs mounted on it becomes /
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0755,size={settings['tmpfs_mb']}m")
    for path in SYSTEM:
        expose(path, root)
    for path in settings["hide"]:
        cover(path, root)
    expose(settings["prefix"], root)
    populate(root)
    pivot(root)


def refuse_shared_memory() -> bool:
    """A seccomp filter: memfd_create, memfd_secret and shmget fail with EPERM, and so does every syscall of a
    foreign ABI (i386 or x32 entry points, which would name those calls by other numbers). False where unknown."""
    arch = ARCH.get(os.uname().machine)
    if arch is None:
        return False
    _, audit_arch, refused = arch
    deny, allow = 0x00050000 | errno.EPERM, 0x7FFF0000
    n = len(refused)
    code = [(0x20, 0, 0, 4), (0x15, 1, 0, audit_arch), (0x06, 0, 0, deny),  # load arch; foreign -> deny
            (0x20, 0, 0, 0), (0x35, n + 1, 0, 0x40000000)]  # load nr; x32 -> deny
    code += [(0x15, n - i, 0, nr) for i, nr in enumerate(refused)]
    code += [(0x06, 0, 0, allow), (0x06, 0, 0, deny)]

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    filters = (Filter * len(code))(*[Filter(*c) for c in code])
    program = Program(len(code), filters)
    ulong = ctypes.c_ulong
    _check(libc.prctl(38, ulong(1), ulong(0), ulong(0), ulong(0)), "PR_SET_NO_NEW_PRIVS")
    _check(libc.prctl(22, ulong(2), ctypes.byref(program), ulong(0), ulong(0)), "PR_SET_SECCOMP")
    return True


def limit(settings: dict) -> None:
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (settings["memory_mb"] * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_CPU, (settings["cpu_s"], settings["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (settings["file_mb"] * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (settings["max_procs"],) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def block_sockets() -> None:
    import socket

    def refuse(*args, **kwargs):
        raise PermissionError("network access is blocked in the sandbox")

    socket.socket = refuse  # type: ignore[assignment]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.socketpair = refuse  # type: ignore[assignment]


def enter(settings: dict, workdir: str) -> None:
    """The worker's side of the walls: limits, the user, the seccomp filter, a clean environment."""
    os.chdir(workdir)
    limit(settings)
    if settings["namespaces"]:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        sys.executable = settings["interpreter"]  # the checkout's venv is not in this root; the base interpreter is
    else:
        block_sockets()
    if settings["seccomp"]:
        refuse_shared_memory()
    os.environ.clear()  # the process was exec'd with a minimal environment already; this only sets the worker's own
    os.environ.update({"HOME": workdir, "PATH": "/usr/local/bin:/usr/bin:/bin", "TMPDIR": workdir,
                       "LANG": "C.UTF-8"})
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)


def worker(program: str, settings: dict, workdir: str) -> None:
    marker, marker_fd = settings.pop("marker").encode(), settings["marker_fd"]
    enter(settings, workdir)
    try:
        exec(compile(program, "<sample>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        sys.stdout.flush()
        sys.stderr.flush()
    except SystemExit as e:  # an exit before the end is no pass, whatever its status: the marker is not written
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        sys.stdout.flush()
        os._exit(code)
    except BaseException:  # the program's own failure: report it and exit non-zero
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os.write(marker_fd, marker)  # reached only when the program's last line has run
    os._exit(0)


def main() -> None:
    settings_line, program = sys.stdin.buffer.read().decode().split("\n", 1)
    settings = json.loads(settings_line)
    if settings["namespaces"]:
        build_root(settings)
        workdir = "/tmp/work"
        os.mkdir(workdir)
        os.chown(workdir, NOBODY, NOBODY)
    else:
        workdir = settings["workdir"]
    pid = os.fork()
    if pid == 0:
        try:
            worker(program, settings, workdir)
        except BaseException:  # the walls failed to go up: never fall through into the supervisor's code
            traceback.print_exc()
        os._exit(70)
    settings.pop("marker")
    os.close(settings["marker_fd"])
    _, status = os.waitpid(pid, 0)
    sys.stdout.flush()
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


if __name__ == "__main__":
    main()
