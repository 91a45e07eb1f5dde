"""Rejected lines: every kind lands in the reject file with its line number, the rest is
stored, the counts reconcile, and rows the database refuses are isolated."""
import random
import subprocess
import sys

import pytest
from django.db import connections

import valdimport as vi
from node_atom.models import State, Transition
from node_common.models import ImportRun
from tests.conftest import (DATA, ROOT, SAMPLE, clear, cli_env, content, database_url, run_cli,
                            summary_rows, unprivileged, write_dump)
from tests.lines import data_line

GOOD = [data_line(ritz=f"{5000 + i:15.5f}", upper_energy=f"{30000 + i:14.4f}") for i in range(12)]
BAD = {  # kind -> a line the importer must reject (and why)
    "non-numeric": (data_line(loggf="   -1.2x"), "log gf is not a number"),
    "overflow": (data_line(upper_energy="*" * 14), "upper energy is not a number"),
    "bad species": (data_line(species="  Fe I"), "species index is not an integer"),
    "no species": (data_line(species="     0"), "bad species index 0"),
    "truncated": (data_line()[:52], "lower energy has no decimal point"),
    "binary": ("\x00\x01\x02\x7f binary", "control characters"),
    "no point": (data_line(loggf="12345678"), "log gf has no decimal point"),
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
    result = run_cli("import", "--file", path, "--batch-size", "4", url=database_url(engine),
                     cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    rows = summary_rows(result.stdout.decode())
    run = ImportRun.objects.using(engine).get()
    assert rows["rejected"] == f"{len(BAD)}  -> {tmp_path}/mixed.dat.run{run.id}.rejects"
    rejects = (tmp_path / f"mixed.dat.run{run.id}.rejects").read_text(encoding="utf-8").splitlines()
    assert [int(r.split("\t")[0]) for r in rejects] == sorted(expected)
    for line in rejects:
        number, reason, raw = line.split("\t", 2)
        assert expected[int(number)] in reason, (number, reason)
    assert Transition.objects.using(engine).count() == len(GOOD)
    skipped = int(rows["skipped"].split()[0].replace(",", ""))
    assert int(rows["lines read"].replace(",", "")) == total == len(GOOD) + skipped + len(BAD)


def test_a_value_its_column_cannot_keep_rejects_only_its_line(engine, tmp_path):
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
                     url=database_url(engine), cwd=tmp_path)
    assert result.returncode == 1
    assert "stopped after" in result.stderr.decode() and "--max-errors 3" in result.stderr.decode()
    stored = Transition.objects.using(engine).count()
    assert 3 <= stored < len(GOOD)
    run = ImportRun.objects.using(engine).get()
    assert run.status == "stopped" and run.rejected >= 3
    rerun = run_cli("import", "--file", path, "--batch-size", "4", url=database_url(engine),
                    cwd=tmp_path)
    assert rerun.returncode == 3  # resumes after the committed lines and finishes
    assert Transition.objects.using(engine).count() == len(GOOD)


def test_rejected_lines_give_exit_3_clean_input_exit_0(tmp_path):
    url = f"sqlite:///{tmp_path}/e.sqlite3"
    path, _, _ = mixed_dump(tmp_path)
    assert run_cli("import", "--file", path, url=url, cwd=tmp_path).returncode == 3
    clean = run_cli("import", "--file", SAMPLE, "--append", url=url, cwd=tmp_path)
    assert clean.returncode == 0 and not list(tmp_path.glob("sample.dat.gz*.rejects"))



@pytest.mark.parametrize("cut", [70, 180, "reference"])
def test_a_dump_cut_off_inside_its_last_line_stores_nothing_of_that_line(engine, tmp_path,
                                                                         sample_lines, cut):
    """An interrupted download: cut at column 70 the upper energy would read 53 instead of
    53991.8552, at column 180 the upper level would have no description. Once the whole
    dump is there, the same command continues at the line that was cut off."""
    records = sample_lines[:-2]  # all but the last record
    vi.import_dump(str(write_dump(tmp_path / "whole.dat", sample_lines)), using=engine)
    complete = content(engine)
    clear(engine)
    vi.import_dump(str(write_dump(tmp_path / "shorter.dat", records)), using=engine)
    expected = content(engine)
    clear(engine)
    last = sample_lines[-2] + sample_lines[-1][:12] if cut == "reference" else sample_lines[-2][:cut]
    path = tmp_path / "vald.dat"
    path.write_bytes(b"".join(records) + last)  # no end of line after the cut
    result = run_cli("import", "--file", path, url=database_url(engine), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    (reject,) = next(tmp_path.glob("vald.dat.run*.rejects")).read_text().splitlines()
    number, reason, raw = reject.split("\t")
    assert int(number) == len(sample_lines) - 1 and reason.startswith("truncated input: ")
    assert raw == sample_lines[-2].decode().rstrip("\n")[:None if cut == "reference" else cut]
    assert content(engine) == expected
    path.write_bytes(b"".join(sample_lines))  # downloaded again, whole
    rerun = run_cli("import", "--file", path, url=database_url(engine), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert summary_rows(rerun.stdout.decode())["transitions"] == "1"
    assert content(engine) == complete


NOT_A_DUMP = {
    "random bytes": b"\x00" + random.Random(1).randbytes(300_000),
    "a CSV file": b"id,name,value\n" + b"".join(b"%d,row %d,%d.5\n" % (i, i, i) for i in range(3000)),
    "the species list": (DATA / "species.csv").read_bytes(),
    "mostly rejected": b"h\nh\n" + b"".join(
        [GOOD[0].encode() + b"\n"] + [data_line(loggf=f"{i:8d}").encode() + b"\n" for i in range(5)]),
}


@pytest.mark.parametrize("kind", NOT_A_DUMP)
def test_an_input_that_is_not_a_vald_dump_stops_before_writing(engine, tmp_path, kind):
    path = tmp_path / "input"
    path.write_bytes(NOT_A_DUMP[kind])
    result = run_cli("import", "--file", path, url=database_url(engine), cwd=tmp_path)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert err.startswith("valdimport: error: this does not look like a VALD dump (first lines: ")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not Transition.objects.using(engine).exists() and not State.objects.using(engine).exists()
    assert not list(tmp_path.glob("*.rejects"))
    assert not ImportRun.objects.using(engine).exists()  # no run: it wrote nothing
    assert vi.check_indexes(engine).ok  # the indexes a first load defers are all there


def test_an_empty_input_is_a_failure(engine, tmp_path):
    result = run_cli("import", url=database_url(engine), stdin=b"", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.decode() == ("valdimport: error: the input is empty (standard input: 0 "
                                      "bytes): nothing to import; when it comes through a pipe, "
                                      "the command feeding it probably failed\n")


def test_reject_files_go_where_the_run_can_write_one_per_run(tmp_path):
    """Not beside the dump (its folder may be read-only), and never shared by two runs."""
    dumps, work = tmp_path / "dumps", tmp_path / "work"
    dumps.mkdir()
    work.mkdir()
    clean = dumps / "clean.dat"
    clean.write_bytes(SAMPLE.read_bytes())
    mixed, expected, _ = mixed_dump(dumps)
    dumps.chmod(0o555)
    url = f"sqlite:///{work}/db.sqlite3"
    runs = [subprocess.run(unprivileged([sys.executable, ROOT / "valdimport.py", "--database-url", url,
                                         "import", "--file", path, *args]),
                           cwd=work, env=cli_env(), capture_output=True, text=True)
            for path, args in ((clean, ()), (mixed, ("--append",)), (mixed, ("--restart",)))]
    dumps.chmod(0o755)
    assert [r.returncode for r in runs] == [0, 3, 3], [r.stderr for r in runs]
    assert not list(dumps.glob("*.rejects"))
    for run_id, result in ((2, runs[1]), (3, runs[2])):
        path = work / f"mixed.dat.run{run_id}.rejects"
        assert summary_rows(result.stdout)["rejected"] == f"{len(BAD)}  -> {path}"
        assert [int(r.split("\t")[0]) for r in path.read_text().splitlines()] == sorted(expected)


def test_runs_of_two_databases_and_two_dry_runs_keep_a_reject_file_each(tmp_path):
    """Run 1 of one database and run 1 of another, from one working directory: neither
    overwrites (or deletes) the other's file; none goes beside the (writable) input."""
    dumps, work, databases = tmp_path / "dumps", tmp_path / "work", tmp_path / "databases"
    for folder in (dumps, work, databases):
        folder.mkdir()
    mixed, expected, _ = mixed_dump(dumps)
    def run(*args):
        return subprocess.run([sys.executable, ROOT / "valdimport.py", *args, "--file", mixed], cwd=work,
                              env=cli_env(), capture_output=True, text=True)
    results = [run("--database-url", f"sqlite:///{databases}/{name}.sqlite3", "import") for name in "ab"]
    results += [run("import", "--dry-run") for _ in range(2)]
    assert [r.returncode for r in results] == [3, 3, 3, 3], [r.stderr for r in results]
    paths = [work / "mixed.dat.run1.rejects", work / "mixed.dat.run1-2.rejects",
             work / "mixed.dat.dry-run.rejects", work / "mixed.dat.dry-run-2.rejects"]
    for result, path in zip(results, paths):
        assert summary_rows(result.stdout)["rejected"] == f"{len(BAD)}  -> {path}"
        assert [int(r.split("\t")[0]) for r in path.read_text().splitlines()] == sorted(expected)
    assert sorted(p.name for p in tmp_path.rglob("*.rejects")) == sorted(p.name for p in paths)
