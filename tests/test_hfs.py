"""import-hfs: the hyperfine constants of table AB (an SQLite file) matched to the stored levels."""
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

import valdimport as vi
from node_atom.models import HyperfineMatch, State
from node_common.models import ImportRun
from tests.conftest import AB_COLUMNS, content, database_url, run_cli, summary_rows, write_ab

FE1, FE2 = 2601, 2602


def level(alias, energy: str, j: str | None, species=FE1) -> int:
    """Store a level; returns its id."""
    e = Decimal(energy)
    return State.objects.using(alias).create(
        species_id=species, energy=e, energy_scaled=int(e * 10_000),
        J=None if j is None else Decimal(j), J_scaled=-1 if j is None else int(Decimal(j) * 10)).pk


def constants(alias) -> dict:
    """Level id -> (A, dA, B, dB) of every level with a constant."""
    return {row[0]: row[1:] for row in State.objects.using(alias).values_list("id", *vi.HFS_CONSTANTS)
            if any(v is not None for v in row[1:])}


def reject_lines(path):
    return [line.split("\t")[:2] for line in path.read_text().splitlines()]


def hfs_check(alias) -> int:
    return next(c.count for c in vi.database_checks(alias) if "hyperfine" in c.name)


def test_each_row_gets_the_nearest_level_of_its_species_and_j(engine, tmp_path):
    exact = level(engine, "1000.0000", "2.5")
    far, near = level(engine, "2000.0000", "1.5"), level(engine, "2000.6000", "1.5")
    within = level(engine, "3000.0000", "0.5")
    level(engine, "4000.0000", None)  # J unknown: no row matches it
    level(engine, "1000.0000", "2.5", species=FE2)  # the same energy and J, another species
    ab = write_ab(tmp_path / "AB.db", [
        (1, FE1, 1000.0, 2.5, "a5D", 12.5, 0.25, -3.0, 0.5),   # exact
        (2, FE1, 2000.5, 1.5, "b", 7.0, None, None, None),     # two levels within 1 cm-1
        (3, FE1, 3000.9, 0.5, "c", 1.5, 0.1, None, None),      # within the tolerance
        (4, FE1, 3000.0, 1.5, "d", 9.0, None, None, None),     # the energy of `within`, wrong J
        (5, FE1, 3001.2, 0.5, "e", 9.0, None, None, None),     # 1.2 cm-1 away
        (6, FE1, 4000.0, 0.5, "f", 9.0, None, None, None),     # only a level of unknown J there
        (7, 9999, 1000.0, 2.5, "g", 9.0, None, None, None),    # a species without levels
        (8, FE1, "n/a", 2.5, "h", 9.0, None, None, None),      # not a number
    ])
    summary = vi.import_hfs(str(ab), using=engine)
    assert constants(engine) == {exact: (12.5, 0.25, -3.0, 0.5), near: (7.0, None, None, None),
                                 within: (1.5, 0.1, None, None)}
    assert far not in constants(engine)
    assert (summary.tally.lines_read, summary.tally.imported, summary.tally.rejected) == (8, 3, 5)
    rows = summary_rows(summary.table())
    assert rows["matched"] == "3 rows (1 ambiguous: the nearest of several levels within ±1 cm-1)"
    assert rows["not matched"] == "4 no level within ±1 cm-1, 1 invalid"
    assert rows["constants"] == "3 levels set or changed, 0 cleared"
    assert reject_lines(Path(summary.reject_file)) == [
        ["4", "no level of species 2601 with J = 1.5 within ±1 cm-1 of 3000.0000 cm-1"],
        ["5", "no level of species 2601 with J = 0.5 within ±1 cm-1 of 3001.2000 cm-1"],
        ["6", "no level of species 2601 with J = 0.5 within ±1 cm-1 of 4000.0000 cm-1"],
        ["7", "species 9999 has no levels in the database"],
        ["8", "E is not a number: 'n/a'"]]
    matches = {m.state_id: (m.ab_id, m.candidates) for m in HyperfineMatch.objects.using(engine)}
    assert matches == {exact: (1, 1), near: (2, 2), within: (3, 1)}
    run = ImportRun.objects.using(engine).get()
    assert (run.command, run.status, run.lines_read, run.imported, run.rejected) == (
        "import-hfs", "completed", 8, 3, 5)
    assert hfs_check(engine) == 0


def test_levels_equally_near_go_to_the_lowest_level_id(engine, tmp_path):
    first, second = level(engine, "1000.5000", "2.5"), level(engine, "999.5000", "2.5")
    vi.import_hfs(str(write_ab(tmp_path / "AB.db", [(1, FE1, 1000.0, 2.5, "a", 1.0, None, None, None)])),
                  using=engine)
    assert first < second and constants(engine) == {first: (1.0, None, None, None)}
    assert HyperfineMatch.objects.using(engine).get().candidates == 2


def test_rerunning_changes_nothing(engine, tmp_path):
    for energy in ("1000.0000", "1000.4000", "2000.0000"):
        level(engine, energy, "2.5")
    ab = write_ab(tmp_path / "AB.db", [(1, FE1, 1000.3, 2.5, "a", 1.0, 0.5, 2.0, None),
                                       (2, FE1, 2000.0, 2.5, "b", -4.25, None, 0.0, 0.0),
                                       (3, FE1, 5000.0, 2.5, "c", 1.0, None, None, None)])
    first = vi.import_hfs(str(ab), using=engine)
    assert summary_rows(first.table())["constants"] == "2 levels set or changed, 0 cleared"
    before = (content(engine), list(HyperfineMatch.objects.using(engine).order_by("pk").values()))
    again = vi.import_hfs(str(ab), using=engine)
    assert (content(engine), list(HyperfineMatch.objects.using(engine).order_by("pk").values())) == before
    assert summary_rows(again.table())["constants"] == "unchanged: the levels already had these constants"
    assert (again.tally.imported, again.tally.rejected) == (first.tally.imported, first.tally.rejected) == (2, 1)
    assert ImportRun.objects.using(engine).filter(command="import-hfs").count() == 2


def test_a_second_file_replaces_the_constants_of_every_level(engine, tmp_path):
    kept, dropped = level(engine, "1000.0000", "2.5"), level(engine, "2000.0000", "2.5")
    other = level(engine, "1000.0000", "0.5", species=FE2)
    vi.import_hfs(str(write_ab(tmp_path / "old.db", [(1, FE1, 1000.0, 2.5, "a", 1.0, None, None, None),
                                                     (2, FE1, 2000.0, 2.5, "b", 2.0, None, None, None),
                                                     (3, FE2, 1000.0, 0.5, "c", 3.0, None, None, None)])),
                  using=engine)
    assert set(constants(engine)) == {kept, dropped, other}
    new = vi.import_hfs(str(write_ab(tmp_path / "new.db", [(1, FE1, 1000.0, 2.5, "a", 1.5, 0.5, None, None),
                                                           (3, FE2, 1000.0, 0.5, "c", 3.0, None, None, None)])),
                        using=engine)
    assert constants(engine) == {kept: (1.5, 0.5, None, None), other: (3.0, None, None, None)}
    assert summary_rows(new.table())["constants"] == "1 levels set or changed, 1 cleared"
    assert set(HyperfineMatch.objects.using(engine).values_list("state_id", flat=True)) == {kept, other}
    assert hfs_check(engine) == 0


def test_two_rows_for_one_level_the_nearest_keeps_it(engine, tmp_path):
    one, two = level(engine, "1000.0000", "2.5"), level(engine, "2000.0000", "2.5")
    ab = write_ab(tmp_path / "AB.db", [(10, FE1, 1000.3, 2.5, "far", 1.0, None, None, None),
                                       (11, FE1, 999.9, 2.5, "near", 2.0, None, None, None),
                                       (21, FE1, 2000.2, 2.5, "tie", 3.0, None, None, None),
                                       (20, FE1, 1999.8, 2.5, "tie", 4.0, None, None, None)])
    summary = vi.import_hfs(str(ab), using=engine, reject_file=str(tmp_path / "r"))
    assert constants(engine) == {one: (2.0, None, None, None), two: (4.0, None, None, None)}
    assert reject_lines(tmp_path / "r") == [
        ["10", f"level {one} is matched by AB row 11, nearer in energy or first"],
        ["21", f"level {two} is matched by AB row 20, nearer in energy or first"]]
    assert summary_rows(summary.table())["not matched"] == "2 level taken by a nearer row"


def test_energy_tolerance_option_and_exit_codes(engine, tmp_path):
    state = level(engine, "1000.0000", "2.5")
    ab = write_ab(tmp_path / "AB.db", [(1, FE1, 1000.1, 2.5, "a", 1.0, None, None, None)])
    url = database_url(engine)
    strict = run_cli("import-hfs", "--file", ab, "--energy-tolerance", "0.05", url=url)
    assert strict.returncode == 3, strict.stderr
    assert summary_rows(strict.stdout.decode())["rows read"] == "1"
    assert constants(engine) == {}
    wide = run_cli("import-hfs", "--file", ab, "--energy-tolerance", "0.2", url=url)
    assert wide.returncode == 0, wide.stderr
    assert constants(engine) == {state: (1.0, None, None, None)}
    bad = run_cli("import-hfs", "--file", ab, "--energy-tolerance", "-1", url=url)
    assert bad.returncode == 2 and b"must be a number, 0 or more" in bad.stderr


def test_the_django_command(engine, tmp_path):
    from django.core.management import call_command
    state = level(engine, "1000.0000", "2.5")
    call_command("import_hfs", "--file", str(write_ab(tmp_path / "AB.db", [
        (1, FE1, 1000.0, 2.5, "a", 1.0, None, None, None)])), database=engine, verbosity=0)
    assert constants(engine) == {state: (1.0, None, None, None)}


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "cannot read {p}: No such file or directory"),
    (lambda p: p.write_text("ID,SPEID\n1,2601\n"), "cannot read {p} as an SQLite database: file is not a database"),
    (lambda p: write_ab(p, [], table="levels"), "{p} has no table AB: is it the hyperfine constants file?"),
    (lambda p: write_ab(p, [], columns=AB_COLUMNS[:6]),
     "table AB of {p} has no column dA, B, dB (it needs ID, SPEID, E, J, TERM, A, dA, B, dB)"),
])
def test_a_file_that_is_not_an_ab_table_is_one_line_and_exit_2(tmp_path, make, message):
    path = tmp_path / "AB.db"
    make(path)
    database = tmp_path / "node.sqlite3"
    result = run_cli("import-hfs", "--file", path, url=f"sqlite:///{database}")
    assert result.returncode == 2
    assert result.stderr.decode() == f"valdimport: error: {message.format(p=path)}\n"
    assert path.exists() == ("No such file" not in message)  # a mistyped name creates no file
    if not path.exists():  # checked before the database is touched: none is created
        assert not database.exists()
        return
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM import_runs").fetchone() == (0,)


def test_standard_input_is_refused(tmp_path):
    result = run_cli("import-hfs", url=f"sqlite:///{tmp_path}/node.sqlite3", stdin=b"")
    assert result.returncode == 2
    assert result.stderr.decode().strip() == (
        "valdimport: error: import-hfs reads a file, not standard input: give it with --file")
    assert not (tmp_path / "node.sqlite3").exists()


def test_verify_finds_constants_the_last_import_did_not_give(engine, tmp_path):
    matched, unmatched = level(engine, "1000.0000", "2.5"), level(engine, "2000.0000", "2.5")
    absent = level(engine, "1000.0000", "2.5", species=FE2)  # its species is not in the file
    ab = write_ab(tmp_path / "AB.db", [(1, FE1, 1000.0, 2.5, "a", 1.0, None, None, None)])
    vi.import_hfs(str(ab), using=engine)
    assert hfs_check(engine) == 0  # (the other checks fail: these levels have no transitions)
    states = State.objects.using(engine)
    states.filter(pk=absent).update(hfs_B=5.0)
    states.filter(pk=unmatched).update(hfs_dA=0.1)
    states.filter(pk=matched).update(hfs_A=1.25)
    row = next(r for r in vi.verify(engine).as_dict()["rows"] if "hyperfine" in r["check"])
    assert (row["count"], row["ok"], row["fix"]) == (
        3, False, "import-hfs with the AB file: it sets the constants of every level")
    vi.import_hfs(str(ab), using=engine)
    assert hfs_check(engine) == 0 and constants(engine) == {matched: (1.0, None, None, None)}
    states.filter(pk=matched).delete()  # a rollback took the level: its constants are gone
    assert hfs_check(engine) == 1
