"""The Python API under the CLI: typed errors that name no command-line flag, confirmation
and progress chosen by the caller (by default: nothing asked, nothing shown)."""
import ast
import builtins
import io
import re

import pytest

import valdimport as vi
from node_atom.models import Transition
from tests.conftest import ROOT, SAMPLE


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, as an interactive session's is."""

    def isatty(self):
        return True


@pytest.fixture
def no_terminal_prompt(monkeypatch):
    """Fail the test if anything opens the terminal to ask."""
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        assert str(file) != "/dev/tty", "the library asked on the terminal"
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(vi, "ask_on_terminal", lambda question: pytest.fail("asked: " + question))


def test_clear_without_a_confirmation_raises_a_typed_error_and_asks_nothing(
        engine, no_terminal_prompt, capsys):
    vi.import_dump(str(SAMPLE), using=engine)
    capsys.readouterr()
    for run in (lambda: vi.run_import("import", str(SAMPLE), using=engine,
                                      options=vi.ImportOptions(clear=True)),
                lambda: vi.import_dump(str(SAMPLE), using=engine, clear=True),
                lambda: vi.import_dump(str(SAMPLE), using=engine, clear=True, fast=True)):
        with pytest.raises(vi.ConfirmationRequired) as error:
            run()
        assert isinstance(error.value, vi.UsageError) and error.value.exit_code == 2
        assert "confirm=True" in str(error.value) and "--" not in str(error.value)
    assert capsys.readouterr() == ("", "")
    assert Transition.objects.using(engine).count() == 2000  # nothing was emptied


def test_the_caller_chooses_how_to_confirm(engine, no_terminal_prompt):
    first = vi.import_dump(str(SAMPLE), using=engine)
    asked = []

    def refuse(question):
        asked.append(question)
        return False
    with pytest.raises(vi.NotConfirmed):
        vi.import_dump(str(SAMPLE), using=engine, clear=True, confirm=refuse)
    assert asked == ["Empty transitions, states and import? [y/N] "]
    with pytest.raises(vi.ConfirmationRequired):
        vi.rollback_run(engine, first.run_id)
    with pytest.raises(vi.ConfirmationRequired):  # a function that could not ask
        vi.rollback_run(engine, first.run_id, confirm=lambda question: None)
    assert Transition.objects.using(engine).count() == 2000
    again = vi.import_dump(str(SAMPLE), using=engine, clear=True, confirm=lambda question: True)
    assert again.tally.transitions == 2000 and Transition.objects.using(engine).count() == 2000
    vi.rollback_run(engine, again.run_id, confirm=True)
    assert Transition.objects.using(engine).count() == 0


@pytest.mark.django_db(transaction=True)
def test_no_progress_output_unless_asked(sqlite_only, monkeypatch):
    terminal, out = Terminal(), io.StringIO()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr("sys.stdout", out)
    vi.import_dump(str(SAMPLE), using=sqlite_only)
    assert vi.verify(sqlite_only, dump=str(SAMPLE)).rows
    assert terminal.getvalue() == out.getvalue() == ""
    vi.import_dump(str(SAMPLE), using=sqlite_only, restart=True, append=True, progress=True)
    assert "sample.dat.gz: 100%" in terminal.getvalue()


def test_errors_are_typed_and_spell_options_as_python_does(engine):
    vi.import_dump(str(SAMPLE), using=engine)
    with pytest.raises(vi.UsageError, match="^fast=True needs clear=True: "):
        vi.import_dump(str(SAMPLE), using=engine, fast=True)
    with pytest.raises(vi.NotADump, match="^the input is empty"):
        vi.import_dump("/dev/null", using=engine)
    with pytest.raises(vi.UsageError, match="give it with a path as the source$"):
        vi.import_hfs("-", using=engine)


def message_calls(tree, below: int):
    """The calls before line ``below`` that make a message: an exception, a log line, a
    confirmation, a check or report of an operation."""
    makers = {name for name, value in vars(vi).items()
              if isinstance(value, type) and issubclass(value, Exception)}
    makers |= {"Check", "Report", "confirmed"}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or node.lineno >= below:
            continue
        func = node.func
        if (isinstance(func, ast.Name) and func.id in makers) or (
                isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and func.value.id == "log"):
            yield node.lineno, ast.unparse(node)
        elif isinstance(func, ast.Name) and func.id == "failing":  # verify's checks
            yield node.lineno, ast.unparse(node)


def test_library_messages_name_no_command_line_flag():
    """Everything above the front ends is the library: its messages name options through
    option(), which each front end spells its own way."""
    source = (ROOT / "valdimport.py").read_text()
    front_ends = source[:source.index("\n# The two front ends")].count("\n") + 1
    tree = ast.parse(source)
    messages = list(message_calls(tree, front_ends))
    queries = next(node for node in ast.walk(tree) if isinstance(node, ast.Assign)
                   and getattr(node.targets[0], "id", None) == "queries")
    messages.append((queries.lineno, ast.unparse(queries)))
    assert len(messages) > 50
    assert [(line, text) for line, text in messages if re.search(r"--[a-z]", text)] == []
    names = {name for _, text in messages for name in re.findall(r"option\('(\w+)'\)", text)}
    assert {"clear", "yes", "append", "wait", "database_url", "file", "fix"} <= names
    for name in names:  # each front end can spell each of them
        assert vi.cli_option(name).startswith("--") and vi.django_option(name)
        assert "--" not in vi.python_option(name)


@pytest.mark.django_db(transaction=True)
def test_a_front_end_leaves_the_library_logger_as_it_found_it(sqlite_only, capsys):
    """The Django commands show the notices while they run, and then stop: a command run
    among others in one process must not leave a handler on a stream that is gone."""
    from django.core.management import call_command
    before = (list(vi.log.handlers), vi.log.level)
    call_command("runs", database=sqlite_only)
    with pytest.raises(Exception):
        call_command("rollback", "--run", "7", database=sqlite_only)
    assert (list(vi.log.handlers), vi.log.level) == before
