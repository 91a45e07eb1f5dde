"""Transient faults (lost connections, locks) are retried on a fresh connection; other
failures stop with one clear line and exit 2."""
import sqlite3
import subprocess
import sys
import time

import pytest
from django.conf import settings
from django.db import connections

import valdimport as vi
from node_common.models import ImportRun
from tests.conftest import (ROOT, SAMPLE, clear, cli_env, content, database_url, generate_dump,
                            run_cli, summary_rows)


def _server(alias):
    if alias in settings.DATABASES:
        return pytest.param(alias, marks=pytest.mark.django_db(transaction=True, databases=[alias]))
    from tests.settings import UNAVAILABLE
    return pytest.param(alias, marks=pytest.mark.skip(reason=UNAVAILABLE.get(alias, alias)))


@pytest.fixture(params=[_server("postgresql"), _server("mysql")])
def server(request):
    return request.param


@pytest.fixture(scope="module")
def long_dump(tmp_path_factory):
    return generate_dump(tmp_path_factory.mktemp("faults") / "d.dat", records=6000, seed=5)


def kill_importer_connections(alias):
    """Terminate every other session on the test database: the importer's."""
    with connections[alias].cursor() as cursor:
        if connections[alias].vendor == "postgresql":
            cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            return cursor.fetchone()[0]
        cursor.execute("SELECT id FROM information_schema.processlist "
                       "WHERE db = DATABASE() AND id <> CONNECTION_ID()")
        ids = [row[0] for row in cursor.fetchall()]
        for ident in ids:
            cursor.execute(f"KILL {int(ident)}")
        return len(ids)


def committed(alias):
    return max(ImportRun.objects.using(alias).values_list("committed_line", flat=True), default=0)


def test_lost_connections_are_retried_and_the_content_is_exact(server, long_dump, tmp_path):
    url = database_url(server)
    args = [sys.executable, str(ROOT / "valdimport.py"), "--database-url", url, "import",
            "--file", str(long_dump), "--batch-size", "20"]
    reference = subprocess.run(args, cwd=tmp_path, env=cli_env(), capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    expected = content(server)
    clear(server)

    process = subprocess.Popen(args, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # a reject file goes there
    killed = 0
    for threshold in (200, 3000):
        while committed(server) < threshold and process.poll() is None:
            time.sleep(0.02)
        assert process.poll() is None, "the import ended before its connection could be killed"
        killed += kill_importer_connections(server)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, out + err
    assert killed >= 2
    retries = summary_rows(out)["retries"]
    assert int(retries.split()[0]) >= 2
    assert content(server) == expected
    run = ImportRun.objects.using(server).get()
    assert (run.status, run.imported, run.rejected) == ("completed", 6000, 0)


def test_when_retries_run_out_the_run_stops_and_can_be_resumed(server, tmp_path):
    url = database_url(server)
    args = [sys.executable, str(ROOT / "valdimport.py"), "--database-url", url, "import",
            "--file", str(SAMPLE), "--batch-size", "10", "--retries", "0"]
    process = subprocess.Popen(args, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    while committed(server) < 100 and process.poll() is None:
        time.sleep(0.01)
    kill_importer_connections(server)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 1
    # psycopg2 itself now and then prints a SystemError to stderr when the server kills a
    # COPY in the middle; the importer's own report is the one line at the end
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("valdimport: error: the database failed 1 times") and "resume" in last
    assert "Traceback" not in err
    resumed = subprocess.run(args, cwd=tmp_path, env=cli_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in summary_rows(resumed.stdout)
    from node_atom.models import Transition
    assert Transition.objects.using(server).count() == 2000


def test_a_locked_sqlite_database_is_retried(tmp_path):
    url = f"sqlite:///{tmp_path}/locked.sqlite3?timeout=1"  # SQLite's busy timeout, seconds
    assert run_cli("import", "--file", SAMPLE, "--restart", url=url).returncode == 0
    blocker = sqlite3.connect(tmp_path / "locked.sqlite3", timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "valdimport.py"), "--database-url", url, "import", "--file",
         str(SAMPLE), "--restart"], cwd=ROOT, env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)  # longer than the busy timeout: the importer gets "database is locked"
    blocker.rollback()
    blocker.close()
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "locked" in summary_rows(out)["retries"]


def test_an_import_waits_for_a_write_transaction_of_another_sqlite_connection(long_dump, tmp_path):
    """Another program holds BEGIN IMMEDIATE for longer than the busy timeout: the batch is
    retried on a fresh connection (tuned before Django begins its transaction)."""
    database = tmp_path / "busy.sqlite3"
    url = f"sqlite:///{database}?timeout=1"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "valdimport.py"), "--database-url", url, "import", "--file",
         str(long_dump), "--batch-size", "20"], cwd=tmp_path, env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while process.poll() is None:
        try:
            with sqlite3.connect(database) as db:
                if (db.execute("SELECT MAX(committed_line) FROM import_runs").fetchone()[0] or 0) > 200:
                    break
        except sqlite3.OperationalError:  # no tables yet
            pass
        time.sleep(0.05)
    blocker = sqlite3.connect(database, timeout=10, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    assert process.poll() is None, "the import ended before the database could be locked"
    time.sleep(3)  # three times the busy timeout
    blocker.execute("ROLLBACK")
    blocker.close()
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert "locked" in summary_rows(out)["retries"]
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM transitions").fetchone()[0] == 6000


def test_the_schema_is_created_once_a_write_transaction_of_another_connection_ends(tmp_path):
    database = tmp_path / "new.sqlite3"
    blocker = sqlite3.connect(database, timeout=0, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "valdimport.py"), "--database-url", f"sqlite:///{database}?timeout=1",
         "import", "--file", str(SAMPLE)], cwd=tmp_path, env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    blocker.execute("ROLLBACK")
    blocker.close()
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert summary_rows(out)["transitions"] == "2,000"


@pytest.mark.parametrize("module, error, kind", [
    ("sqlite3", lambda m: m.OperationalError("database is locked"), vi.TRANSIENT),
    ("sqlite3", lambda m: m.OperationalError("disk I/O error"), vi.FATAL),
    ("sqlite3", lambda m: m.IntegrityError("CHECK constraint failed"), vi.REFUSED),
    ("psycopg2", lambda m: m.OperationalError("server closed the connection"), vi.TRANSIENT),
    ("psycopg2", lambda m: m.InterfaceError("connection already closed"), vi.TRANSIENT),
    ("psycopg2", lambda m: m.DataError("value too long"), vi.REFUSED),
    ("psycopg2", lambda m: m.ProgrammingError("relation does not exist"), vi.FATAL),
    ("MySQLdb", lambda m: m.OperationalError(2013, "Lost connection"), vi.TRANSIENT),
    ("MySQLdb", lambda m: m.OperationalError(1213, "Deadlock found"), vi.TRANSIENT),
    ("MySQLdb", lambda m: m.OperationalError(4025, "CONSTRAINT failed"), vi.REFUSED),
    ("MySQLdb", lambda m: m.DataError(1406, "Data too long"), vi.REFUSED),
    ("MySQLdb", lambda m: m.ProgrammingError(1146, "Table doesn't exist"), vi.FATAL),
])
def test_error_classification(module, error, kind):
    def make_error():
        return error(pytest.importorskip(module))  # a driver the base install leaves out
    assert vi.error_kind(make_error()) == kind
    from django.db import utils
    wrapped = utils.OperationalError("wrapped")
    wrapped.__cause__ = make_error()
    assert vi.error_kind(wrapped) == kind  # as Django raises it


def one_line_error(result, *fragments):
    assert result.returncode == 2
    err = result.stderr.decode()
    assert err.startswith("valdimport: error: ") and err.count("\n") == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def test_a_damaged_compressed_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"not really gzip" * 10)
    one_line_error(run_cli("import", "--file", bad, url=f"sqlite:///{tmp_path}/x.sqlite3"),
                   "cannot decompress", "bad.gz")


def test_an_unwritable_reject_file_is_a_clear_error(tmp_path):
    one_line_error(run_cli("import", "--file", SAMPLE, "--reject-file", tmp_path / "no" / "such" / "r",
                           url=f"sqlite:///{tmp_path}/x.sqlite3"),
                   "cannot write the reject file", "--reject-file")


def test_a_missing_driver_is_a_clear_error(tmp_path):
    fake = tmp_path / "fake" / "MySQLdb"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named MySQLdb')\n")
    env = dict(cli_env(), PYTHONPATH=str(tmp_path / "fake"))
    result = subprocess.run([sys.executable, str(ROOT / "valdimport.py"), "--database-url",
                             "mysql://root@127.0.0.1/x", "import"], capture_output=True, env=env,
                            cwd=ROOT)
    one_line_error(result, "mysqlclient")


def test_a_batch_whose_commit_answer_was_lost_is_not_stored_again(engine, long_dump, monkeypatch):
    # The database committed the batch but the importer saw the connection break (the
    # answer to COMMIT was lost): the levels that batch stored must count as stored, or a
    # later batch naming them stores them a second time (refused: lines rejected).
    vi.import_dump(str(long_dump), using=engine, batch_size=500, workers=0)
    expected = content(engine)
    clear(engine)
    monkeypatch.setattr(vi, "RETRY_DELAY", 0)
    commit, remember, lost = vi.BatchImport._commit, vi.BatchImport._remember_levels, []

    def commit_losing_its_answer(self, batch, parsed, mark, isolate=False):
        first = batch.first_line > 1000 and not lost
        if first:  # the hook that runs on commit, as a lost answer leaves it: not run
            monkeypatch.setattr(vi.BatchImport, "_remember_levels", lambda self: None)
        tally = commit(self, batch, parsed, mark, isolate)
        if first:
            monkeypatch.setattr(vi.BatchImport, "_remember_levels", remember)
            lost.append(batch.first_line)
            from django.db import InterfaceError
            raise InterfaceError("connection already closed")
        return tally

    monkeypatch.setattr(vi.BatchImport, "_commit", commit_losing_its_answer)
    summary = vi.import_dump(str(long_dump), using=engine, batch_size=500, workers=0)
    assert lost, "no commit lost its answer"
    assert summary.tally.rejected == 0
    assert content(engine) == expected


@pytest.mark.django_db(transaction=True)
def test_a_connection_a_retry_opens_is_tuned_like_the_first(tmp_path, monkeypatch):
    """The batch retried after "database is locked" runs on a fresh connection, with the
    import's settings (Django begins a transaction before the writer could set them)."""
    seen, failed = [], []
    insert = vi.SQLiteWriter.insert_transitions

    def insert_noting_the_connection(self, cursor, *args, **kwargs):
        raw = self.connection.connection
        seen.append((id(raw), raw.execute("PRAGMA synchronous").fetchone()[0],
                     raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0]))
        if len(seen) == 2 and not failed:
            failed.append(True)
            raise sqlite3.OperationalError("database is locked")
        return insert(self, cursor, *args, **kwargs)

    monkeypatch.setattr(vi.SQLiteWriter, "insert_transitions", insert_noting_the_connection)
    summary = vi.import_dump(str(SAMPLE), using="default", batch_size=500, workers=0,
                             reject_file=str(tmp_path / "rej"))
    assert failed and "locked" in summary_rows(summary.table())["retries"]
    assert len({connection for connection, *_ in seen}) >= 2  # the retry's own connection
    assert {tuple(settings) for _, *settings in seen} == {(1, vi.SQLiteWriter.WAL_PAGES)}  # NORMAL
