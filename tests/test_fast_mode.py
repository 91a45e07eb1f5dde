"""--fast: the same database as the plain path, indexes back, and it refuses what it must."""
import pytest
from django.db import connections

import valdimport as vi
from node_atom.models import State, Transition
from tests.conftest import SAMPLE, clear, content, database_url, run_cli


def live_indexes(alias, table):
    with connections[alias].cursor() as cursor:
        return set(connections[alias].introspection.get_constraints(cursor, table))


def declared_indexes(model):
    return {index.name for index in model._meta.indexes}


def test_fast_import_equals_the_plain_path_with_every_index_back(engine):
    vi.import_dump(str(SAMPLE), using=engine)
    plain = content(engine)
    indexes = {m: live_indexes(engine, m._meta.db_table) for m in (State, Transition)}
    summary = vi.import_dump(str(SAMPLE), using=engine, fast=True, clear=True, confirm=True)
    assert content(engine) == plain
    for model in (State, Transition):
        assert declared_indexes(model) <= live_indexes(engine, model._meta.db_table)
        assert live_indexes(engine, model._meta.db_table) == indexes[model]
    phases = [name for name, _, _ in summary.phases]
    assert phases[:6] == ["clear", "drop indexes", "level index", "parse", "levels", "transitions"]
    assert {"crash safety back", "indexes", "verify", "ground states"} <= set(phases)
    assert dict((name, rows) for name, rows, _ in summary.phases)["indexes"] == 4


def test_fast_two_passes_equal_the_plain_two_passes(engine):
    vi.import_states(str(SAMPLE), using=engine)
    vi.import_transitions(str(SAMPLE), using=engine)
    plain = content(engine)
    clear(engine)
    vi.import_states(str(SAMPLE), using=engine, fast=True, clear=True, confirm=True)
    vi.import_transitions(str(SAMPLE), using=engine, fast=True, clear=True, confirm=True)
    assert content(engine) == plain
    assert declared_indexes(Transition) <= live_indexes(engine, "transitions")


def test_fast_clear_replaces_what_was_there(engine):
    vi.import_dump(str(SAMPLE), using=engine)
    vi.import_dump(str(SAMPLE), using=engine, fast=True, clear=True, confirm=True)
    assert Transition.objects.using(engine).count() == 2000  # not 4000: cleared first
    from node_common.models import ImportRun
    assert ImportRun.objects.using(engine).count() == 1


def test_fast_without_clear_refuses(engine, tmp_path):
    result = run_cli("import", "--file", SAMPLE, "--fast", "--yes", url=database_url(engine))
    assert result.returncode == 2
    assert "--fast needs --clear" in result.stderr.decode()
    assert not Transition.objects.using(engine).exists()


def test_fast_without_yes_and_without_a_terminal_refuses(engine):
    vi.import_dump(str(SAMPLE), using=engine)
    result = run_cli("import", "--file", SAMPLE, "--fast", "--clear", url=database_url(engine))
    assert result.returncode == 2
    err = result.stderr.decode()
    assert "a crash or a killed process can lose everything loaded" in err
    assert "add --yes to run it unattended" in err
    assert Transition.objects.using(engine).count() == 2000  # nothing was changed


def test_clear_alone_asks_too(engine):
    result = run_cli("import", "--file", SAMPLE, "--clear", url=database_url(engine))
    assert result.returncode == 2 and "--clear empties transitions, states" in result.stderr.decode()
    assert run_cli("import", "--file", SAMPLE, "--clear", "--yes", url=database_url(engine)).returncode == 0
    assert Transition.objects.using(engine).count() == 2000


def test_an_unfinished_fast_run_is_not_resumed(engine):
    """Its rows may be gone after a crash (unlogged tables, no journal): start again."""
    summary = vi.import_dump(str(SAMPLE), using=engine, fast=True, clear=True, confirm=True)
    from node_common.models import ImportRun
    ImportRun.objects.using(engine).filter(pk=summary.run_id).update(status="running", pid=None)
    with pytest.raises(vi.UsageError, match="append=True adds its transitions to those, clear=True replaces"):
        vi.import_dump(str(SAMPLE), using=engine)  # its rows may be there, too
    again = vi.import_dump(str(SAMPLE), using=engine, append=True)
    assert again.resumed_from_line is None and again.continues_run is None
    assert again.tally.transitions == 2000
