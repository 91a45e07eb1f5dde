#!/usr/bin/env python3
"""The import benchmark: records/s and peak memory of each command on each engine.

    python bench/run.py                          # every dump, engine and command
    python bench/run.py --dumps base --engines postgresql --runs import

Dumps (tools/generate_dump.py, in wavelength order as VALD writes them):
  base    1 000 000 records, 300 species x 1 000 levels
  levels  1 000 000 records, 900 species x 5 000 levels (over a million distinct levels)
  large   5 000 000 records, 300 species x 1 000 levels
  random  the base dump's records in the generator's order (species at random)

Each command runs in a fresh database, the memory of all its processes sampled twice a
second. pgloader loads the base dump's data lines raw into one plain table (LOAD FIXED)
for comparison. Writes bench/RESULTS.md.
"""
import argparse
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import valdimport  # noqa: E402  (its batch size and SQLite settings, not its code path)

OUT = ROOT / "bench" / "out"
PYTHON = sys.executable
ENGINES = {
    "sqlite": lambda: f"sqlite:///{OUT / 'bench.sqlite3'}",
    "postgresql": lambda: os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/valdimport_bench"),
    "mysql": lambda: os.environ.get("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/valdimport_bench"),
}
DUMPS = {  # name -> (records, species, levels, order)
    "base": (1_000_000, 300, 1000, "wavelength"),
    "levels": (1_000_000, 900, 5000, "wavelength"),
    "large": (5_000_000, 300, 1000, "wavelength"),
    "random": (1_000_000, 300, 1000, "generated"),
}
RUNS = {  # name -> the commands run one after the other into a fresh database
    "import": [["import"]],
    "import-states + import-transitions": [["import-states"], ["import-transitions"]],
    "import --fast": [["import", "--fast", "--clear", "--yes"]],
}
BATCH = valdimport.ImportOptions.batch_size  # records per batch: valdimport's default
PLAN = [  # (dump, run): the targets first, then what is reported beside them
    ("base", "import"), ("levels", "import"), ("large", "import"),
    ("base", "import-states + import-transitions"), ("random", "import"), ("base", "import --fast"),
]
TARGETS = {  # (dump, run) -> engine -> records/s (or "within 15 %" of base import)
    ("base", "import"): {"sqlite": 70_000, "postgresql": 70_000, "mysql": 40_000},
    ("levels", "import"): {"sqlite": "15%", "postgresql": "15%"},
    ("large", "import"): {"sqlite": "15%", "postgresql": "15%"},
    ("base", "import-states + import-transitions"): {"sqlite": 40_000, "postgresql": 40_000, "mysql": 25_000},
}


def dump_path(name) -> Path:
    records, species, levels, order = DUMPS[name]
    path = OUT / f"dump-{records}-{species}x{levels}-{order}.dat"
    if not path.exists():
        subprocess.run([PYTHON, "tools/generate_dump.py", "--records", str(records), "--species",
                        str(species), "--levels", str(levels), "--seed", "1", "--order", order,
                        "-o", str(path)], cwd=ROOT, check=True)
    return path


def fresh_database(engine, url):
    """Drop and create the benchmark database, and its schema (outside the timing)."""
    if engine == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(str(OUT / "bench.sqlite3") + suffix).unlink(missing_ok=True)
    else:
        name = url.rsplit("/", 1)[1]
        if engine == "postgresql":
            for sql in (f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"):
                subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-c", sql], check=True)
        else:
            subprocess.run(["mysql", "-h", "127.0.0.1", "-uroot", "-e",
                            f"DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name} CHARACTER SET utf8mb4"],
                           check=True)
    subprocess.run([PYTHON, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True,
                   env=dict(os.environ, DATABASE_URL=url))
    if engine == "postgresql":  # the previous run's dirty pages written now, not during this one
        subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-c", "CHECKPOINT"], check=True)


def measured(args):
    """Run a command; (seconds, peak memory of all its processes in bytes, CPU seconds of
    the command, CPU seconds of the rest of the machine meanwhile, stdout).

    The memory is the sum of the processes' PSS (proportional set size): pages the
    processes share, such as the interpreter and libraries of the spawned parser
    workers, count once. It is read twice a second: reading it makes the kernel walk
    the page tables, and more often would slow down what is measured. The command's CPU
    time is its own and its parser processes' (user and system); the rest of the
    machine's is mostly the database server's.
    """
    before, busy = resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy()
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
    seconds, busy = time.perf_counter() - started, machine_busy() - busy
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if process.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{err}")
    return seconds, peak, cpu, max(0.0, busy - cpu), out


def machine_busy() -> float:
    """CPU seconds all cores have spent busy since boot (Linux: /proc/stat, not idle,
    iowait or steal)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def pss(pid) -> int:
    """Proportional set size of a process in bytes (Linux)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))


def levels_in(summary: str) -> int:
    match = re.search(r"levels\s+([\d,]+) new", summary)
    return int(match[1].replace(",", "")) if match else 0


class Result(NamedTuple):
    rate: float  # records/s
    peak: int  # bytes
    levels: int  # distinct levels stored
    seconds: float
    cpu: float  # CPU seconds of the importer's processes
    rest: float  # CPU seconds of the rest of the machine meanwhile (the server)

    @property
    def machine_cpu(self) -> float:
        return self.cpu + self.rest

    def cpu_text(self) -> str:
        return f"{self.cpu:.1f} + {self.rest:.1f} s ({self.machine_cpu / (self.seconds * os.cpu_count()):.0%})"


def run(engine, dump, name) -> Result:
    """One run in a fresh database."""
    url = ENGINES[engine]()
    fresh_database(engine, url)
    records = DUMPS[dump][0]
    total, peak, levels, cpu, rest = 0.0, 0, 0, 0.0, 0.0
    for command in RUNS[name]:
        seconds, memory, used, others, out = measured([
            PYTHON, "valdimport.py", "--database-url", url, *command, "--file", str(dump_path(dump)), "--quiet"])
        total, peak, levels = total + seconds, max(peak, memory), levels + levels_in(out)
        cpu, rest = cpu + used, rest + others
        print(f"  {dump:7s} {engine:10s} {' '.join(command):40s} {seconds:7.1f} s  "
              f"{memory / 2**20:5.0f} MB  {records / seconds:9,.0f} records/s  "
              f"CPU {used:5.1f} + {others:5.1f} s", flush=True)
    return Result(records / total, peak, levels, total, cpu, rest)


LEVEL_STORES = {"per batch": (True, False), "one transaction": (True, True),
                "per batch, no unique constraint": (False, False)}


def level_store_seconds(engine, url, batches) -> dict | None:
    """What the engine alone takes to store the levels of the database's last import, fed
    as the import feeds it: its states rows, read beforehand in id order, loaded into an
    empty copy of the table by COPY from text (PostgreSQL) or executemany of 50-row
    INSERTs (SQLite, NULL bound as NaN, as the writer does), with no Python work per row
    of the importer's. {LEVEL_STORES name: seconds, "rows": rows}; None for MySQL."""
    if engine == "sqlite":
        import sqlite3
        connection = sqlite3.connect(str(OUT / "bench.sqlite3"), isolation_level=None)
        cursor = connection.cursor()
        for pragma in ("journal_mode=WAL", *valdimport.SQLiteWriter.PRAGMAS):
            cursor.execute("PRAGMA " + pragma)  # as the import's writer has them
        ddl = cursor.execute("SELECT sql FROM sqlite_master WHERE name = 'states'").fetchone()[0]
        unique = re.search(r', CONSTRAINT "states_level_unique" UNIQUE \([^)]*\)', ddl)[0]
        create = ddl.replace('"states"', '"floor_states"', 1)
        tables = {True: [create], False: [create.replace(unique, "")]}
        rows = cursor.execute("SELECT * FROM states ORDER BY id").fetchall()
        width = len(rows[0]) if rows else 1
        flat = [float("nan") if v is None else v for row in rows for v in row]  # as the writer binds
        per = max(1, min(valdimport.SQLiteWriter.ROWS_PER_INSERT, 32766 // width))
        sql = "INSERT INTO floor_states VALUES " + ", ".join(["(" + ", ".join("?" * width) + ")"] * per)
        one = "INSERT INTO floor_states VALUES (" + ", ".join("?" * width) + ")"

        def load(start, stop):
            whole = start + (stop - start) // per * per
            cursor.executemany(sql, (flat[at * width:(at + per) * width] for at in range(start, whole, per)))
            cursor.executemany(one, (flat[at * width:(at + 1) * width] for at in range(whole, stop)))
    elif engine == "postgresql":
        import io
        import psycopg2
        connection = psycopg2.connect(url.replace("postgres://", "postgresql://"))
        connection.autocommit = True
        cursor = connection.cursor()
        like = "CREATE TABLE floor_states (LIKE states INCLUDING DEFAULTS)"
        tables = {True: [like, 'ALTER TABLE floor_states ADD UNIQUE (species_id, energy_scaled, "J_scaled")'],
                  False: [like]}
        text = io.BytesIO()
        cursor.copy_expert("COPY (SELECT * FROM states ORDER BY id) TO STDOUT", text)
        rows = text.getvalue().splitlines(keepends=True)

        def load(start, stop):
            cursor.copy_expert("COPY floor_states FROM STDIN", io.BytesIO(b"".join(rows[start:stop])))
    else:
        return None
    step = max(1, -(-len(rows) // batches))
    seconds = {"rows": len(rows)}
    for name, (constrained, single) in LEVEL_STORES.items():
        cursor.execute("DROP TABLE IF EXISTS floor_states")
        for statement in tables[constrained]:
            cursor.execute(statement)
        span = max(1, len(rows)) if single else step  # rows per transaction
        started = time.perf_counter()
        for first in range(0, len(rows), span):
            cursor.execute("BEGIN")
            for at in range(first, min(len(rows), first + span), step):
                load(at, min(len(rows), at + step))
            cursor.execute("COMMIT")
        seconds[name] = time.perf_counter() - started
    cursor.execute("DROP TABLE floor_states")
    connection.close()
    return seconds


def pgloader_rate(dump) -> float | None:
    """Rows/s of pgloader's LOAD FIXED of the dump's data lines into one plain table."""
    if not shutil.which("pgloader"):
        return None
    data = OUT / f"{dump_path(dump).stem}.data-lines"
    if not data.exists():
        with open(dump_path(dump), "rb") as src, open(data, "wb") as dst:
            for number, line in enumerate(src):
                if number >= 2 and not 97 <= line[0] <= 122:
                    dst.write(line)
    url = ENGINES["postgresql"]()
    name = url.rsplit("/", 1)[1]
    for sql in (f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"):
        subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-c", sql], check=True)
    fields = [("wave_ritz", 0, 15), ("wave_measured", 15, 15), ("species", 30, 6), ("loggf", 36, 8),
              ("lower_energy", 44, 14), ("lower_j", 58, 6), ("upper_energy", 64, 14), ("upper_j", 78, 6),
              ("lower_lande", 84, 7), ("upper_lande", 91, 7), ("mean_lande", 98, 7), ("gammarad", 105, 7),
              ("gammastark", 112, 7), ("gammawaals", 119, 8), ("lower_coupling", 127, 2),
              ("lower_term", 129, 86), ("upper_coupling", 215, 2), ("upper_term", 217, 86),
              ("accur", 304, 7), ("flags", 311, 2), ("comment", 313, 16), ("linelists", 329, 36)]
    command = OUT / "pgloader.load"
    command.write_text(
        f"LOAD FIXED FROM '{data}'\n ("
        + ", ".join(f"{n} from {start} for {width}" for n, start, width in fields)
        + f")\n INTO {url.replace('postgres://', 'postgresql://')} TARGET TABLE vald_lines\n WITH truncate\n"
        + " BEFORE LOAD DO $$ DROP TABLE IF EXISTS vald_lines; $$,\n $$ CREATE TABLE vald_lines ("
        + ", ".join(f"{n} text" for n, _, _ in fields) + "); $$;\n")
    started = time.perf_counter()
    subprocess.run(["pgloader", "--quiet", str(command)], check=True, capture_output=True)
    return DUMPS[dump][0] / (time.perf_counter() - started)


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    versions = []
    for command in (["psql", "--version"], ["mysql", "--version"], ["pgloader", "--version"]):
        try:
            versions.append(subprocess.run(command, capture_output=True, text=True).stdout.strip().splitlines()[0])
        except (OSError, IndexError):
            pass
    return (f"{os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}; "
            + "; ".join(versions))


def verdict(key, engine, rate, results):
    target = TARGETS.get(key, {}).get(engine)
    if target is None:
        return "report"
    if target == "15%":
        base = results.get((("base", "import"), engine))
        if base is None:
            return "?"
        return f"{rate / base.rate - 1:+.0%} {'ok' if rate >= 0.85 * base.rate else 'MISSED'}"
    return f"target {target:,}: {'ok' if rate >= target else 'MISSED'}"


def levels_budget(base: Result, levels: Result, base_store: dict, levels_store: dict) -> str:
    """Why the levels dump is or is not within 15 % of base. A run's time is its CPU
    seconds over the share of the cores it keeps busy; at the same share (the base
    import's, or all the cores for both), 15 % more time is 15 % more CPU: that is what
    the extra levels may cost, beside what they do cost and what the engine alone takes."""
    extra = levels.levels - base.levels
    spent = levels.machine_cpu - base.machine_cpu
    allowed = 0.15 * base.machine_cpu
    engine = {name: levels_store[name] - base_store[name] for name in ("per batch", "one transaction")}

    def per_level(seconds):
        return f"{seconds / max(1, extra) * 1e6:.1f} µs"
    return (f"the levels dump's {extra:,} extra levels cost {spent:.1f} CPU seconds more than the base "
            f"dump (importer {levels.cpu - base.cpu:+.1f}, rest of the machine {levels.rest - base.rest:+.1f}), "
            f"{per_level(spent)} per extra level. Within 15 % of the base import's time, at the share of "
            f"the cores it keeps busy, leaves them 15 % of its {base.machine_cpu:.1f} CPU seconds: "
            f"{allowed:.1f} s, {per_level(allowed)} per extra level. The engine alone takes "
            f"{per_level(engine['per batch'])} per extra level in a transaction per batch "
            f"({engine['per batch']:.1f} s), {per_level(engine['one transaction'])} in one transaction "
            f"({engine['one transaction']:.1f} s).")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dumps", default=",".join(DUMPS), help="which of: " + ", ".join(DUMPS))
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--runs", default=",".join(RUNS), help="which of: " + ", ".join(RUNS))
    parser.add_argument("--output", default=str(ROOT / "bench" / "RESULTS.md"))
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    engines = args.engines.split(",")
    plan = [(d, r) for d, r in PLAN if d in args.dumps.split(",") and r in args.runs.split(",")]
    results, stores = {}, {}
    for dump, name in plan:
        for engine in engines:
            results[((dump, name), engine)] = run(engine, dump, name)
            if name == "import" and dump in ("base", "levels"):
                store = level_store_seconds(engine, ENGINES[engine](), DUMPS[dump][0] // BATCH)
                if store:
                    stores[(dump, engine)] = store
    pgloader = pgloader_rate("base") if "postgresql" in engines and "base" in args.dumps else None
    lines = [f"Benchmark of {time.strftime('%Y-%m-%d')}: `python bench/run.py "
             f"--dumps {args.dumps} --engines {args.engines} --runs {args.runs}`.",
             f"Machine: {machine()}. Database servers on the same machine, default settings.", "",
             "| dump | command | engine | records/s | peak memory | limit (300 MB + 32 B/level) | verdict "
             f"| CPU: importer + rest of the machine (share of {os.cpu_count()} cores) |",
             "|---|---|---|---|---|---|---|---|"]
    for (key, engine), r in results.items():
        dump, name = key
        limit = 300 * 2**20 + 32 * r.levels
        lines.append(f"| {dump} | `{name}` | {engine} | {r.rate:,.0f} | {r.peak / 2**20:,.0f} MB | "
                     f"{limit / 2**20:,.0f} MB {'ok' if r.peak <= limit else 'OVER'} | "
                     f"{verdict(key, engine, r.rate, results)} | {r.cpu_text()} |")
    if pgloader:
        ours = results.get((("base", "import"), "postgresql"))
        lines += ["", f"pgloader, LOAD FIXED of the base dump's 1,000,000 data lines into one plain "
                      f"table (no levels, no keys, no indexes): {pgloader:,.0f} rows/s"
                  + (f"; `import` into PostgreSQL: {ours.rate:,.0f} records/s "
                     f"({'at least as fast' if ours.rate >= pgloader else 'SLOWER'})" if ours else "") + "."]
    if stores:
        lines += ["", "What the engine alone takes to store the levels of an `import` (level_store_seconds: "
                      "its rows, read beforehand, loaded as the import loads them, by COPY on PostgreSQL "
                      "and executemany on SQLite, into an empty copy of `states`, in as many transactions "
                      "as the import had batches or in one; no Python work of the importer's per row):", "",
                  "| dump | engine | level rows | " + " | ".join(LEVEL_STORES) + " | the import's whole time |",
                  "|---|---|---|" + "---|" * len(LEVEL_STORES) + "---|"]
        for (dump, engine), store in stores.items():
            whole = results[((dump, "import"), engine)].seconds
            lines.append(f"| {dump} | {engine} | {store['rows']:,} | "
                         + " | ".join(f"{store[name]:.1f} s" for name in LEVEL_STORES) + f" | {whole:.1f} s |")
        for engine in engines:
            if ("base", engine) in stores and ("levels", engine) in stores:
                lines.append(f"- {engine}: " + levels_budget(results[(("base", "import"), engine)],
                                                            results[(("levels", "import"), engine)],
                                                            stores[("base", engine)], stores[("levels", engine)]))
        lines.append("")
    for dump in dict.fromkeys(d for d, _ in plan):
        records, species, levels, order = DUMPS[dump]
        lines.append(f"- {dump}: {records:,} records, {species} species x {levels} levels, {order} order "
                     f"(`tools/generate_dump.py --records {records} --species {species} --levels {levels} "
                     f"--seed 1 --order {order}`)")
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
