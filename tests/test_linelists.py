"""import-linelists: methods of wavelengths and energies, whichever comes first."""
from node_atom.models import State, Transition
from node_common.models import LineList
import valdimport as vi
from tests.conftest import SAMPLE, content, summary_rows
from tests.lines import data_line, dump

LINELISTS = "ATOMS/K14.bin\t1\tatomic\t4\nATOMS/BWL.bin\t2\tatomic\t0\n" \
            "ATOMS/E1.bin\t3\thfs\t1\nATOMS/E2.bin\t4\tatomic\t-1\n"


def write_inputs(tmp_path):
    (tmp_path / "linelists.dat").write_text(LINELISTS)
    (tmp_path / "d.dat").write_bytes(dump(
        data_line(lls=(1, 2, 3, 4, 0, 0, 0, 0, 0)),
        data_line(ritz="     6000.00000", upper_energy="    30000.0000", lls=(2, 1, 3, 1, 0, 0, 0, 0, 0)),
        data_line(ritz="     7000.00000", upper_energy="    31000.0000", lls=(9, 0, 0, 2, 0, 0, 0, 0, 0))))
    return str(tmp_path / "linelists.dat"), str(tmp_path / "d.dat")


def methods(alias):
    waves = list(Transition.objects.using(alias).order_by("id").values_list("wave_method", flat=True))
    energies = dict(State.objects.using(alias).values_list("energy_scaled", "energy_method"))
    return waves, energies


EXPECTED = ([4, 0, None], {57404501: 1, 258999876: -1, 300000000: 4, 310000000: 0})


def test_line_lists_before_the_data(engine, tmp_path):
    linelists, data = write_inputs(tmp_path)
    summary = vi.import_linelists(linelists, using=engine)
    assert summary.tally.imported == 4 and LineList.objects.using(engine).get(pk=3).method == 1
    assert summary_rows(summary.table())["methods applied"] == "0 transitions, 0 levels"
    vi.import_dump(data, using=engine)
    assert methods(engine) == EXPECTED


def test_line_lists_after_the_data_fill_in_the_methods(engine, tmp_path):
    linelists, data = write_inputs(tmp_path)
    vi.import_dump(data, using=engine)
    assert methods(engine) == ([None] * 3, dict.fromkeys(EXPECTED[1]))
    summary = vi.import_linelists(linelists, using=engine)
    assert methods(engine) == EXPECTED
    assert summary_rows(summary.table())["methods applied"] == "2 transitions, 4 levels"
    again = vi.import_linelists(linelists, using=engine)
    assert summary_rows(again.table())["methods applied"] == "0 transitions, 0 levels"


def test_both_orders_give_the_same_database(engine, tmp_path):
    sample_lists = str(SAMPLE.parent / "linelists.dat")
    vi.import_linelists(sample_lists, using=engine)
    vi.import_dump(str(SAMPLE), using=engine)
    before = content(engine)
    assert any(row[16] is not None for row in before["transitions"])  # wave_method
    for model in (Transition, State, LineList):
        model.objects.using(engine).all().delete()
    vi.import_dump(str(SAMPLE), using=engine, restart=True)
    vi.import_linelists(sample_lists, using=engine)
    assert content(engine) == before


def test_bad_line_list_rows_are_rejected(engine, tmp_path):
    path = tmp_path / "ll.dat"
    path.write_text("srcfile\tid\tlisttype\tmethod\n" + LINELISTS + "x\ty\tz\tw\nonly two\tfields\n")
    summary = vi.import_linelists(str(path), using=engine, reject_file=str(tmp_path / "r"))
    assert (summary.tally.imported, summary.tally.rejected, summary.tally.skipped["header"]) == (4, 2, 1)
    assert [line.split("\t")[0] for line in (tmp_path / "r").read_text().splitlines()] == ["6", "7"]


def test_a_repeated_line_list_id_keeps_the_first_row(engine, tmp_path):
    path = tmp_path / "ll.dat"
    path.write_text(LINELISTS + "ATOMS/again.bin\t3\tatomic\t4\nATOMS/K14b.bin\t1\tatomic\t0\n"
                    "ATOMS/third.bin\t3\tatomic\t2\n")
    summary = vi.import_linelists(str(path), using=engine, reject_file=str(tmp_path / "r"))
    assert (summary.tally.imported, summary.tally.rejected) == (4, 3)
    assert list(LineList.objects.using(engine).order_by("id").values_list("id", "srcfile", "method")) == [
        (1, "ATOMS/K14.bin", 4), (2, "ATOMS/BWL.bin", 0), (3, "ATOMS/E1.bin", 1), (4, "ATOMS/E2.bin", -1)]
    assert [line.split("\t")[:2] for line in (tmp_path / "r").read_text().splitlines()] == [
        ["5", "duplicate line-list id 3; the first, on line 3, is kept"],
        ["6", "duplicate line-list id 1; the first, on line 1, is kept"],
        ["7", "duplicate line-list id 3; the first, on line 3, is kept"]]
    rows = summary_rows(summary.table())
    assert rows["line lists"] == "4 new, 0 updated, 0 unchanged"
    assert rows["duplicates"] == "3 rejected, the first of each kept: 3, 1"


def test_a_changed_line_list_file_counts_the_rows_it_changes(engine, tmp_path):
    path = tmp_path / "ll.dat"
    path.write_text(LINELISTS)
    first = vi.import_linelists(str(path), using=engine)
    assert summary_rows(first.table())["line lists"] == "4 new, 0 updated, 0 unchanged"
    path.write_text(LINELISTS.replace("E1.bin\t3\thfs\t1", "E1.bin\t3\thfs\t2") + "ATOMS/F.bin\t5\tatomic\t3\n")
    summary = vi.import_linelists(str(path), using=engine)
    assert summary_rows(summary.table())["line lists"] == "1 new, 1 updated, 3 unchanged"
    assert LineList.objects.using(engine).get(pk=3).method == 2
