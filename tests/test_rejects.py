"""Rejected lines: every kind lands in the reject file with its line number, the rest is
stored, the counts reconcile, and rows the database refuses are isolated."""
import pytest
from django.db import connections

import valdimport as vi
from node_atom.models import Transition
from tests.conftest import SAMPLE, database_url, run_cli, summary_rows, write_dump
from tests.lines import data_line

GOOD = [data_line(ritz=f"{5000 + i:15.5f}", upper_energy=f"{30000 + i:14.4f}") for i in range(12)]
BAD = {  # kind -> a line the importer must reject (and why)
    "non-numeric": (data_line(loggf="   -1.2x"), "log gf is not a number"),
    "overflow": (data_line(upper_energy="*" * 14), "upper energy is not a number"),
    "bad species": (data_line(species="  Fe I"), "species index is not an integer"),
    "no species": (data_line(species="     0"), "bad species index 0"),
    "truncated": (data_line()[:52], "no upper energy"),
    "binary": ("\x00\x01\x02\x7f binary", "control characters"),
    "too large": (data_line(loggf="12345678"), "log gf is too large for its column"),
    "too precise": (data_line(gammarad="-7.1234"), "gammarad has more than 3 decimals"),
    "long reference": ((data_line(), "wl:" + "K" * 70), "wave reference"),
    "stray reference": ("gf:K14 K14", "reference line without a data line before it"),
}


def mixed_dump(tmp_path):
    """Header, good records with a reference line each, a bad line after every good one."""
    lines, expected = [b"header 1", b"header 2"], {}
    kinds = list(BAD)
    for i, good in enumerate(GOOD):
        lines += [good.encode(), b"wl:K14 gf:K14"]
        if i < len(kinds):
            bad, reason = BAD[kinds[i]]
            bad = bad if isinstance(bad, tuple) else (bad,)
            expected[len(lines) + 1] = reason
            lines += [line.encode("latin-1") for line in bad]
    return write_dump(tmp_path / "mixed.dat", lines), expected, len(lines)


def test_every_kind_of_bad_line_is_rejected_with_its_line_number(engine, tmp_path):
    path, expected, total = mixed_dump(tmp_path)
    result = run_cli("import", "--file", path, "--batch-size", "4", url=database_url(engine))
    assert result.returncode == 3, result.stderr
    rows = summary_rows(result.stdout.decode())
    rejects = (tmp_path / "mixed.dat.rejects").read_text(encoding="utf-8").splitlines()
    assert [int(r.split("\t")[0]) for r in rejects] == sorted(expected)
    for line in rejects:
        number, reason, raw = line.split("\t", 2)
        assert expected[int(number)] in reason, (number, reason)
    assert rows["rejected"].startswith(f"{len(BAD)}  -> ")
    assert Transition.objects.using(engine).count() == len(GOOD)
    skipped = int(rows["skipped"].split()[0].replace(",", ""))
    assert int(rows["lines read"].replace(",", "")) == total == len(GOOD) + skipped + len(BAD)


def test_a_value_too_large_for_its_column_rejects_only_its_line(engine, tmp_path):
    lines = ["h", "h"] + GOOD[:5] + [data_line(loggf="12345678")] + GOOD[5:]
    summary = vi.import_dump(str(write_dump(tmp_path / "d.dat", [l.encode() for l in lines])),
                             using=engine, batch_size=100)
    assert (summary.tally.imported, summary.tally.rejected) == (len(GOOD), 1)
    assert Transition.objects.using(engine).count() == len(GOOD)


REFUSE_LOGGF = {  # a rule the database enforces, so that it refuses one row the parser accepts
    "sqlite": ("CREATE TRIGGER vi_refuse BEFORE INSERT ON transitions WHEN NEW.loggf >= 5 "
               "BEGIN SELECT RAISE(ABORT, 'loggf too large for this node'); END",
               "DROP TRIGGER vi_refuse"),
    "postgresql": ("ALTER TABLE transitions ADD CONSTRAINT vi_refuse CHECK (loggf < 5)",
                   "ALTER TABLE transitions DROP CONSTRAINT vi_refuse"),
    "mysql": ("ALTER TABLE transitions ADD CONSTRAINT vi_refuse CHECK (loggf < 5)",
              "ALTER TABLE transitions DROP CONSTRAINT vi_refuse"),
}


@pytest.fixture
def refusing_database(engine):
    add, drop = REFUSE_LOGGF[connections[engine].vendor]
    with connections[engine].cursor() as cursor:
        cursor.execute(add)
    yield engine
    with connections[engine].cursor() as cursor:
        cursor.execute(drop)


def test_rows_the_database_refuses_are_isolated_and_the_rest_committed(refusing_database, tmp_path):
    engine = refusing_database
    refused = [7, 19, 20]  # records (0-based) with a log gf the database refuses
    records = [data_line(ritz=f"{5000 + i:15.5f}", upper_energy=f"{30000 + i:14.4f}",
                         loggf="   6.000" if i in refused else "  -1.000") for i in range(40)]
    path = write_dump(tmp_path / "d.dat", [b"h", b"h"] + [r.encode() for r in records])
    summary = vi.import_dump(str(path), using=engine, batch_size=16,
                             reject_file=str(tmp_path / "rejects"))
    assert (summary.tally.imported, summary.tally.rejected) == (37, 3)
    rejects = (tmp_path / "rejects").read_text().splitlines()
    assert [int(r.split("\t")[0]) for r in rejects] == [i + 3 for i in refused]
    assert all(r.split("\t")[1].startswith("refused by the database: ") for r in rejects)
    assert rejects[0].split("\t")[2] == records[7]
    stored = set(Transition.objects.using(engine).values_list("waveritz", flat=True))
    assert len(stored) == 37 and all(5000 + i not in stored for i in refused)
    assert summary.tally.transitions == 37


def test_a_batch_refused_entirely_stops_the_run(refusing_database, tmp_path):
    records = [data_line(ritz=f"{5000 + i:15.5f}", loggf="   6.000") for i in range(4)]
    path = write_dump(tmp_path / "d.dat", [b"h", b"h"] + [r.encode() for r in records])
    with pytest.raises(vi.ValdImportError, match="refused every record of lines 1-6"):
        vi.import_dump(str(path), using=refusing_database, reject_file=str(tmp_path / "r"))


def test_max_errors_stops_after_committing_the_good_lines(engine, tmp_path):
    path, expected, _ = mixed_dump(tmp_path)
    result = run_cli("import", "--file", path, "--batch-size", "4", "--max-errors", "3",
                     url=database_url(engine))
    assert result.returncode == 1
    assert "stopped after" in result.stderr.decode() and "--max-errors 3" in result.stderr.decode()
    stored = Transition.objects.using(engine).count()
    assert 3 <= stored < len(GOOD)
    from node_common.models import ImportRun
    run = ImportRun.objects.using(engine).get()
    assert run.status == "stopped" and run.rejected >= 3
    rerun = run_cli("import", "--file", path, "--batch-size", "4", url=database_url(engine))
    assert rerun.returncode == 3  # resumes after the committed lines and finishes
    assert Transition.objects.using(engine).count() == len(GOOD)


def test_rejected_lines_give_exit_3_clean_input_exit_0(tmp_path):
    url = f"sqlite:///{tmp_path}/e.sqlite3"
    path, _, _ = mixed_dump(tmp_path)
    assert run_cli("import", "--file", path, url=url).returncode == 3
    clean = run_cli("import", "--file", SAMPLE, url=url)
    assert clean.returncode == 0 and not (SAMPLE.parent / "sample.dat.gz.rejects").exists()

