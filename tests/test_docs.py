"""The README stays true: CI runs its test command, and it lists every option."""
import argparse
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
    assert ci_lines[-1] == test
    assert "pytest" in test and "import --file tests/data/sample.dat.gz" in install_and_import


def test_readme_documents_every_import_option():
    parser = argparse.ArgumentParser()
    vi.add_import_arguments(parser)
    options = [a.option_strings[0] for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 8
    for option in options:
        assert f"`{option}" in README, option


def test_readme_documents_every_operation_and_its_options():
    for command in vi.OPERATIONS:
        parser = argparse.ArgumentParser()
        vi.add_operation_arguments(parser, command)
        assert f"valdimport.py {command}" in README or f"`{command}" in README, command
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert f"{action.option_strings[0]}" in README, (command, action.option_strings[0])
