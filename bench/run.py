#!/usr/bin/env python3
"""The import benchmark: every command on every engine, records/s and peak memory.

    python bench/run.py                      # 1 000 000 records, all engines
    python bench/run.py --records 200000 --engines sqlite

It generates the dump once (tools/generate_dump.py, 300 species x 1000 levels),
times each command in a fresh database with the memory of all its processes
sampled twice a second, times the bare parse for comparison, and writes
bench/RESULTS.md (the table the README shows).
"""
import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
PYTHON = sys.executable
ENGINES = {
    "sqlite": lambda: f"sqlite:///{OUT / 'bench.sqlite3'}",
    "postgresql": lambda: os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/valdimport_bench"),
    "mysql": lambda: os.environ.get("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/valdimport_bench"),
}
RUNS = {  # name -> the commands run one after the other into a fresh database
    "import": [["import"]],
    "import --fast": [["import", "--fast", "--clear", "--yes"]],
    "import-states + import-transitions": [["import-states"], ["import-transitions"]],
    "two passes --fast": [["import-states", "--fast", "--clear", "--yes"],
                          ["import-transitions", "--fast", "--clear", "--yes"]],
}


def fresh_database(engine, url):
    """Drop and create the benchmark database."""
    if engine == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(str(OUT / "bench.sqlite3") + suffix).unlink(missing_ok=True)
        return
    name = url.rsplit("/", 1)[1]
    if engine == "postgresql":
        for sql in (f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"):
            subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-c", sql], check=True)
    else:
        subprocess.run(["mysql", "-h", "127.0.0.1", "-uroot", "-e",
                        f"DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name} CHARACTER SET utf8mb4"],
                       check=True)


def measured(args):
    """Run a command; (seconds, peak memory of all its processes in bytes, stdout).

    The memory is the sum of the processes' PSS (proportional set size): pages the
    processes share, such as the interpreter and libraries of the spawned parser
    workers, count once, as they take up memory once (summing RSS would count them
    once per process). Reading it makes the kernel walk a process's page tables
    (about 5 ms for 200 MB, and the process waits meanwhile), so it is read twice a
    second: more often would slow down what is measured.
    """
    started = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            peak = max(peak, sum(pss(p.pid) for p in [root] + root.children(recursive=True)))
        except (OSError, psutil.Error):
            pass
        time.sleep(0.5)
    out, err = process.communicate()
    if process.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{err}")
    return time.perf_counter() - started, peak, out


def pss(pid) -> int:
    """Proportional set size of a process in bytes (Linux)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))


def run_engine(engine, dump, records):
    url = ENGINES[engine]()
    rows = []
    for name, commands in RUNS.items():
        fresh_database(engine, url)
        # the schema is created by a first tiny import, outside the timing
        subprocess.run([PYTHON, "valdimport.py", "--database-url", url, "import-states",
                        "--file", str(ROOT / "tests/data/sample.dat.gz"), "--dry-run"], cwd=ROOT,
                       capture_output=True, check=True)
        total, peak = 0.0, 0
        for command in commands:
            seconds, rss, out = measured([PYTHON, "valdimport.py", "--database-url", url, *command,
                                          "--file", str(dump), "--quiet"])
            total += seconds
            peak = max(peak, rss)
            print(f"  {engine:10s} {' '.join(command):45s} {seconds:7.1f} s  {rss / 2**20:5.0f} MB",
                  flush=True)
        rows.append((name, engine, records / total, peak))
    return rows


def parse_rate(dump, records):
    """Records per second of the bare parse (one process, no database)."""
    sys.path.insert(0, str(ROOT))
    import valdimport as vi
    lines = dump.read_bytes().splitlines(keepends=True)[: 2 * min(records, 200_000) + 2]
    rates = {}
    for label, rows in (("pass 2 (text rows)", vi.TEXT), ("pass 1 (levels only)", None)):
        shipped = vi.KeySet()
        started = time.perf_counter()
        for i in range(0, len(lines), 20_000):
            parsed = vi.parse_batch(lines[i:i + 20_000], i + 1, vi.ParseConfig(rows=rows), shipped)
            shipped.update(parsed.levels)
        rates[label] = (len(lines) // 2) / (time.perf_counter() - started)
    return rates


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    versions = []
    for command in (["psql", "--version"], ["mysql", "--version"]):
        try:
            versions.append(subprocess.run(command, capture_output=True, text=True).stdout.strip())
        except OSError:
            pass
    return (f"{os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}; "
            + "; ".join(versions))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--engines", default="sqlite,postgresql,mysql")
    parser.add_argument("--runs", default=",".join(RUNS), help="which of: " + ", ".join(RUNS))
    parser.add_argument("--output", default=str(ROOT / "bench" / "RESULTS.md"))
    args = parser.parse_args()
    for name in list(RUNS):
        if name not in args.runs.split(","):
            del RUNS[name]
    OUT.mkdir(parents=True, exist_ok=True)
    dump = OUT / f"dump-{args.records}.dat"
    if not dump.exists():
        subprocess.run([PYTHON, "tools/generate_dump.py", "--records", str(args.records), "--species",
                        "300", "--levels", "1000", "--seed", "1", "-o", str(dump)], cwd=ROOT, check=True)
    results = []
    for engine in args.engines.split(","):
        results += run_engine(engine, dump, args.records)
    parse = parse_rate(dump, args.records)
    engines = args.engines.split(",")
    lines = [f"Benchmark: {args.records:,} generated records (300 species x 1000 levels), "
             f"`python bench/run.py --records {args.records}`, {time.strftime('%Y-%m-%d')}.",
             f"Machine: {machine()}. Database servers on the same machine, default settings.", "",
             "| command | " + " | ".join(engines) + " |", "|---|" + "---|" * len(engines)]
    for name in RUNS:
        cells = [next(f"{rate:,.0f} records/s, {peak / 2**20:,.0f} MB" for n, e, rate, peak in results
                      if n == name and e == engine) for engine in engines]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += ["", "Peak memory is the largest sum, sampled every 0.5 s, of the PSS of the importer's "
              "processes (main, parser workers, multiprocessing helper). Bare parse on one core, no database: "
              + ", ".join(f"{label} {rate:,.0f} records/s" for label, rate in parse.items()) + "."]
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
