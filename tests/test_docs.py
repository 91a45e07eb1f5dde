"""The documentation stays true: CI runs the README's test command, its first command
imports the sample, every command shown parses, every option of every command is
documented in the section for that command, every link resolves, nothing points outside
the repository."""
import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import valdimport as vi
from tests.conftest import ROOT, SAMPLE, cli_env, summary_rows

README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
OPTIONS = (ROOT / "docs" / "options.md").read_text()
GLOBAL = {"--database-url", "-v", "--verbose", "-q", "--quiet"}


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


def test_the_first_command_imports_the_sample(tmp_path):
    """Its last step, as written, with the console script the install made."""
    install, _, run = quick_start_commands()[0].rpartition(" && ")
    assert install == "python3 -m venv .venv && .venv/bin/pip install -e ."
    program, *args = shlex.split(run)
    assert program == ".venv/bin/valdimport"
    script = Path(sys.executable).parent / "valdimport"
    (tmp_path / "tests" / "data").mkdir(parents=True)
    (tmp_path / "tests" / "data" / SAMPLE.name).write_bytes(SAMPLE.read_bytes())
    result = subprocess.run([str(script), *args], capture_output=True, text=True, cwd=tmp_path,
                            env=cli_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert summary_rows(result.stdout)["transitions"] == "2,000"
    assert (tmp_path / "vald.sqlite3").exists()


def shown_commands(text):
    """The valdimport and manage.py command lines in the code blocks of a page."""
    for block in re.findall(r"```\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.removeprefix("$ ").split("  #")[0].strip()
            for part in line.split(" | "):
                part = re.sub(r"^([A-Z_]+=\S+ )+", "", part)  # DATABASE_URL=... valdimport
                if re.match(r"(\.venv/bin/)?valdimport |python manage\.py ", part):
                    words = shlex.split(part)
                    program = "manage.py" if words[0] == "python" else "valdimport"
                    yield program, words[2 if program == "manage.py" else 1:]


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_shown_parses(page):
    parser = vi.build_parser()
    django = {f"import_{c.removeprefix('import-').replace('-', '_')}": c for c in vi.ALL_COMMANDS
              if c.startswith("import-")} | {"import_vald": "import"} | {
        c.replace("-", "_"): c for c in vi.OPERATIONS}
    shown = list(shown_commands(page.read_text()))
    for program, args in shown:
        if program == "manage.py":
            assert args[0] in django, args
            args = [django[args[0]], *(a for a in args[1:] if not a.startswith("--database"))]
        try:
            command = parser.parse_args(args).command
        except SystemExit:
            pytest.fail(f"{page.name}: {program} {' '.join(args)} does not parse")
        spelt = options_of(command) | GLOBAL  # in full: argparse would take --fil for --file
        assert {a.partition("=")[0] for a in args if a.startswith("-")} <= spelt, (page.name, args)
    if page == ROOT / "README.md":
        assert len(shown) >= 8


def sections(text):
    """{heading: body} of the ## sections of a page."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def rows(body):
    """{option: the rest of its row} of the option tables in a section."""
    found = {}
    for line in body.splitlines():
        cells = line.strip("|").split("|", 1)
        for option in re.findall(r"`(-[-\w]+)[ `]", cells[0] + " ") if line.startswith("| `") else ():
            found[option] = cells[1]
    return found


def options_of(command):
    parser = argparse.ArgumentParser()
    vi.add_command_arguments(parser, command)
    return {o for a in parser._actions if a.dest != "help" for o in a.option_strings}


def test_every_option_of_every_command_is_documented_in_its_section():
    """A row in the section of the command (a heading that names it); a row of an option
    that only some of the section's commands take says which."""
    documented = {}
    for heading, body in sections(OPTIONS).items():
        commands = [c for c in heading.split(", ") if c in vi.ALL_COMMANDS]
        if not commands:  # the global and the Django options: see below
            continue
        for command in commands:
            documented.setdefault(command, {}).update(rows(body))
        for option, text in rows(body).items():
            takers = [c for c in commands if option in options_of(c)]
            assert takers, (heading, option)  # documents nothing it offers
            if len(takers) < len(commands):
                assert "only" in text and all(f"`{c}`" in text for c in takers), (heading, option)
    for command in vi.ALL_COMMANDS:
        assert command in documented, command
        missing = options_of(command) - set(documented[command])
        assert not missing, (command, missing)


def test_the_global_and_django_options_are_documented():
    parser = vi.build_parser()
    main = {o for a in parser._actions if a.dest not in ("help", "command") for o in a.option_strings}
    assert main == GLOBAL
    assert set(rows(sections(OPTIONS)["Global options"])) == GLOBAL
    django = sections(OPTIONS)["Django management commands"]
    assert set(rows(django)) == {"--database"}
    from django.core.management import get_commands, load_command_class
    from django.core.management.base import BaseCommand
    standard = {o for a in BaseCommand().create_parser("manage.py", "x")._actions for o in a.option_strings}
    for name, app in get_commands().items():
        if app != "commands":
            continue
        command = load_command_class(app, name)
        offered = {o for a in command.create_parser("manage.py", name)._actions for o in a.option_strings}
        assert offered - standard == options_of(command.command) | {"--database"}, name
        assert f"`{name}`" in django, name


def slug(heading):
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"https?://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists() and ROOT in linked.parents, f"{page.name}: {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
            assert anchor in {slug(h) for h in headings}, f"{page.name}: {target}"


def test_nothing_points_outside_the_repository():
    texts = {p: p.read_text() for p in DOCS + [ROOT / "valdimport.py", ROOT / "tools" / "generate_dump.py"]}
    for path, text in texts.items():
        assert "../shared" not in text and not re.search(r"(?<![\w/])shared/", text), path
    assert {p.name for p in (ROOT / "docs").glob("*.md")} >= {
        "options.md", "format.md", "stored.md", "operations.md", "api.md"}


def test_the_readme_is_a_guide_of_a_few_screens():
    assert len(README.splitlines()) <= 250
    for heading in ("Quick start", "A new node: the import sequence", "Commands at a glance",
                    "Choosing the database", "When things go wrong", "Where to read more"):
        assert heading in sections(README), heading
    assert "not met" not in README and "valdimport import" in README


def test_every_default_the_docs_give_is_the_code_s():
    """"(default 5 000)" beside an option, and name=value in a signature of the Python
    API, say what ImportOptions and the functions say: a changed default shows here."""
    import ast
    import dataclasses
    import inspect
    defaults = {f.metadata["flag"].name: f.default for f in dataclasses.fields(vi.ImportOptions)
                if "flag" in f.metadata}
    seen = 0
    for page in (OPTIONS, (ROOT / "docs" / "operations.md").read_text()):
        for option, value in re.findall(r"`(--[a-z-]+)[^`]*` *\|?[^|(`]*\(default ([0-9][0-9 ,.]*)", page):
            assert option in defaults, option
            assert float(re.sub(r"[ ,]", "", value).rstrip(".")) == defaults[option], (option, value)
            seen += 1
    api = (ROOT / "docs" / "api.md").read_text()
    for name, arguments in re.findall(r"`(\w+)\(([^`]*)\)`", api):
        if not hasattr(vi, name):  # a method: table(), as_dict()
            continue
        parameters = inspect.signature(getattr(vi, name)).parameters
        for parameter, literal in re.findall(r"(\w+)=([^,)]+)", arguments):
            default = (parameters[parameter].default if parameter in parameters  # else an **option
                       else getattr(vi.ImportOptions, parameter))
            assert default == ast.literal_eval(literal), (name, parameter)
            seen += 1
    assert seen >= 15
