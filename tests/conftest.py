"""Fixtures shared by the test files: engines, sample data, running the CLI."""
import contextlib
import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SAMPLE = DATA / "sample.dat.gz"
ENGINES = ("default", "postgresql", "mysql")


def _engine_param(alias):
    if alias in settings.DATABASES:
        mark = pytest.mark.django_db(transaction=True, databases=[alias])
    else:
        from tests.settings import UNAVAILABLE
        mark = pytest.mark.skip(reason=UNAVAILABLE.get(alias, f"{alias} not configured"))
    return pytest.param(alias, marks=mark, id={"default": "sqlite"}.get(alias, alias))


def pytest_terminal_summary(terminalreporter):
    """One line per engine whose tests were skipped: why, and what to install."""
    from tests.settings import UNAVAILABLE
    skipped = [report.longrepr[2] for report in terminalreporter.stats.get("skipped", [])
               if isinstance(report.longrepr, tuple)]
    for alias, reason in UNAVAILABLE.items():
        count = sum(1 for text in skipped if reason in text)
        if count:
            terminalreporter.write_line(f"SKIPPED {count} {alias} tests: {reason}", yellow=True)


@pytest.fixture(params=[_engine_param(alias) for alias in ENGINES])
def engine(request):
    """A database alias (SQLite, PostgreSQL, MySQL) with empty, migrated tables."""
    return request.param


@pytest.fixture(autouse=True)
def own_working_directory(tmp_path, monkeypatch):
    """Each test runs in its own folder, where default reject files go (never the checkout)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def sqlite_only():
    return "default"


def database_url(alias):
    """The URL of the (test) database behind ``alias``, for subprocesses."""
    s = connections[alias].settings_dict
    vendor = connections[alias].vendor
    if vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    scheme = {"postgresql": "postgres", "mysql": "mysql"}[vendor]
    credentials = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"{scheme}://{credentials}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


@pytest.fixture
def empty_database(engine, tmp_path):
    """The URL of a database of ``engine``'s kind that holds nothing yet, not even tables."""
    vendor = connections[engine].vendor
    if vendor == "sqlite":
        yield f"sqlite:///{tmp_path}/empty.sqlite3"
        return
    name = f"{connections[engine].settings_dict['NAME']}_empty"
    with connections[engine].cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        cursor.execute(f"CREATE DATABASE {name}" + (" CHARACTER SET utf8mb4" if vendor == "mysql" else ""))
    yield database_url(engine).rsplit("/", 1)[0] + "/" + name
    with connections[engine].cursor() as cursor:
        cursor.execute(f"DROP DATABASE {name}" + (" WITH (FORCE)" if vendor == "postgresql" else ""))


def connect(url, **options):
    """A DB-API connection of the test's own to the database at ``url``."""
    import dj_database_url
    config = dj_database_url.parse(url)
    if config["ENGINE"].endswith("sqlite3"):
        import sqlite3
        return sqlite3.connect(config["NAME"], **options)
    if config["ENGINE"].endswith("postgresql"):
        import psycopg2
        return psycopg2.connect(dbname=config["NAME"], host=config["HOST"], port=config["PORT"],
                                user=config["USER"], password=config["PASSWORD"])
    import MySQLdb
    return MySQLdb.connect(db=config["NAME"], host=config["HOST"], port=int(config["PORT"]),
                           user=config["USER"], password=config["PASSWORD"])


def scalar(url, sql):
    """One value from the database at ``url``."""
    with contextlib.closing(connect(url)) as db:
        cursor = db.cursor()
        cursor.execute(sql)
        return cursor.fetchone()[0]


def unprivileged(command):
    """``command`` run so that permission bits count: under root, without the capabilities
    that override them, so that a read-only file or folder is one."""
    if os.geteuid() == 0:
        return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *map(str, command)]
    return command


def cli_env():
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "settings_dev"
    env.pop("DATABASE_URL", None)
    return env


def run_cli(*args, url=None, stdin=None, cwd=None):
    """Run ``python valdimport.py [--database-url URL] ARGS``; returns the CompletedProcess."""
    command = [sys.executable, str(ROOT / "valdimport.py")]
    if url:
        command += ["--database-url", url]
    return subprocess.run(command + [str(a) for a in args], input=stdin, capture_output=True,
                          cwd=cwd, env=cli_env(), timeout=300)


@pytest.fixture(scope="session")
def sample_lines():
    """The bundled sample, as a list of byte lines."""
    with gzip.open(SAMPLE, "rb") as f:
        return f.read().splitlines(keepends=True)


def write_dump(path, lines):
    path = Path(path)
    path.write_bytes(b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines))
    return path


def content(alias):
    """Everything the import stored, independent of ids: for comparing databases."""
    from node_atom.models import State, Transition
    from node_common.models import Species

    state_fields = [f.attname for f in State._meta.concrete_fields if f.attname not in ("id", "run_id")]
    states = {row[0]: row[1:] for row in State.objects.using(alias).values_list("id", *state_fields)}
    key_at = [state_fields.index(c) for c in ("species_id", "energy_scaled", "J_scaled")]

    def key(state_id):
        return tuple(states[state_id][i] for i in key_at)

    transition_fields = [f.attname for f in Transition._meta.concrete_fields
                         if f.attname not in ("id", "run_id", "upstate_id", "lostate_id")]
    transitions = [(key(lo), key(up), *rest) for lo, up, *rest in Transition.objects.using(alias)
                   .order_by("id").values_list("lostate_id", "upstate_id", *transition_fields)]
    species = list(Species.objects.using(alias).order_by("id").values_list(
        "id", "name", "ground_state_id"))
    ground = {sp: key(g) if g else None for sp, _, g in species}
    return {"states": sorted(states.values(), key=lambda row: tuple(row[i] for i in key_at)),
            "transitions": transitions,
            "species": [(sp, name) for sp, name, _ in species], "ground": ground}


def summary_rows(text):
    """The summary table printed by a command, as {label: value}."""
    rows = {}
    for line in text.splitlines()[1:]:
        if not line.strip():  # the phase table follows
            break
        label, _, value = line.strip().partition("  ")
        rows[label] = value.strip()
    return rows


AB_COLUMNS = ("ID", "SPEID", "E", "J", "TERM", "A", "dA", "B", "dB")


def write_ab(path, rows, columns=AB_COLUMNS, table="AB"):
    """A hyperfine file: an SQLite file with ``rows`` (tuples in ``columns`` order) in ``table``."""
    import sqlite3
    db = sqlite3.connect(path)
    db.execute(f"CREATE TABLE {table} ({', '.join(columns)})")
    db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(columns))})", rows)
    db.commit()
    db.close()
    return path


def generate_dump(path, records=2000, seed=1, species=30, levels=100):
    """A synthetic dump written by tools/generate_dump.py, and next to it (PATH.bib) the
    BibTeX references it names."""
    subprocess.run([sys.executable, str(ROOT / "tools" / "generate_dump.py"), "--records", str(records),
                    "--seed", str(seed), "--species", str(species), "--levels", str(levels),
                    "-o", str(path), "--bibtex", f"{path}.bib"], check=True)
    return Path(path)


def clear(alias):
    """Empty every table the importer writes."""
    from node_atom.models import State, Transition
    from node_common.models import ImportRun, LineList, Reference, Species, SpeciesComponent
    for model in (Transition, State, SpeciesComponent, Species, ImportRun, LineList, Reference):
        model.objects.using(alias).all().delete()


def run_counts(alias, run_id):
    from node_common.models import ImportRun
    run = ImportRun.objects.using(alias).get(pk=run_id)
    return (run.lines_read, run.imported, run.skipped, run.rejected, run.committed_line, run.status)



def expected_content(path, skip_header=2):
    """What importing ``path`` must store, built line by line with parse_record (the
    reference parser), in the form of content(): independent of the columnar parser,
    the level index and the writers. Only for dumps without rejected lines."""
    from node_atom.models import State, Transition
    import valdimport as vi

    def is_reference(line):
        return bool(line) and 97 <= line[0] <= 122

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        lines = f.read().splitlines()
    state_fields = [f for f in State._meta.concrete_fields if f.attname not in ("id", "run_id")]
    transition_fields = [f for f in Transition._meta.concrete_fields
                         if f.attname not in ("id", "run_id", "upstate_id", "lostate_id")]
    states, transitions = {}, []
    for i in range(skip_header, len(lines)):
        if not lines[i].strip() or is_reference(lines[i]):
            continue
        ref = lines[i + 1] if i + 1 < len(lines) and is_reference(lines[i + 1]) else None
        record = vi.parse_record(vi.decoded_line(lines[i]), None if ref is None else vi.decoded_line(ref))
        keys = []
        for key, row in ((record.lower_key, record.lower), (record.upper_key, record.upper)):
            states.setdefault(key_parts(key), tuple(f.to_python(row.get(f.attname)) for f in state_fields))
            keys.append(key_parts(key))
        transitions.append((*keys, *(f.to_python(record.transition.get(f.attname))
                                     for f in transition_fields)))
    return {"states": [states[key] for key in sorted(states)], "transitions": transitions}


def key_parts(key: complex) -> tuple[int, int, int]:
    """(species_id, energy_scaled, J_scaled) of a level key: valdimport.level_key undone."""
    real = int(key.real)
    return real >> 17, int(key.imag), (real & 131071) - 1


def key_columns(keys) -> tuple:
    """key_parts of an array of level keys, as three int64 arrays."""
    real = keys.real.astype("int64")
    return real >> 17, keys.imag.astype("int64"), (real & 131071) - 1
