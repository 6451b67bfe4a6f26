"""`python -m bench`: runs every benchmark in sequence, or prints the results table.

Each benchmark runs as `python -m bench.NAME` in its own process, so that one benchmark's
memory and TensorFlow state never leak into the next; their output lines pass straight through.

Example:

```sh
python -m bench                 # all benchmarks, results saved under bench/results/
python -m bench --smoke         # all of them at tiny sizes (seconds each), nothing saved
python -m bench --markdown      # the README's results table, from bench/results/*.json
```
"""

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

from bench import BENCHMARKS, common

# Above this many cores kept busy by other processes, the table says the machine was loaded.
LOADED_CORES = 0.25


def run_all(names, smoke, results_dir):
    """Runs the benchmarks one after another; returns the names of those that failed."""
    failed = []
    for name in names:
        common.log(f"running bench.{name}")
        command = [sys.executable, "-m", f"bench.{name}", "--results-dir", str(results_dir)]
        if smoke:
            command.append("--smoke")
        if subprocess.run(command, cwd=common.REPO, check=False).returncode != 0:
            common.log(f"bench.{name} failed")
            failed.append(name)
    return failed


def _machine_lines(results):
    machine = results[0]["machine"]
    dates = sorted({result["date"] for result in results})
    lines = [
        f"Date (UTC): {', '.join(dates)}. Machine: {machine['nproc']} cores ({machine['cpu_model']}), "
        f"{machine['memory_gib']:g} GiB; Python {machine['python']}, TensorFlow {machine['tensorflow']}, "
        f"Keras {machine['keras']}, numpy {machine['numpy']}, gensim {machine['gensim']}; CPU only."
    ]
    busy = [
        (result["benchmark"], result["machine"]["other_processes_cores_mean"],
         result["machine"]["other_processes_cores_max"])
        for result in results
        if (result["machine"].get("other_processes_cores_mean") or 0) > LOADED_CORES
    ]
    if busy:
        details = "; ".join(f"{name}: {mean:.1f} on average, {peak:.1f} at most" for name, mean, peak in busy)
        lines.append(
            f"**Taken on a loaded machine**: other processes kept cores busy during the runs ({details}), "
            "so absolute figures are lower and noisier than on an idle machine. Each ratio compares two "
            "measurements taken back to back under the same load."
        )
    else:
        lines.append("No other process kept the CPU busy during the runs.")
    return lines


def markdown(results_dir):
    """The results tables, from the saved JSON results."""
    results, missing = [], []
    for name in BENCHMARKS:
        path = Path(results_dir) / f"{name}.json"
        if path.is_file():
            results.append(json.loads(path.read_text()))
        else:
            missing.append(name)
    if not results:
        return None
    sections = ["\n".join(_machine_lines(results))]
    for result in results:
        module = importlib.import_module(f"bench.{result['benchmark']}")
        sections.append(module.markdown(result))
    if missing:
        sections.append(f"Not run yet: {', '.join(missing)} (`python -m bench.NAME`).")
    return "\n\n".join(sections)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description="Runs tftune's benchmarks in sequence.")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; nothing is saved")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--markdown", action="store_true", help="print the results table from saved results and exit")
    parser.add_argument("--results-dir", type=Path, default=common.RESULTS_DIR, help="where results are saved / read")
    args = parser.parse_args(argv)
    if args.markdown:
        table = markdown(args.results_dir)
        if table is None:
            print(f"error: no results in {args.results_dir}; run `python -m bench` first", file=sys.stderr)
            return 2
        print(table)
        return 0
    names = BENCHMARKS if args.only is None else tuple(args.only.split(","))
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(f"error: unknown benchmark(s) {', '.join(unknown)}; expected {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = run_all(names, args.smoke, args.results_dir)
    if failed:
        print(f"error: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
