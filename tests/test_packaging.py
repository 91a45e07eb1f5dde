"""What a newcomer installs: the base install is what SQLite needs, each engine's driver
sits in its extra, and an engine whose driver is missing says what to install."""
import re
import subprocess
import sys
import tomllib

import pytest

import valdimport as vi
from tests.conftest import ROOT, cli_env
from tests.test_docs import quick_start_commands

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DRIVERS = {"postgres": "psycopg2-binary", "mysql": "mysqlclient"}
COMPILED = {"psycopg2", "psycopg2-binary", "psycopg", "mysqlclient"}  # database drivers


def names(requirements):
    return {re.match(r"[A-Za-z0-9_.-]+", r)[0].lower() for r in requirements}


def test_the_base_install_has_no_database_driver():
    base = names(PROJECT["dependencies"])
    assert {"django", "dj-database-url", "tqdm", "numpy", "bibtexparser"} <= base
    assert not base & COMPILED, base & COMPILED


def test_each_engine_driver_sits_in_its_extra():
    extras = PROJECT["optional-dependencies"]
    for extra, driver in DRIVERS.items():
        assert names(extras[extra]) == {driver}, extra
    assert {"pytest", "pytest-django"} <= names(extras["test"])
    assert not names(extras["test"]) & COMPILED  # the test script adds the drivers it can


def test_the_first_readme_command_names_no_extra_it_does_not_need():
    install_and_import = quick_start_commands()[0]
    assert "pip install -e ." in install_and_import and "[" not in install_and_import
    assert "apt-get" not in install_and_import and "sudo" not in install_and_import
    assert "import --file tests/data/sample.dat.gz" in install_and_import


def test_the_drivers_the_engines_use_are_those_of_the_extras():
    assert set(vi.DRIVERS) == vi.SUPPORTED_ENGINES - {"django.db.backends.sqlite3"}
    assert {extra: package for _, extra, package in vi.DRIVERS.values()} == DRIVERS


@pytest.mark.parametrize("scheme, modules, extra", [
    ("postgres", ["psycopg2", "psycopg"], "postgres"),
    ("mysql", ["MySQLdb"], "mysql"),
])
def test_an_engine_whose_driver_is_missing_says_what_to_install(scheme, modules, extra, tmp_path):
    """The driver hidden from the interpreter, as on a base install."""
    hide = "; ".join(f"sys.modules[{m!r}] = None" for m in modules)
    code = f"import sys; {hide}; import valdimport; sys.exit(valdimport.main(sys.argv[1:]))"
    url = f"{scheme}://user@127.0.0.1:1/vald"
    for args in (["--database-url", url, "runs"], ["import", "--file", "x.dat", "--database-url", url]):
        result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                                cwd=tmp_path, env=cli_env(), timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(
            f"valdimport: error: {extra} needs the database driver {DRIVERS[extra]}, which is not installed")
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert f"pip install 'valdimport[{extra}]'" in result.stderr
        assert f"(import of {modules[0]} halted" in result.stderr  # the one the extra installs
        assert ("apt-get install pkg-config libmariadb-dev" in result.stderr) == (extra == "mysql")
    assert list(tmp_path.iterdir()) == []
