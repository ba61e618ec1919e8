"""Runs one untrusted program; started by ``runtime.bench.sandbox`` with ``python -I``, never imported.

argv[1] is a JSON object of settings; the program arrives on stdin. With ``namespaces`` set it runs as PID 1 of
fresh PID, network, mount and IPC namespaces (under ``unshare``): it mounts private tmpfs over /tmp, /var/tmp and
/dev/shm, makes the interpreter readable to an unprivileged user, forks a worker that drops to ``nobody`` and
runs the program, and exits with the worker's status; the kernel then kills whatever the program left behind.
Without namespaces the worker runs as the current user with sockets blocked.
This file uses the standard library only.
"""

import ctypes
import json
import os
import resource
import sys
import traceback

MS_BIND, MS_MOVE, MS_REC = 4096, 8192, 16384
NOBODY = 65534


def mount(source: str, target: str, fstype: str = "", flags: int = 0, data: str = "") -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def expose_prefix(prefix: str) -> None:
    """If a folder above the interpreter is closed to others (/root is 0700), cover it with an empty tmpfs
    and bind the interpreter's folder back, so `nobody` can import the standard library but sees nothing else."""
    parts = prefix.strip("/").split("/")
    closed = None
    for i in range(1, len(parts)):
        path = "/" + "/".join(parts[:i])
        if not os.stat(path).st_mode & 0o001:
            closed = path
            break
    if closed is None:
        return
    staging = "/tmp/.prefix"
    os.makedirs(staging)
    mount(prefix, staging, flags=MS_BIND | MS_REC)
    mount("tmpfs", closed, "tmpfs", 0, "mode=0755,size=1m")
    os.makedirs(prefix)
    mount(staging, prefix, flags=MS_MOVE)


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


def worker(program: str, settings: dict, workdir: str) -> None:
    os.chdir(workdir)
    limit(settings)
    if settings["drop_to_nobody"]:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    if not settings["namespaces"]:
        block_sockets()
    os.environ.clear()
    os.environ.update({"HOME": workdir, "PATH": "/usr/local/bin:/usr/bin:/bin", "TMPDIR": workdir, "LANG": "C.UTF-8"})
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    try:
        exec(compile(program, "<sample>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        sys.stdout.flush()
        os._exit(code)
    except BaseException:  # the program's own failure: report it and exit non-zero
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)


def main() -> None:
    settings = json.loads(sys.argv[1])
    program = sys.stdin.read()
    if settings["namespaces"]:
        for path in ("/tmp", "/var/tmp", "/dev/shm"):
            if os.path.isdir(path):
                mount("tmpfs", path, "tmpfs", 0, "mode=1777,size=64m")
        expose_prefix(settings["prefix"])
        workdir = "/tmp/work"
        os.makedirs(workdir)
        if settings["drop_to_nobody"]:
            os.chown(workdir, NOBODY, NOBODY)
    else:
        workdir = settings["workdir"]
    pid = os.fork()
    if pid == 0:
        worker(program, settings, workdir)
    _, status = os.waitpid(pid, 0)
    sys.stdout.flush()
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


if __name__ == "__main__":
    main()
