"""One valdimport command at a time writes to a database: a second one waits (--wait) or
stops at once naming the run that holds the lock; either way every line is stored once."""
import contextlib
import json
import re
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, cli_env, connect, generate_dump, run_cli, scalar, summary_rows

RECORDS = 6000


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    return generate_dump(tmp_path_factory.mktemp("lock") / "d.dat", records=RECORDS, seed=21)


def start(url, dump, *args):
    """An import that commits often, so that it runs for a while."""
    return subprocess.Popen([sys.executable, str(ROOT / "valdimport.py"), "--database-url", url,
                             "import", "--file", str(dump), "--batch-size", "10", *args],
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process):
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


def committed(url):
    try:
        return scalar(url, "SELECT MAX(committed_line) FROM import_runs") or 0
    except Exception:  # no tables yet
        return 0


@contextlib.contextmanager
def stalled(url):
    """Another program holds the transitions table meanwhile: an import that writes to it
    waits, still holding the lock (it is not this test's timing that keeps it running)."""
    db = connect(url, isolation_level=None, timeout=30) if url.startswith("sqlite") else connect(url)
    cursor = db.cursor()
    cursor.execute({"sqlite": "BEGIN IMMEDIATE", "postgres": "LOCK TABLE transitions IN SHARE MODE",
                    "mysql": "LOCK TABLES transitions READ"}[url.partition(":")[0]])
    try:
        yield
    finally:
        db.rollback() if not url.startswith("mysql") else cursor.execute("UNLOCK TABLES")
        db.close()


def every_line_once(url, dump):
    verified = run_cli("verify", "--file", dump, "--json", url=url)
    rows = {row["check"]: row for row in json.loads(verified.stdout)["rows"]}
    assert rows["species whose transitions differ from d.dat"]["ok"], rows
    assert rows["levels stored twice (species, energy, J)"]["ok"]
    assert scalar(url, "SELECT COUNT(*) FROM transitions") == RECORDS


def test_two_imports_started_together_on_an_empty_database_store_every_line_once(empty_database, dump):
    both = [start(empty_database, dump, "--wait") for _ in range(2)]
    (code1, out1, err1), (code2, out2, err2) = [finish(p) for p in both]
    assert (code1, code2) == (0, 0), err1 + err2
    heads = sorted(out.splitlines()[0] for out in (out1, out2))
    assert heads == ["import: run 1 completed",
                     "import: run 2 found nothing new: run 1 imported this input already"]
    assert "waiting for " in err1 + err2  # the second one waited for the first
    every_line_once(empty_database, dump)


def test_a_second_import_stops_at_once_naming_the_run_that_holds_the_lock(empty_database, dump):
    first = start(empty_database, dump)
    while committed(empty_database) == 0 and first.poll() is None:
        time.sleep(0.05)
    with stalled(empty_database):
        refused = start(empty_database, dump)
        _, err = refused.communicate(timeout=60)  # at once: it does not wait for the database
        waiting = start(empty_database, dump, "--wait")
        waited = waiting.stderr.readline()
        assert first.poll() is None
    assert refused.returncode == 2 and err.count("\n") == 1 and "Traceback" not in err
    holder = f"run 1 (import {dump}, pid {first.pid} on {socket.gethostname()})"
    assert err.startswith(f"valdimport: error: {holder} is writing to ") and "--wait" in err
    assert waited == f"valdimport: waiting for {holder} to finish\n"
    (code1, out1, err1), (code2, out2, err2) = finish(first), finish(waiting)
    assert (code1, code2) == (0, 0), err1 + err2
    assert summary_rows(out1)["transitions"] == f"{RECORDS:,}"
    assert "found nothing new" in out2.splitlines()[0]
    every_line_once(empty_database, dump)


def test_an_operation_that_writes_stops_or_waits_as_its_message_says(empty_database, dump):
    """housekeeping writes too: its refusal names --wait, and --wait is an option it takes."""
    first = start(empty_database, dump)
    while committed(empty_database) == 0 and first.poll() is None:
        time.sleep(0.05)
    with stalled(empty_database):
        refused = run_cli("housekeeping", url=empty_database)
        waiting = subprocess.Popen([sys.executable, str(ROOT / "valdimport.py"), "--database-url",
                                    empty_database, "housekeeping", "--wait"], env=cli_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        waited = waiting.stderr.readline()
        assert first.poll() is None
    err = refused.stderr.decode()
    assert refused.returncode == 2 and "rerun with --wait to wait for it" in err, err
    assert waited.startswith("valdimport: waiting for run 1 (import ")
    assert finish(first)[0] == 0
    code, out, err = finish(waiting)
    assert code == 0, err
    assert out.startswith("housekeeping: ")


HOLD = """import sys
sys.path.insert(0, sys.argv[1])
import valdimport
valdimport.configure_django(sys.argv[2])
with valdimport.database_lock("default", command="housekeeping"):
    print("locked", flush=True)
    sys.stdin.read()
"""


def holder_named(pid):
    return re.escape(f"valdimport housekeeping (pid {pid} on {socket.gethostname()})")


def test_a_holder_without_a_run_is_named_by_its_pid_and_host(empty_database, dump):
    """A command holding the lock before it has a run (creating the schema), or one that makes
    none (housekeeping, rollback), is named all the same: pid and host, in one line."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(ROOT), empty_database], env=cli_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        refused = run_cli("import", "--file", dump, url=empty_database)
        waiting = start(empty_database, dump, "--wait")
        waited = waiting.stderr.readline()
    finally:
        holder.communicate(timeout=60)  # closing its input ends it, and the lock with it
    err = refused.stderr.decode()
    name = holder_named(holder.pid)
    assert refused.returncode == 2 and err.count("\n") == 1, err
    assert re.fullmatch(f"valdimport: error: {name} is writing to .*; rerun with --wait .*\n", err), err
    assert re.fullmatch(f"valdimport: waiting for {name} to finish\n", waited), waited
    code, out, err = finish(waiting)
    assert code == 0, err
    assert summary_rows(out)["transitions"] == f"{RECORDS:,}"
