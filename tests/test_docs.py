"""The README stays true: CI runs its test command, and it lists every option."""
import argparse
import os
import re

import valdimport as vi
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def quick_start_commands():
    section = README.split("## Quick start")[1].split("\n## ")[0]
    return re.findall(r"```\n(.+?)\n```", section)


def test_ci_runs_exactly_the_readme_test_command():
    install_and_import, test = quick_start_commands()
    ci_lines = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci_lines[-1] == test == "./scripts/test"
    assert [line for line in ci_lines if line and not line.startswith("#")][-2:] == [
        "export CI=true", test]  # nothing else runs between
    script = (ROOT / "scripts" / "test").read_text()
    assert os.access(ROOT / "scripts" / "test", os.X_OK)
    assert script.rstrip().endswith('exec .venv/bin/python -m pytest "$@"')
    assert "import --file tests/data/sample.dat.gz" in install_and_import


def table_rows(heading):
    """{first cell: the rest of the row} of the first table under a README heading."""
    section = README.split(heading + "\n")[1].split("\n#")[0]
    rows = [line.strip("|").split("|", 1) for line in section.splitlines() if line.startswith("| `")]
    return {first.strip(): rest for first, rest in rows}


def options_of(command):
    parser = argparse.ArgumentParser()
    vi.add_command_arguments(parser, command)
    return [a.option_strings[0] for a in parser._actions if a.option_strings and a.dest != "help"]


def has_row(rows, option):
    return any(re.match(rf"`{re.escape(option)}[ `]", first) for first in rows)


def test_readme_documents_every_import_option():
    """Each option has its own row in the options table (a mention elsewhere does not count)."""
    rows = table_rows("### Options (every import command)")
    options = options_of("import")
    assert len(options) >= 8
    for option in options:
        assert has_row(rows, option), option


def test_readme_documents_every_companion_command_and_its_options():
    """Each companion command has its row in the companion table, each of its options a row
    in the companion options table."""
    rows = table_rows("### Companion files")
    for command in vi.COMPANIONS:
        assert f"`{command}`" in rows and f"valdimport.py {command}" in README, command
        options = options_of(command)
        assert len(options) >= 3
        for option in options:
            assert has_row(rows, option), (command, option)


def test_readme_documents_every_operation_and_its_options():
    """Each operation has its row in the operations table, naming each of its options."""
    rows = table_rows("## Operating a node: verify, runs, rollback, indexes, housekeeping")
    assert "all take `--json`" in README
    for command in vi.OPERATIONS:
        row = rows[f"`{command}`"]
        for option in options_of(command):
            if option != "--json":
                assert re.search(rf"`{re.escape(option)}[ `]", row), (command, option)
