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
        """Start and wait for PING. A first start whose port was taken meanwhile (another process bound the free
        port between ``free_port`` and the server's bind) retries on a fresh port; a restart keeps its port."""
        first = self.proc is None
        for attempt in range(3):
            try:
                return self._start()
            except AutofeatError:
                if not first or attempt == 2 or self.proc.poll() is None:
                    raise
                self.port = free_port()

    def _start(self) -> None:
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


class RedisClusterNodes:
    """A real Redis Cluster of ``n`` masters (no replicas) on free loopback ports, for tests and benchmarks:
    ``redis-server --cluster-enabled yes`` per node (append-only file on, so a restarted node comes back with its
    data and its slots), joined with ``redis-cli --cluster create``. ``nodes`` is Feast's connection string."""

    def __init__(self, workdir: str | Path, n: int = 3):
        if shutil.which("redis-cli") is None:
            raise AutofeatError("redis-cli not found: install redis-server (`apt-get install -y redis-server`, "
                                "or run .ci/setup); it brings redis-cli.")
        self.workdir = Path(workdir)
        self.servers = []
        for i in range(n):
            node_dir = self.workdir / f"node{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            # the bus port is named: the default (port + 10000) may be taken or above 65535
            self.servers.append(RedisServer(node_dir, ("--cluster-enabled", "yes", "--cluster-config-file",
                                                       "nodes.conf", "--cluster-node-timeout", "2000",
                                                       "--cluster-port", str(free_port()), "--appendonly", "yes")))

    @property
    def nodes(self) -> str:
        return ",".join(s.url for s in self.servers)

    def start(self) -> None:
        for s in self.servers:
            s.start()
        proc = subprocess.run(["redis-cli", "--cluster", "create", *[s.url for s in self.servers],
                               "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True,
                              timeout=60)
        if proc.returncode != 0:
            raise AutofeatError(f"redis-cli --cluster create failed: {proc.stdout[-500:]} {proc.stderr[-500:]}")
        self.wait_ok()

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every node reports cluster_state:ok and knows every node."""
        import redis

        deadline = time.monotonic() + timeout
        while True:
            states = []
            for s in self.servers:
                try:
                    with redis.Redis(host="127.0.0.1", port=s.port) as c:
                        info = c.execute_command("CLUSTER", "INFO")
                        info = info.decode() if isinstance(info, bytes) else str(info)
                        states.append("cluster_state:ok" in info
                                      and f"cluster_known_nodes:{len(self.servers)}" in info)
                except redis.exceptions.ConnectionError:
                    states.append(False)
            if all(states):
                return
            if time.monotonic() > deadline:
                raise AutofeatError(f"Redis Cluster at {self.nodes} did not reach cluster_state:ok")
            time.sleep(0.1)

    def restart(self, i: int, down_seconds: float = 0.0) -> None:
        """Stop node ``i`` (SIGTERM: it writes its append-only file), wait, start it again on the same port and
        directory, and wait for the cluster to be whole."""
        self.servers[i].stop()
        time.sleep(down_seconds)
        self.servers[i].start()
        self.wait_ok()

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


class LocalRayCluster:
    """A real Ray cluster on this machine: a head node and ``workers`` worker nodes (``ray start``, each a
    raylet of its own with ``cpus`` CPUs), for tests and benchmarks. ``address`` is what ``ray.init`` and the
    engine's ``ray_address`` take. ``stop`` runs ``ray stop --force`` (every Ray process of this machine)."""

    OBJECT_STORE_BYTES = 500 * 2**20  # per node; Ray's default takes 30% of the machine's memory

    def __init__(self, workers: int = 1, cpus: int = 1):
        import sys

        self.ray = str(Path(sys.executable).with_name("ray"))
        if not Path(self.ray).exists():
            raise AutofeatError("ray not found beside this Python: pip install 'feast-autofeat[ray]' (or run "
                                ".ci/setup).")
        self.workers, self.cpus = workers, cpus
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit

    def _run(self, *args: str) -> None:
        import os

        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        proc = subprocess.run([self.ray, *args], capture_output=True, text=True, timeout=180, env=env)
        if proc.returncode != 0:
            raise AutofeatError(f"`ray {' '.join(args)}` failed: {proc.stdout[-800:]} {proc.stderr[-800:]}")

    def start(self) -> None:
        memory = f"--object-store-memory={self.OBJECT_STORE_BYTES}"
        self._run("start", "--head", f"--port={self.port}", f"--num-cpus={self.cpus}", "--num-gpus=0", memory,
                  "--include-dashboard=false", f"--temp-dir={self.temp}", "--disable-usage-stats")
        for _ in range(self.workers):
            self._run("start", f"--address={self.address}", f"--num-cpus={self.cpus}", "--num-gpus=0", memory)

    def stop(self) -> None:
        self._run("stop", "--force")
        shutil.rmtree(self.temp, ignore_errors=True)
