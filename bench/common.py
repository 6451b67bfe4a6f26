"""What every benchmark shares: paths, the machine description, peak memory, worker processes and output.

A benchmark module defines `measure(args) -> dict`, `summary(result) -> str` and
`markdown(result) -> str`, and calls `main(...)` from here. `main` keeps stdout for the two
lines of output (the JSON object, then the summary): anything that training prints (Keras
progress bars) goes to stderr instead.

Loads that need honest peak memory run in a fresh `python -m bench.NAME --worker SPEC`
process (`run_worker`): `ru_maxrss` only ever grows, so within one process the second
measurement would inherit the first one's peak. `run_workers` runs several, each in its own
process, or at --smoke (whose figures are not kept) all in one, to import TensorFlow once.

Example:

```python
from bench import common

def measure(args):
    return {"answer": 42}

if __name__ == "__main__":
    common.main("demo", "What the demo measures.", measure, lambda r: "demo: 42", add_arguments=None)
```
"""

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import pytorch
from tftune.cli import configure_logging

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "pretrained"
SHARED_DATA = REPO.parent / "shared" / "data"
RESULTS_DIR = REPO / "bench" / "results"
SHIPPED_GLOVE = PRETRAINED / "glove.6B.50d.top20k.txt"
SHIPPED_CORPUS = PRETRAINED / "corpus" / "wikitext-2-valid.txt"
AUTHORS = PRETRAINED / "authors"
# What the shipped recipes pretrained on while data were recipe settings: the default corpus of a
# benchmark's own language model.
SHIPPED_PRETRAINING_CORPUS = (SHIPPED_CORPUS, AUTHORS / "train.csv")


def display_path(path):
    """A path as the results show it: relative to the repository (`../shared/...` beside it)."""
    path = Path(path).resolve()
    for base, prefix in ((REPO, ""), (REPO.parent, "../")):
        if path.is_relative_to(base):
            return prefix + path.relative_to(base).as_posix()
    return path.name


# === Memory ===


def peak_rss_mb():
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _status_mb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def reset_peak_rss():
    """Restarts `phase_peak_rss_mb` from the current RSS, so that a later peak is a phase's own.

    Needs Linux >= 4.0 (`/proc/self/clear_refs`); without it the peak counts from the start.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def phase_peak_rss_mb():
    """Peak resident memory since the last `reset_peak_rss`, in MiB (`VmHWM`).

    Not `ru_maxrss`: that also keeps the peak recorded whenever a thread exits, so a reset
    does not lower it once, say, a TensorFlow thread has ended.
    """
    return _status_mb("VmHWM")


def current_rss_mb():
    """Resident memory of this process now, in MiB."""
    return _status_mb("VmRSS")


# === The machine ===


def _cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _versions():
    versions = {"python": platform.python_version()}
    for module in ("tensorflow", "keras", "numpy", "gensim"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    # The optional peer of bench.rnn_stack and bench.lm_throughput: its version without importing it.
    versions["torch"] = pytorch.version()
    return versions


# The CPU's vector extensions that decide which GEMM kernels TensorFlow, numpy and PyTorch can use.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_flags():
    """The `VECTOR_FLAGS` this CPU has, in that order."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in VECTOR_FLAGS if flag in present]
    return []


def tensorflow_matmul_peak_gflops(size=2048, repeats=10):
    """Float32 GFLOP/s of TensorFlow's `size` × `size` matmul, best of `repeats`: the ceiling recurrent stacks are held to."""
    import tensorflow as tf

    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    matmul().numpy()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul().numpy()
        timings.append(time.perf_counter() - start)
    return 2 * size**3 / min(timings) / 1e9


def machine_info():
    """Date (UTC), cores, CPU model and vector flags, and library versions, as recorded with every result."""
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "cpu_flags": cpu_flags(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        **_versions(),
    }


class OtherLoad:
    """Samples how many cores processes outside this benchmark's process tree keep busy.

    The machine may be shared: this says whether the figures were taken on a loaded machine.
    A background thread reads `/proc/*/stat` every `interval` seconds.
    """

    def __init__(self, interval=5.0):
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ticks = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _processes():
        """{pid: (parent pid, utime + stime ticks)} of every process."""
        processes = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Fields after the parenthesised command name, which may hold spaces.
            fields = stat[stat.rindex(")") + 2 :].split()
            processes[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        return processes

    @staticmethod
    def _ours(processes):
        ours, frontier = {os.getpid()}, [os.getpid()]
        children = {}
        for pid, (parent, _) in processes.items():
            children.setdefault(parent, []).append(pid)
        while frontier:
            for child in children.get(frontier.pop(), []):
                ours.add(child)
                frontier.append(child)
        return ours

    def _run(self):
        before, started = self._processes(), time.monotonic()
        while not self._stop.wait(self.interval):
            after, now = self._processes(), time.monotonic()
            ours = self._ours(after)
            busy = sum(
                ticks - before[pid][1]
                for pid, (_, ticks) in after.items()
                if pid in before and pid not in ours and ticks >= before[pid][1]
            )
            self.samples.append(busy / self._ticks / (now - started))
            before, started = after, now

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def report(self):
        """Mean and peak cores used by other processes, and the load average at the end."""
        mean = sum(self.samples) / len(self.samples) if self.samples else None
        return {
            "other_processes_cores_mean": None if mean is None else round(mean, 2),
            "other_processes_cores_max": round(max(self.samples), 2) if self.samples else None,
            "load_average_1min_end": round(os.getloadavg()[0], 2),
        }


# === Worker processes ===


def run_worker(module, spec):
    """Runs `python -m MODULE --worker SPEC` in a fresh process and returns its result dict.

    The worker's stdout (Keras progress) and stderr go to this process's stderr.
    """
    with tempfile.TemporaryDirectory(prefix="tftune-bench-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps({**spec, "result_path": str(Path(tmp) / "result.json")}))
        completed = subprocess.run(
            [sys.executable, "-m", module, "--worker", str(spec_path)],
            cwd=REPO,
            stdout=sys.stderr,
            stderr=sys.stderr,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"{module} worker {spec.get('name', '')} failed with exit status {completed.returncode}")
        return json.loads((Path(tmp) / "result.json").read_text())


def run_workers(module, specs, fresh=True):
    """The result dicts of `python -m MODULE --worker` for each of `specs`, in order.

    With `fresh`, each spec runs in a process of its own, as honest peak memory needs. Without
    it (--smoke, whose figures are not kept), one worker process runs them all in turn, so
    TensorFlow is imported once; each result's peak RSS is then the process's so far.

    Args:
        module: the benchmark module whose `work` runs each spec.
        specs: JSON-serializable dicts, as for `run_worker`.
        fresh: one process per spec (else one for all).

    Example: `run_workers("bench.scaling", [spec_a, spec_b], fresh=not args.smoke)`.
    """
    if fresh:
        return [run_worker(module, spec) for spec in specs]
    return run_worker(module, {"name": f"{len(specs)} specs", "specs": specs})["results"]


def _worked(work, spec):
    result = work(spec)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    return result


def worker_main(argv, work):
    """In a worker process: runs `work(spec) -> dict` (each of `spec["specs"]` in turn when given) and
    writes the result with the peak RSS."""
    spec = json.loads(Path(argv[1]).read_text())
    with contextlib.redirect_stdout(sys.stderr):
        if "specs" in spec:  # `run_workers` without fresh processes
            result = {"results": [_worked(work, one) for one in spec["specs"]]}
        else:
            result = _worked(work, spec)
    Path(spec["result_path"]).write_text(json.dumps(result))


# === Running a benchmark ===


def ratio(numerator, denominator, digits=4):
    """`numerator / denominator` to `digits` significant digits; None if either is missing or the denominator is 0."""
    if numerator is None or denominator in (None, 0):
        return None
    return significant(numerator / denominator, digits)


def significant(value, digits=4):
    """`value` rounded to `digits` significant digits (0.000123456 -> 0.0001235)."""
    return float(f"{value:.{digits}g}")


def main(name, description, measure, summary, add_arguments=None, work=None, argv=None):
    """Parses the command line, measures, prints the JSON object and the summary, saves the result.

    Args:
        name: the benchmark's name (its module name and results file name).
        description: one line for `--help`.
        measure: `measure(args) -> dict`, the benchmark itself.
        summary: `summary(result) -> str`, the one-line summary.
        add_arguments: optional `add_arguments(parser)` for the benchmark's own options.
        work: optional `work(spec) -> dict` run by `--worker SPEC` processes.
        argv: the arguments (default `sys.argv[1:]`).
    """
    argv = sys.argv[1:] if argv is None else argv
    if work is not None and argv[:1] == ["--worker"]:
        worker_main(argv, work)
        return None
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds; nothing is saved")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON result is saved")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging()  # tftune's own progress lines, as the command line shows them
    started = time.perf_counter()
    machine = machine_info()
    with OtherLoad() as load, contextlib.redirect_stdout(sys.stderr):
        measurements = measure(args)
    result = {
        "benchmark": name,
        "date": machine.pop("date"),
        "smoke": args.smoke,
        "machine": {**machine, **load.report()},
        "wall_seconds": round(time.perf_counter() - started, 1),
        **measurements,
    }
    print(json.dumps(result), flush=True)
    print(summary(result), flush=True)
    if not args.smoke:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        (args.results_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def log(message):
    """A progress line on stderr."""
    print(f"bench: {message}", file=sys.stderr, flush=True)
