"""A private redis-server for tests and benchmarks: real Redis on a free loopback port, started and stopped by
the caller, never a service that happens to be running."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from feast_autofeat.errors import AutofeatError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` on a free loopback port, without persistence unless ``extra_args`` turn it on (later
    arguments win). ``start`` waits until it answers PING; ``start`` after a kill reuses the same port."""

    def __init__(self, workdir: str | Path, extra_args: tuple[str, ...] = ()):
        binary = shutil.which("redis-server")
        if binary is None:
            raise AutofeatError("redis-server not found: install it (`apt-get install -y redis-server`, or run "
                                ".ci/setup).")
        self.binary, self.workdir, self.extra_args = binary, Path(workdir), list(extra_args)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "yes", *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise AutofeatError(f"redis-server did not start on port {self.port}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@contextmanager
def redis_server(extra_args: tuple[str, ...] = ()):
    """A started ``RedisServer`` in a temporary directory, stopped and removed on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="autofeat-redis-"))
    server = RedisServer(workdir, extra_args)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
