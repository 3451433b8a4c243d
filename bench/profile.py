"""Where the time goes, for the report's missed targets: a sampled CPU profile of a server
under load (py-spy, from the outside, so the server runs unchanged), and what its imports cost
at start (`python -X importtime`)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["Profile", "Sampler", "import_times"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
_SITE = ("site-packages/", "dist-packages/")
# the frames that start the server hold everything
_OUTER = {"noroshi.__main__", "noroshi.cli", "noroshi.serve"}


def _where(file: str) -> str:
    """A frame's package: its top-level module under site-packages, the standard library's
    module, or noroshi's own module path."""
    if "/noroshi/" in file and not any(s in file for s in _SITE):
        return "noroshi." + file.rsplit("/noroshi/", 1)[1].removesuffix(".py").replace("/", ".")
    for site in _SITE:
        if site in file:
            return file.split(site, 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/lib/python" in file:  # the standard library
        return file.rsplit("/lib/python", 1)[1].split("/", 2)[1].removesuffix(".py")
    return file.rsplit("/", 1)[-1].removesuffix(".py")


class Profile:
    """py-spy's raw output, read: each line is a stack, outermost frame first, and a count;
    only the event loop's thread is kept."""

    def __init__(self, raw: str) -> None:
        self.stacks: Counter[tuple[tuple[str, str], ...]] = Counter()
        for line in raw.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = []
            for frame in stack.split(";"):
                if (m := _FRAME.match(frame)) is not None:
                    frames.append((m["func"], _where(m["file"])))
            # py-spy counts a worker thread blocked on its queue as busy (aiosqlite's, the
            # executor's); their CPU is small and read from /proc, so only the loop's is kept
            if frames and ("Thread._bootstrap", "threading") not in frames:
                self.stacks[tuple(frames)] += int(count)
        self.total = sum(self.stacks.values())

    def _share(self, counts: Counter[str], n: int) -> list[tuple[str, float]]:
        total = self.total or 1
        return [(name, count / total) for name, count in counts.most_common(n)]

    def by_package(self, n: int = 10) -> list[tuple[str, float]]:
        """Self time by package (noroshi's split by module): who burns the CPU."""
        counts: Counter[str] = Counter()
        for stack, count in self.stacks.items():
            counts[stack[-1][1]] += count  # `_where` names noroshi's modules, others' packages
        return self._share(counts, n)

    def inclusive(self, prefix: str = "noroshi.", n: int = 12) -> list[tuple[str, float]]:
        """Time spent in and under each of our functions: which step of the path costs."""
        counts: Counter[str] = Counter()
        for stack, count in self.stacks.items():
            for name in {
                f"{module}.{func}"
                for func, module in stack
                if module.startswith(prefix) and module not in _OUTER
            }:
                counts[name] += count
        return self._share(counts, n)


class Sampler:
    """py-spy recording a running process and its children for a while; None when py-spy is
    not installed or may not attach here (the bench then reports no profile)."""

    RATE = 250  # samples a second

    def __init__(self, pid: int, seconds: float, out: Path) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        if Path(spy).exists():
            self.proc = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--subprocesses",
                    "--rate",
                    str(self.RATE),
                    "--format",
                    "raw",
                    "--full-filenames",
                    "--output",
                    str(out),
                    "--duration",
                    str(round(seconds)),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def result(self) -> Profile | None:
        if self.proc is None:
            return None
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        if self.proc.returncode != 0 or not self.out.exists():
            return None
        return Profile(self.out.read_text())


def import_times(argv: list[str], own: str, n: int = 10) -> list[tuple[str, float]]:
    """Seconds each package adds at start, the largest first, from `python -X importtime` run
    on `argv` (a `-c` program): a package is charged with what it imports in turn, and the
    program's `own` package with its modules' own time only."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, check=False
    )
    # The lines come children first, each indented two spaces deeper than its importer.
    Node = tuple[str, int, int, list[Any]]  # name, self µs, cumulative µs, children
    pending: list[tuple[int, Node]] = []
    for line in done.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        depth = len(fields[2]) - len(fields[2].lstrip())
        children = [node for d, node in pending if d > depth]
        pending = [(d, node) for d, node in pending if d <= depth]
        pending.append((depth, (fields[2].strip(), int(fields[0]), int(fields[1]), children)))
    totals: Counter[str] = Counter()

    def charge(node: Node) -> None:
        name, self_us, cumulative, children = node
        package = name.split(".", 1)[0]
        if package != own:
            totals[package] += cumulative
            return
        totals[f"{own} (own modules)"] += self_us
        for child in children:
            charge(child)

    for _, root in pending:
        charge(root)
    return [(name, us / 1e6) for name, us in totals.most_common(n)]
