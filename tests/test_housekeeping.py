"""Housekeeping, the summary's phases and --summary-json, the progress bar."""
import json

import pytest

import valdimport as vi
from node_atom.models import State, Transition
from node_common.models import Species
from tests.conftest import DATA, SAMPLE, content, database_url, run_cli

REFS = str(DATA / "refs.bib")


def test_housekeeping_computes_what_skip_calc_left_bit_for_bit(engine):
    vi.import_references(REFS, using=engine)
    vi.import_dump(str(SAMPLE), using=engine)
    plain = content(engine)
    from tests.conftest import clear
    clear(engine)
    vi.import_references(REFS, using=engine)
    vi.import_dump(str(SAMPLE), using=engine, skip_calc=True)
    assert not Transition.objects.using(engine).exclude(einsteina=None).exists()
    assert not vi.verify(engine).ok
    result = run_cli("housekeeping", url=database_url(engine))
    assert result.returncode == 0, result.stderr
    filled = Transition.objects.using(engine).exclude(einsteina=None).count()
    assert filled > 1500
    row = next(line.split() for line in result.stdout.decode().splitlines()
               if line.strip().startswith("derived values"))
    assert row[2] == f"{filled:,}"
    assert content(engine) == plain
    assert vi.verify(engine).ok


def test_skip_housekeeping_defers_ground_states_to_the_command(engine):
    vi.import_references(REFS, using=engine)
    summary = vi.import_dump(str(SAMPLE), using=engine, skip_housekeeping=True)
    assert [name for name, _, _ in summary.phases] == ["drop indexes", "level index", "parse", "levels",
                                                       "transitions", "indexes"]
    assert not Species.objects.using(engine).exclude(ground_state=None).exists()
    from django.core.management import call_command
    call_command("housekeeping", database=engine)
    assert Species.objects.using(engine).exclude(ground_state=None).count() == 30
    assert vi.verify(engine).ok


def test_the_summary_json_counts_equal_the_database(engine, tmp_path):
    path = tmp_path / "summary.json"
    result = run_cli("import", "--file", SAMPLE, "--summary-json", path, url=database_url(engine))
    assert result.returncode == 0, result.stderr
    data = json.loads(path.read_text())
    transitions = Transition.objects.using(engine).count()
    assert data["transitions"] == data["imported"] == transitions == 2000
    assert data["states_new"] == State.objects.using(engine).count()
    assert data["species_created"] == list(Species.objects.using(engine)
                                                     .order_by("id").values_list("id", flat=True))
    assert data["lines_read"] == data["imported"] + data["skipped"] + data["rejected"]
    phases = {p["phase"]: p["rows"] for p in data["phases"]}
    assert phases["transitions"] == transitions
    assert phases["levels"] == State.objects.using(engine).count()
    assert phases["ground states"] >= 30
    text = result.stdout.decode()
    assert "  phase" in text and "  total" in text


def test_two_passes_write_their_summaries(engine, tmp_path):
    url = database_url(engine)
    run_cli("import-states", "--file", SAMPLE, "--summary-json", tmp_path / "1.json", url=url)
    run_cli("import-transitions", "--file", SAMPLE, "--summary-json", tmp_path / "2.json", url=url)
    states, transitions = (json.loads((tmp_path / f"{n}.json").read_text()) for n in (1, 2))
    assert states["states_new"] == State.objects.using(engine).count()
    assert [p["phase"] for p in states["phases"]][:4] == ["drop indexes", "level index", "parse", "levels"]
    assert transitions["states_new"] == 0
    assert transitions["transitions"] == Transition.objects.using(engine).count()


@pytest.mark.django_db(transaction=True)
def test_the_progress_bar_shows_bytes_rate_and_levels(sqlite_only, capsys):
    vi.import_dump(str(SAMPLE), using=sqlite_only, progress=True, batch_size=500)
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    done = f"{SAMPLE.stat().st_size / 1000:.0f}k"  # compressed bytes read: the file's own size
    assert f"| {done}/{done} [" in bar, bar
    assert "records/s" in bar and "1,460 new levels" in bar


def test_a_summary_json_that_cannot_be_written_is_a_usage_error(sqlite_only, tmp_path):
    result = run_cli("import", "--file", SAMPLE, "--summary-json", tmp_path / "no" / "s.json",
                     url=database_url(sqlite_only))
    assert result.returncode == 2
    assert "cannot write the summary" in result.stderr.decode()


def test_verify_as_the_last_phase_of_an_import(engine, tmp_path, sample_lines):
    url = database_url(engine)
    assert run_cli("import-references", "--file", REFS, url=url).returncode == 0
    result = run_cli("import", "--file", SAMPLE, "--verify", url=url)
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "all 15 checks passed" in text
    assert any(line.split()[:2] == ["verify", "15"] for line in text.splitlines() if line.strip())
    doubled = tmp_path / "again.dat"
    doubled.write_bytes(b"".join(sample_lines))
    again = run_cli("import", "--file", doubled, "--restart", "--verify", url=url)
    assert again.returncode == 1  # every transition is now stored twice
    rows = [line for line in again.stdout.decode().splitlines() if "FAILED" in line]
    assert len(rows) == 1 and "species whose transitions differ" in rows[0]
    assert rows[0].split()[6:8] == ["30", "FAILED:"]


@pytest.mark.django_db(transaction=True)
def test_verify_file_shows_its_progress_reading_the_dump(sqlite_only, capsys):
    vi.import_references(REFS, using=sqlite_only)
    vi.import_dump(str(SAMPLE), using=sqlite_only)
    capsys.readouterr()
    assert vi.verify(sqlite_only, dump=str(SAMPLE), progress=True).ok
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert bar.startswith("sample.dat.gz: 100%")
