"""The Django management commands: discovered by plain Django, thin wrappers of valdimport."""
import sqlite3
import subprocess
import sys

from tests.conftest import ROOT, SAMPLE, cli_env, summary_rows


def manage(*args, database_url, cwd=None):
    env = cli_env()
    env["DATABASE_URL"] = database_url
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_manage_help_lists_the_commands(tmp_path):
    result = manage("help", database_url=f"sqlite:///{tmp_path}/h.sqlite3")
    assert result.returncode == 0
    section = result.stdout.split("[commands]")[1]
    for command in ("import_states", "import_transitions", "import_vald", "import_species",
                    "import_linelists", "import_references", "import_hfs", "verify", "check_indexes", "runs",
                    "rollback", "housekeeping"):
        assert command in section


def test_import_states_then_transitions_with_manage_py(tmp_path):
    url = f"sqlite:///{tmp_path}/m.sqlite3"
    states = manage("import_states", "--file", SAMPLE, database_url=url)
    assert states.returncode == 0, states.stderr
    assert "import-states: run 1 completed" in states.stdout
    transitions = manage("import_transitions", "--file", SAMPLE, database_url=url)
    assert transitions.returncode == 0, transitions.stderr
    assert summary_rows(transitions.stdout)["transitions"] == "2,000"
    again = manage("import_vald", "--file", SAMPLE, database_url=url)
    assert "found nothing new" in again.stdout
    with sqlite3.connect(tmp_path / "m.sqlite3") as db:
        assert db.execute("select count(*) from transitions").fetchone() == (2000,)


def test_command_errors_are_one_line_with_exit_code_2(tmp_path):
    result = manage("import_vald", "--file", tmp_path / "missing.dat",
                    database_url=f"sqlite:///{tmp_path}/e.sqlite3")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("CommandError: cannot read")
    assert "Traceback" not in result.stderr


def test_command_help_has_the_same_options(tmp_path):
    result = manage("import_transitions", "--help", database_url=f"sqlite:///{tmp_path}/x.sqlite3")
    assert result.returncode == 0
    for option in ("--file", "--batch-size", "--skip-header", "--skip-calc",
                   "--restart", "--reject-file", "--database"):
        assert option in result.stdout


def test_a_bad_database_url_is_one_line(tmp_path):
    result = manage("runs", database_url="foo://", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == ("manage.py: error: unsupported database URL scheme 'foo': use "
                             "sqlite:///PATH, postgres://USER@HOST:PORT/NAME or mysql://USER@HOST:PORT/NAME\n")


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    url = f"sqlite:///{tmp_path}/p.sqlite3"
    assert manage("import_vald", "--file", SAMPLE, database_url=url).returncode == 0
    env = dict(cli_env(), DATABASE_URL=url)
    process = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "runs"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # as `| head -2` does once it has its lines
    err = process.stderr.read()
    assert (process.wait(), err) == (0, b"")


def test_verbosity_means_what_it_means_in_the_cli(tmp_path):
    """-v 2 (the CLI's -v) adds the traceback to an error; each command offers the options
    of its CLI twin, no more."""
    url = f"sqlite:///{tmp_path}/v.sqlite3"
    missing = tmp_path / "missing.dat"
    plain = manage("import_vald", "--file", missing, database_url=url)
    traced = manage("import_vald", "--file", missing, "-v", "2", database_url=url)
    assert plain.returncode == traced.returncode == 2
    assert "Traceback" not in plain.stderr and "Traceback" in traced.stderr
    assert traced.stderr.strip().splitlines()[-1] == plain.stderr.strip()
    states = manage("import_states", "--help", database_url=url).stdout
    assert "--skip-housekeeping" in states and "--skip-calc" not in states and "--append" not in states
