"""Helpers shared by the benchmarks: machine facts, step timing, response-token counts, peak memory.

This module is imported by benchmark drivers that run under *other* Python environments too (the
LLaMA-Factory peer's venv, with its own transformers), so it imports only the standard library (and
prefsweep's dependency-free `trainer.atomic_write`, `trainer.labels`) at module level; torch and
transformers are imported inside the functions that need them.

The harness every benchmark shares: `launch` (one process in its own session, its output timestamped line by
line, wall and CPU time, leftover processes reaped), `alternate` (rounds A B A B, so a drift in the machine's
load falls on every variant alike), `results_header` + `write_json` (what every results file records).

One timing definition for every peer: `StepMeter`, a `TrainerCallback`, times each optimizer step from
`on_step_begin` to `on_step_end` (forward, backward, clip, optimizer and scheduler step; data loading
and logging fall outside), and counts the response tokens (labels != -100, or TRL's completion_mask) of
each batch the trainer's dataloader collates, and the process CPU time of each step. Memory: peak RSS
(VmHWM) of the whole process, and the peak of the training phase above the RSS after model + data load
(Linux `clear_refs` resets the high-water mark at `on_train_begin`); on CUDA,
`torch.cuda.max_memory_allocated` the same two ways.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.atomic_write import write_atomic
from trainer.labels import IGNORE_INDEX

MIB = 1024 * 1024


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(python: str | None, package: str, env: dict[str, str] | None = None) -> str | None:
    """`package.__version__` as seen by `python` (this interpreter when None), run with `env`."""
    if python is None:
        try:
            module = __import__(package)
        except ImportError:
            return None
        return getattr(module, "__version__", None)
    code = f"import {package}; print({package}.__version__)"
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    return proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else None


def machine_facts(device: str) -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    if device == "cuda" and torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_bytes() -> int:
    """Current resident set size of this process (VmRSS)."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """High-water mark of this process's own RSS (VmHWM).

    Not `ru_maxrss`: getrusage also reports the RSS of the address space replaced at exec, i.e. the
    parent's when it was forked or vforked, so a child of a large driver starts with the driver's peak.
    """
    return _status_kib("VmHWM") * 1024


def ru_maxrss_bytes() -> int:
    """`getrusage(RUSAGE_SELF).ru_maxrss` (KiB on Linux), for reference; see `peak_rss_bytes`."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, `clear_refs` 5); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def response_tokens(batch: dict[str, Any]) -> int:
    """Response tokens of a collated batch: labels != -100 (LLaMA-Factory, prefsweep) or TRL's completion_mask.

    Both count the same positions: the first token of a row is always prompt, so shifting by one (what
    the log-prob sum reads) does not change the count.
    """
    if "labels" in batch:
        return int((batch["labels"] != IGNORE_INDEX).sum())
    if "completion_mask" in batch:
        return int(batch["completion_mask"].sum())
    raise KeyError(f"batch has neither labels nor completion_mask: {sorted(batch)}")


class _CountingCollate:
    """Wraps a dataloader's collate_fn and records (response tokens, padded shape) per batch, in order."""

    def __init__(self, inner, records: list[dict[str, Any]]):
        self.inner = inner
        self.records = records

    def __call__(self, features):
        batch = self.inner(features)
        self.records.append({"response_tokens": response_tokens(batch), "shape": list(batch["input_ids"].shape)})
        return batch


def make_step_meter(device: str, *, profile_after: int | None = None):
    """A fresh `StepMeter` callback (built here so the class can subclass whichever transformers is loaded).

    profile_after: if set, run `torch.profiler` from step `profile_after` (0-based; pass the warm-up
    count) to the end of training; `summary()` then holds `profile_breakdown` of those steps. Profiled
    step times are inflated: use them for where the time goes, not for throughput.
    """
    import torch
    from transformers import TrainerCallback

    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but this Python's torch sees no GPU (a CPU-only build?)")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    class StepMeter(TrainerCallback):
        """Times every optimizer step and counts the response tokens of every collated batch.

        Batches are counted in the order the dataloader collates them; with gradient accumulation 1,
        batch i is step i's batch (a prefetching loader only makes the list longer, never reorders it).
        """

        def __init__(self):
            self.step_seconds: list[float] = []
            self.step_cpu_seconds: list[float] = []  # all threads of this process
            self.batches: list[dict[str, Any]] = []
            self.memory: dict[str, Any] = {}
            self._t0 = 0.0

        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            if args.gradient_accumulation_steps != 1:
                raise ValueError("StepMeter pairs batches with steps: use gradient_accumulation_steps 1")
            if train_dataloader is None:
                raise RuntimeError("the Trainer passed no train_dataloader to its callbacks")
            if args.device.type != device:
                raise RuntimeError(f"asked for {device}, but the Trainer runs on {args.device}")
            self.trainer_device = str(args.device)
            # The epoch iterator (and its fetcher, which reads collate_fn) is created after this event.
            # accelerate's DataLoaderShard is an adapter around the torch DataLoader that actually iterates.
            loader = train_dataloader
            while getattr(loader, "base_dataloader", None) is not None:
                loader = loader.base_dataloader
            loader.collate_fn = _CountingCollate(loader.collate_fn, self.batches)
            self.memory["peak_rss_load_mib"] = peak_rss_bytes() / MIB
            self.memory["rss_after_load_mib"] = rss_bytes() / MIB
            self.memory["peak_reset"] = reset_peak_rss()
            if cuda:
                sync()
                torch.cuda.reset_peak_memory_stats()
                self.memory["cuda_after_load_mib"] = torch.cuda.memory_allocated() / MIB

        def on_step_begin(self, args, state, control, **kwargs):
            if profile_after is not None and len(self.step_seconds) == profile_after:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if cuda:
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                self._profiler = torch.profiler.profile(activities=activities)
                self._profiler.__enter__()
            sync()
            self._t0 = time.perf_counter()
            self._c0 = time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.step_seconds.append(time.perf_counter() - self._t0)
            self.step_cpu_seconds.append(time.process_time() - self._c0)

        def on_train_end(self, args, state, control, **kwargs):
            if getattr(self, "_profiler", None) is not None:
                self._profiler.__exit__(None, None, None)
                from benchmarks._profiling import profile_breakdown

                self.profile = profile_breakdown(self._profiler)
                self._profiler = None
            mem = self.memory
            peak = peak_rss_bytes() / MIB
            mem["ru_maxrss_mib"] = ru_maxrss_bytes() / MIB
            mem["peak_rss_mib"] = max(mem["peak_rss_load_mib"], peak)
            # Exact when the reset worked (the high-water mark since on_train_begin); otherwise the whole
            # process's, an upper bound when loading peaked higher than training.
            mem["peak_rss_train_over_load_mib"] = peak - mem["rss_after_load_mib"]
            if cuda:
                mem["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / MIB
                mem["cuda_peak_over_load_mib"] = mem["cuda_peak_mib"] - mem["cuda_after_load_mib"]

        def summary(self, warmup: int) -> dict[str, Any]:
            """Timed steps are those after the first `warmup`; tokens/s = their response tokens / their seconds."""
            steps = len(self.step_seconds)
            if steps <= warmup:
                raise RuntimeError(f"only {steps} steps ran; need more than warmup={warmup}")
            if len(self.batches) < steps:
                raise RuntimeError(f"{steps} steps but only {len(self.batches)} batches were counted")
            timed = range(warmup, steps)
            seconds = sum(self.step_seconds[i] for i in timed)
            cpu_seconds = sum(self.step_cpu_seconds[i] for i in timed)
            tokens = sum(self.batches[i]["response_tokens"] for i in timed)
            profile = getattr(self, "profile", None)
            return {
                **({"profile": profile} if profile else {}),
                "trainer_device": self.trainer_device,
                "steps": steps,
                "warmup": warmup,
                "timed_seconds": seconds,
                "timed_response_tokens": tokens,
                "tokens_per_second": tokens / seconds,
                "timed_cpu_seconds": cpu_seconds,
                "tokens_per_cpu_second": tokens / cpu_seconds,
                "step_seconds": self.step_seconds,
                "step_cpu_seconds": self.step_cpu_seconds,
                "batches": self.batches[:steps],
                "memory": self.memory,
            }

    return StepMeter()


def lf_peer_python(lf_peer: str | Path) -> tuple[str, str]:
    """(python, stubs dir for PYTHONPATH) of the LLaMA-Factory peer venv that `lf-peer` manages."""
    proc = subprocess.run([str(lf_peer), "--python"], capture_output=True, text=True, check=True)
    python = proc.stdout.strip()
    return python, str(Path(python).parents[2] / "stubs")  # <peer>/venv/bin/python -> <peer>/stubs


def git_state(repo: Path, dirs: tuple[str, ...] = ("trainer",)) -> dict[str, Any]:
    """HEAD and whether each of `dirs` has uncommitted changes (numbers then describe the working tree):
    `{d}_dirty` per directory."""

    def git(*cmd: str) -> str:
        proc = subprocess.run(["git", *cmd], cwd=repo, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD"), **{f"{d}_dirty": bool(git("status", "--porcelain", "--", d)) for d in dirs}}


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(payload, indent=2, default=str))


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# ---- the harness: launch, alternate, record -------------------------------------------------------------


@dataclass
class Launched:
    """One finished process: its timestamped output lines, wall and CPU time, exit code, what it left behind."""

    wall_seconds: float
    returncode: int
    cpu_seconds: float
    load_average_1min_before: float
    lines: list[tuple[float, str]] = field(default_factory=list)
    """(seconds since start, line) of its merged stdout and stderr; carriage returns split lines too."""
    leftovers: list[dict] = field(default_factory=list)
    """Processes of its session still alive a second after it exited (then killed)."""

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def session_processes(sid: int) -> list[dict]:
    """Processes still alive in session `sid` (a launched run's own session: its Ray daemons and workers)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":  # fields[0] state, [3] session id
            alive.append({"pid": int(entry.name), "cmd": cmd[:160]})
    return alive


def launch(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float, log_path: Path,
           on_line: Callable[[float, str], None] | None = None) -> Launched:
    """Run `cmd` in a session of its own, its output written raw to `log_path` and, line by line with the
    seconds since start, to `on_line`; killed (the whole session) after `timeout` s. CPU time is the child's
    and that of the descendants it reaped (`wait4`)."""
    lines: list[tuple[float, str]] = []

    def scan(text: str, now: float) -> None:
        if text.strip():
            lines.append((now, text))
            if on_line is not None:
                on_line(now, text)

    def read(stream, start: float) -> None:
        pending = b""
        with log_path.open("wb") as log:
            while chunk := os.read(stream.fileno(), 65536):
                now = time.perf_counter() - start
                log.write(chunk)
                *pieces, pending = re.split(rb"[\r\n]", pending + chunk)
                for piece in pieces:
                    scan(piece.decode("utf-8", "replace"), now)
        scan(pending.decode("utf-8", "replace"), time.perf_counter() - start)

    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    reader = threading.Thread(target=read, args=(proc.stdout, start), daemon=True)
    reader.start()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > start + timeout:
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.02)
    wall = time.perf_counter() - start
    reader.join(timeout=30)
    time.sleep(1.0)  # daemons (Ray's) notice their driver's exit within a moment
    leftovers = session_processes(proc.pid)
    for p in leftovers:  # only processes of this run's own session
        try:
            os.kill(p["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    return Launched(wall, os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, load, lines, leftovers)


def check_launched(run: Launched, name: str, log_path: Path) -> None:
    """Exit the benchmark, with the end of the output, if the run failed."""
    if run.returncode != 0:
        sys.stderr.write(f"--- {name} failed (rc {run.returncode}); last output:\n{run.text[-6000:]}\n")
        raise SystemExit(f"{name} failed; full log {log_path}")


def alternate(variants, rounds: int, run_one: Callable[[str, int], dict],
              line: Callable[[dict], str]) -> dict[str, list[dict]]:
    """Rounds A B A B ...: `run_one(variant, round)` for every variant in every round, in the same order;
    prints `round i/n VARIANT` and `line(run)` after each. Returns {variant: [run of each round]}."""
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for round_ in range(rounds):
        for variant in variants:
            run = run_one(variant, round_)
            runs[variant].append(run)
            print(f"round {round_ + 1}/{rounds} {variant:<14} {line(run)}", flush=True)
    return runs


def results_header(module: str, argv: list[str], device: str, repo: Path, *, dirs: tuple[str, ...] = ("trainer",),
                   packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """What every results file starts with: the command, machine, git state of `dirs`, load, versions."""
    return {
        "command": f"python -m {module} " + " ".join(argv),
        "machine": machine_facts(device),
        "git": git_state(repo, dirs),
        "load_average_after": os.getloadavg(),
        "versions": {p: package_version(None, p) for p in packages},
    }
