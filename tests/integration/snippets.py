"""Run a Markdown page's code blocks as a user would: in order, in one working directory, as written.

A page's fenced ``bash``, ``python`` and ``yaml`` blocks are snippets; ``text`` and unlabelled blocks are prose
(diagrams, synopses, layouts). An HTML comment on the line right above a block says how to treat it:

- ``<!-- snippet: skip -- REASON -->``: not run here; the reason names what runs it instead (the CI's own
  install, another test);
- ``<!-- snippet: background port=N -->``: a server; started in the background, waited for until it accepts
  connections on the port, stopped at the end of the page. Its port is replaced, as a whole word, by a free
  one in this block and the ones after it;
- ``<!-- snippet: excerpt PAGE -->``: a shortened copy of another page's commands (in the README); each line of
  it must appear in that page, which runs.

The only other changes a runner makes are the page's placeholders (``path/to/ml-100k``, ``localhost:6379``),
replaced by this machine's dataset and the test's own redis-server.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RUN = ("bash", "python", "yaml")
MARKER = re.compile(r"<!--\s*snippet:\s*(\w+)\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    marker: str = ""  # skip, background, excerpt or ""
    arg: str = ""  # the marker's text after its name

    def __str__(self) -> str:
        return f"{self.page.name}:{self.line} ({self.lang})"


def page_blocks(path: Path) -> list[Block]:
    """Every fenced block of a page with its language and the snippet marker right above it."""
    text = path.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        above = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.fullmatch(above.strip())
        blocks.append(Block(path, line, match.group(1), match.group(2),
                            marker.group(1) if marker else "", marker.group(2) if marker else ""))
    return blocks


def runnable(path: Path) -> list[Block]:
    """The blocks a page runner executes: bash, python and yaml blocks that are neither skipped nor excerpts."""
    return [b for b in page_blocks(path) if b.lang in RUN and b.marker in ("", "background")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PageRunner:
    """Runs blocks in order from ``cwd``, as one terminal session: a bash block's final directory and exported
    variables are the next block's (``cd`` and ``export`` carry over); python blocks run with this interpreter;
    yaml blocks are handed to ``check_yaml``."""

    cwd: Path
    env: dict
    substitutions: dict[str, str] = field(default_factory=dict)
    check_yaml: object = None
    timeout: int = 900
    ports: dict[str, str] = field(default_factory=dict)  # a background block's port -> the free one used
    servers: list = field(default_factory=list)

    def code(self, block: Block) -> str:
        code = block.code
        for old, new in self.substitutions.items():
            code = code.replace(old, new)
        for old, new in self.ports.items():
            code = re.sub(rf"\b{old}\b", new, code)
        return code

    def run(self, block: Block) -> str:
        if block.marker == "background":
            return self.background(block)
        code = self.code(block)
        if block.lang == "yaml":
            self.check_yaml(code, self.cwd)
            return ""
        state, exported = self.cwd / ".snippet-cwd", self.cwd / ".snippet-env"
        if block.lang == "bash":
            cmd = ["bash", "-euo", "pipefail", "-c", f"{code}\npwd > '{state}'\nenv -0 > '{exported}'"]
        else:
            cmd = [sys.executable, "-c", code]
        proc = subprocess.run(cmd, cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=self.timeout)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{block} failed (exit {proc.returncode}):\n{code}\n---\n{out[-4000:]}"
        if block.lang == "bash":
            self.env = dict(v.split("=", 1) for v in exported.read_text().split("\0") if "=" in v)
            self.cwd = Path(state.read_text().strip())
            state.unlink()
            exported.unlink()
        return out

    def background(self, block: Block) -> str:
        match = re.fullmatch(r"port=(\d+)", block.arg)
        assert match, f"{block}: a background snippet names its port: <!-- snippet: background port=N -->"
        port = free_port()
        self.ports[match.group(1)] = str(port)  # in this block and the ones after it
        code = self.code(block)
        log = open(self.cwd / f".server-{port}.log", "w+")
        proc = subprocess.Popen(["bash", "-c", code], cwd=self.cwd, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.servers.append((proc, log))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"{block}: the server exited ({proc.returncode}):\n{log.read()[-4000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return ""
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"{block}: nothing listened on port {port} within 180 s")

    def stop(self) -> None:
        for proc, log in self.servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            log.close()
        self.servers.clear()
