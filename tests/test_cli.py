"""The standalone CLI through real pipes and processes: exit codes, messages, summary."""
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
from django.db import connections

from node_atom.models import State, Transition
from node_common.models import ImportRun
from tests.conftest import (ROOT, SAMPLE, clear, cli_env, content, database_url, generate_dump,
                            run_cli, summary_rows, unprivileged, write_dump)
from tests.test_resume import committed


def driver(module):
    """Skip where the engine's driver is not installed (test_packaging covers that)."""
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} is not installed")


def pipe(shell_source, *args, url):
    """Run ``SOURCE | python valdimport.py --database-url URL ARGS``; the status is the importer's."""
    command = (f"{shell_source} | {shlex.quote(sys.executable)} valdimport.py "
               f"--database-url {shlex.quote(url)} " + " ".join(map(shlex.quote, args)))
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT,
                          env=cli_env(), timeout=300)


def test_gunzip_into_both_passes_through_a_pipe(engine):
    url = database_url(engine)
    states = pipe(f"gunzip -c {SAMPLE}", "import-states", url=url)
    assert states.returncode == 0, states.stderr
    assert summary_rows(states.stdout)["imported"] == "2,000 records"
    stored = State.objects.using(engine).count()
    assert stored > 0 and Transition.objects.using(engine).count() == 0
    transitions = pipe(f"gunzip -c {SAMPLE}", "import-transitions", url=url)
    assert transitions.returncode == 0, transitions.stderr
    assert summary_rows(transitions.stdout)["transitions"] == "2,000"
    assert Transition.objects.using(engine).count() == 2000
    assert State.objects.using(engine).count() == stored


def test_compressed_bytes_on_stdin_work(engine):
    result = pipe(f"cat {SAMPLE}", "import", url=database_url(engine))
    assert result.returncode == 0, result.stderr
    assert Transition.objects.using(engine).count() == 2000


def test_head_of_the_sample_gives_500_transitions(engine):
    result = pipe(f"gunzip -c {SAMPLE} | head -1002", "import", url=database_url(engine))
    assert result.returncode == 0, result.stderr
    assert Transition.objects.using(engine).count() == 500
    assert summary_rows(result.stdout)["lines read"] == "1,002"


def test_the_summary_reports_every_count(sqlite_only, tmp_path):
    url = f"sqlite:///{tmp_path}/summary.sqlite3"
    result = run_cli("import", "--file", SAMPLE, url=url)
    assert result.returncode == 0
    out = result.stdout.decode()
    assert out.startswith("import: run 1 completed\n")
    rows = summary_rows(out)
    assert rows["input"] == str(SAMPLE)
    assert rows["lines read"] == "4,002"
    assert rows["imported"] == "2,000 records"
    assert rows["skipped"] == "2,002  (header 2, reference 2,000)"
    assert rows["rejected"] == "0"
    assert rows["transitions"] == "2,000"
    assert rows["elapsed"].endswith("records/s)")
    assert rows["placeholder species"].startswith("30 (")  # the bare dump has no species list


def test_stdin_that_differs_from_an_earlier_run_is_refused(sqlite_only, tmp_path):
    url = f"sqlite:///{tmp_path}/differs.sqlite3"
    lines = subprocess.run(["gunzip", "-c", str(SAMPLE)], capture_output=True).stdout.splitlines(True)
    first = write_dump(tmp_path / "a.dat", lines)
    assert run_cli("import", "--file", first, url=url).returncode == 0
    changed = b"".join(lines[:-2]) + lines[-2].replace(b" 1", b" 2", 1) + lines[-1]
    result = run_cli("import", url=url, stdin=changed)
    assert result.returncode == 2
    message = result.stderr.decode()
    assert message.count("\n") == 1 and "standard input differs from the input of run 1" in message
    assert "--restart" in message and "Traceback" not in message
    assert run_cli("import", "--restart", url=url, stdin=changed).returncode == 0


@pytest.mark.parametrize("args, message", [
    (["import", "--file", "/nonexistent/vald.dat"], "cannot read /nonexistent/vald.dat: No such file"),
    (["--database-url", "oracle://u@h/db", "import"], "unsupported database URL scheme 'oracle'"),
    pytest.param(["--database-url", "postgres://postgres@127.0.0.1:1/x", "import"],
                 "cannot connect to postgresql", marks=driver("psycopg2")),
    pytest.param(["--database-url", "mysql://root@127.0.0.1:1/x", "import"], "cannot connect to mysql",
                 marks=driver("MySQLdb")),
])
def test_configuration_errors_exit_2_with_one_line(args, message, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    err = result.stderr.decode()
    assert err.startswith("valdimport: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_verbose_shows_the_traceback(tmp_path):
    result = run_cli("-v", "import", "--file", tmp_path / "missing.dat", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" in result.stderr.decode()


@pytest.mark.parametrize("args", [["frobnicate"], ["import", "--batch-size", "0"], []])
def test_bad_usage_exits_2(args):
    assert run_cli(*args).returncode == 2


def help_options(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode().split("\noptions:")[1]
    return set(re.findall(r"(?<![\w-])(--[a-z-]+)", text)) - {"--help"}


@pytest.mark.parametrize("command", ["import-states", "import-transitions", "import"])
def test_every_import_command_has_help(command):
    for option in ("--file", "--batch-size", "--skip-header", "--restart", "--reject-file",
                   "--database-url", "--verbose", "--quiet"):
        assert option in help_options(command)


def test_each_command_offers_only_the_options_that_do_something_for_it():
    """Einstein A and another input's transitions are pass 2's business; the companion files
    are read whole, in one transaction; the operations read no dump but verify."""
    states, transitions = help_options("import-states"), help_options("import-transitions")
    assert transitions - states == {"--skip-calc", "--append", "--verify"}
    assert help_options("import") == transitions
    for companion in ("import-species", "import-linelists", "import-references"):
        assert help_options(companion) == {"--file", "--reject-file", "--wait", "--summary-json",
                                           "--database-url", "--verbose", "--quiet"}
    assert help_options("import-hfs") == help_options("import-species") | {"--energy-tolerance"}
    assert help_options("runs") == {"--limit", "--json", "--database-url", "--verbose", "--quiet"}
    assert help_options("verify") - help_options("runs") == {"--file", "--skip-header", "--workers"}
    assert "--yes" in help_options("rollback") and "--yes" not in help_options("housekeeping")
    for writer in ("rollback", "housekeeping", "check-indexes"):  # they take the lock: they may wait
        assert "--wait" in help_options(writer), writer
    assert "--wait" not in help_options("runs") | help_options("verify")


def test_global_options_come_before_or_after_the_command(tmp_path):
    url = f"sqlite:///{tmp_path}/after.sqlite3"
    after = run_cli("import", "--file", SAMPLE, "--database-url", url, "-q", cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    assert summary_rows(after.stdout.decode())["database"] == f"sqlite {tmp_path}/after.sqlite3"
    assert not (tmp_path / "vald.sqlite3").exists()
    listed = run_cli("runs", "--database-url", url, cwd=tmp_path)
    assert listed.returncode == 0 and "import" in listed.stdout.decode()
    before = run_cli("--database-url", url, "runs", "--json", cwd=tmp_path)
    assert before.returncode == 0 and '"command": "import"' in before.stdout.decode()
    missing = tmp_path / "missing.dat"
    for args in (["-v", "import", "--file", missing], ["import", "--file", missing, "-v"],
                 ["import", "-v", "--file", missing]):
        traced = run_cli(*args, url=url, cwd=tmp_path)
        assert traced.returncode == 2 and "Traceback" in traced.stderr.decode(), args
    plain = run_cli("import", "--file", missing, url=url, cwd=tmp_path)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr.decode()


@pytest.mark.parametrize("command", ["import", "import-species"])
def test_no_input_on_a_terminal_says_how_to_give_it(command, tmp_path):
    """Nothing piped in and no --file: say so at once instead of waiting for the terminal."""
    import pty
    parent, child = pty.openpty()
    try:
        result = subprocess.run([sys.executable, str(ROOT / "valdimport.py"), "--database-url",
                                 f"sqlite:///{tmp_path}/t.sqlite3", command], stdin=child,
                                capture_output=True, text=True, cwd=tmp_path, env=cli_env(), timeout=60)
    finally:
        os.close(child)
        os.close(parent)
    assert result.returncode == 2, result.stderr
    assert result.stderr == ("valdimport: error: there is no input: standard input is a terminal; "
                             "give the input with --file, or pipe it in\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["import", "import-transitions", "import-species", "import-hfs"])
def test_a_mistyped_input_path_leaves_no_database_behind(command, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "valdimport.py"), command, "--file", "nosuch.dat",
                             "--database-url", "sqlite:///vald.sqlite3"], capture_output=True, text=True,
                            cwd=tmp_path, env=cli_env(), timeout=60)
    assert (result.returncode, result.stderr) == (
        2, "valdimport: error: cannot read nosuch.dat: No such file or directory\n")
    assert list(tmp_path.iterdir()) == []


def test_help_works_before_anything_is_installed():
    # -S: no site-packages, so no Django: what a newcomer's bare python3 has
    bare = [sys.executable, "-S", str(ROOT / "valdimport.py")]
    helped = subprocess.run(bare + ["--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert "import-states" in helped.stdout and "verify" in helped.stdout
    used = subprocess.run(bare + ["import", "--file", str(SAMPLE)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert used.returncode == 2
    assert used.stderr.startswith("valdimport: error: No module named 'django'")
    assert "pip install -e ." in used.stderr and "Traceback" not in used.stderr


@pytest.mark.parametrize("url", ["sqlite://vald.sqlite3", "sqlite:vald.sqlite3", "sqlite://", "sqlite:///"])
def test_a_malformed_sqlite_url_is_refused_before_anything_is_written(url, tmp_path):
    """sqlite://vald.sqlite3 would import into memory, sqlite:vald.sqlite3 into ald.sqlite3."""
    result = run_cli("--database-url", url, "import", "--file", SAMPLE, cwd=tmp_path)
    err = result.stderr.decode()
    assert result.returncode == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"valdimport: error: bad SQLite URL {url!r}: use sqlite:///RELATIVE/PATH "
                          "or sqlite:////ABSOLUTE/PATH")
    assert list(tmp_path.iterdir()) == []


def test_relative_and_absolute_sqlite_urls(tmp_path):
    (tmp_path / "sub").mkdir()
    relative = run_cli("--database-url", "sqlite:///sub/rel.sqlite3", "import", "--file", SAMPLE, cwd=tmp_path)
    assert relative.returncode == 0, relative.stderr
    assert summary_rows(relative.stdout.decode())["database"] == "sqlite sub/rel.sqlite3"
    absolute = run_cli("--database-url", f"sqlite:///{tmp_path}/abs.sqlite3", "import", "--file", SAMPLE)
    assert absolute.returncode == 0, absolute.stderr
    assert (tmp_path / "sub" / "rel.sqlite3").exists() and (tmp_path / "abs.sqlite3").exists()


def test_ctrl_c_stops_with_one_line_and_a_rerun_resumes_exactly(engine, tmp_path):
    """SIGINT to the whole process group, as a terminal sends it: the parser worker too."""
    url, dump = database_url(engine), generate_dump(tmp_path / "d.dat", records=6000, seed=7)
    args = [sys.executable, str(ROOT / "valdimport.py"), "--database-url", url, "import",
            "--file", str(dump), "--batch-size", "20", "--workers", "1"]
    assert subprocess.run(args, cwd=tmp_path, env=cli_env(), capture_output=True).returncode == 0
    expected = content(engine)
    clear(engine)
    process = subprocess.Popen(args, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    while committed(engine) < 2000 and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, "the import ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert (process.returncode, err) == (130, "valdimport: interrupted; rerun the same command to resume\n")
    assert ImportRun.objects.using(engine).get().status == "stopped"
    rerun = subprocess.run(args, cwd=tmp_path, env=cli_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed" in summary_rows(rerun.stdout)
    assert content(engine) == expected


@pytest.mark.parametrize("args", [["runs"], ["import", "--file", SAMPLE, "--append"]])
def test_a_reader_that_stops_early_gets_no_traceback(args, tmp_path):
    """``valdimport.py runs | head -2``: the pipe closes before the report is written."""
    url = f"sqlite:///{tmp_path}/h.sqlite3"
    assert run_cli("import", "--file", SAMPLE, url=url).returncode == 0
    process = subprocess.Popen([sys.executable, str(ROOT / "valdimport.py"), "--database-url", url,
                                *map(str, args)], cwd=tmp_path, env=cli_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # as head does once it has its lines
    err = process.stderr.read()
    assert (process.wait(), err) == (0, b"")


@pytest.mark.parametrize("command", ["import", "rollback"])
def test_a_read_only_database_is_one_line(engine, empty_database, tmp_path, command):
    """SQLite: a read-only file; PostgreSQL: read-only transactions; MySQL: a user who may
    only read (its read-only mode is server-wide)."""
    vendor = connections[engine].vendor
    assert run_cli("import", "--file", SAMPLE, url=empty_database).returncode == 0
    url, name = empty_database, empty_database.rsplit("/", 1)[1]
    if vendor == "sqlite":
        (tmp_path / "empty.sqlite3").chmod(0o444)
    with connections[engine].cursor() as cursor:
        if vendor == "postgresql":
            cursor.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
        elif vendor == "mysql":
            cursor.execute(f"CREATE USER '{name}'@'%'")
            cursor.execute(f"GRANT SELECT ON {name}.* TO '{name}'@'%'")
            server = connections[engine].settings_dict
            url = f"mysql://{name}@{server['HOST']}:{server['PORT']}/{name}"
    args = ["import", "--file", SAMPLE, "--restart"] if command == "import" else ["rollback", "--run", "1", "--yes"]
    try:
        result = subprocess.run(unprivileged([sys.executable, ROOT / "valdimport.py", "--database-url",
                                              url, *args]), env=cli_env(), capture_output=True, text=True)
    finally:
        if vendor == "mysql":
            with connections[engine].cursor() as cursor:
                cursor.execute(f"DROP USER '{name}'@'%'")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"valdimport: error: cannot write to {vendor} ")
    assert result.stderr.count("\n") == 1 and "make it writable" in result.stderr
