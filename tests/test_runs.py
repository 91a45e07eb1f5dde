"""runs and rollback: the list of runs, undoing one, and what rollback refuses."""
import json
import subprocess

import pytest

import valdimport as vi
from node_atom.models import State, Transition
from node_common.models import ImportRun
from tests.conftest import SAMPLE, content, database_url, generate_dump, run_cli


@pytest.fixture(scope="module")
def two_dumps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    return (generate_dump(folder / "first.dat", records=600, seed=3, species=20),
            generate_dump(folder / "second.dat", records=600, seed=4, species=30))


def import_references_of(alias, *dumps):
    for path in dumps:
        vi.import_references(f"{path}.bib", using=alias)


def test_rollback_of_the_second_of_two_runs_leaves_the_database_as_after_the_first(engine, two_dumps):
    first, second = two_dumps
    import_references_of(engine, first, second)
    vi.import_dump(str(first), using=engine)
    after_first = content(engine)
    summary = vi.import_dump(str(second), using=engine, append=True)
    assert summary.tally.species_created and summary.tally.states_new  # it added to the first
    assert content(engine) != after_first
    result = run_cli("rollback", "--run", summary.run_id, "--yes", url=database_url(engine))
    assert result.returncode == 0, result.stderr
    assert f"transitions deleted           {summary.tally.transitions:,}" in result.stdout.decode()
    assert content(engine) == after_first
    assert ImportRun.objects.using(engine).get(pk=summary.run_id).status == "rolled back"
    assert vi.verify(engine).ok


def test_rollback_of_pass_2_keeps_the_levels_of_pass_1(engine):
    vi.import_states(str(SAMPLE), using=engine)
    after_states = content(engine)
    summary = vi.import_transitions(str(SAMPLE), using=engine)
    vi.rollback_run(engine, summary.run_id, confirm=True)
    assert content(engine) == after_states
    assert State.objects.using(engine).count() == 1460


def test_a_rolled_back_input_is_imported_again_by_a_rerun(engine):
    first = vi.import_dump(str(SAMPLE), using=engine)
    vi.rollback_run(engine, first.run_id, confirm=True)
    assert not Transition.objects.using(engine).exists() and not State.objects.using(engine).exists()
    again = vi.import_dump(str(SAMPLE), using=engine)
    assert again.tally.transitions == 2000 and again.message == "completed"


def test_levels_kept_for_another_run_go_when_that_run_is_rolled_back(engine, two_dumps):
    first, second = two_dumps
    import_references_of(engine, first, second)
    one = vi.import_dump(str(first), using=engine)
    two = vi.import_dump(str(second), using=engine, append=True)
    vi.rollback_run(engine, one.run_id, confirm=True)  # its levels used by run two stay
    assert vi.verify(engine).ok
    vi.rollback_run(engine, two.run_id, confirm=True)
    assert not State.objects.using(engine).exists()
    assert not Transition.objects.using(engine).exists()


def test_rollback_refuses_an_active_run_a_continued_run_and_no_terminal(engine, tmp_path, sample_lines):
    url = database_url(engine)
    head = tmp_path / "head.dat"
    head.write_bytes(b"".join(sample_lines[:1002]))
    whole = tmp_path / "whole.dat"
    whole.write_bytes(b"".join(sample_lines))
    first = vi.import_dump(str(head), using=engine)
    second = vi.import_dump(str(whole), using=engine)
    assert second.continues_run == first.run_id
    result = run_cli("rollback", "--run", first.run_id, "--yes", url=url)
    assert result.returncode == 2
    assert f"run {second.run_id} continues run {first.run_id}" in result.stderr.decode()
    no_tty = run_cli("rollback", "--run", second.run_id, url=url)
    assert no_tty.returncode == 2 and "add --yes" in no_tty.stderr.decode()
    assert Transition.objects.using(engine).count() == 2000
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        ImportRun.objects.using(engine).filter(pk=second.run_id).update(
            status="running", pid=sleeper.pid, host=vi._host())
        active = run_cli("rollback", "--run", second.run_id, "--yes", url=url)
        assert active.returncode == 2 and "still running" in active.stderr.decode()
    finally:
        sleeper.kill()
        sleeper.wait()
    missing = run_cli("rollback", "--run", 999, "--yes", url=url)
    assert missing.returncode == 2 and "there is no run 999" in missing.stderr.decode()
    assert Transition.objects.using(engine).count() == 2000


def test_runs_lists_every_run_and_marks_interrupted_ones(engine, tmp_path):
    first = vi.import_dump(str(SAMPLE), using=engine)
    dead = subprocess.Popen(["true"])
    dead.wait()
    ImportRun.objects.using(engine).filter(pk=first.run_id).update(
        status="running", pid=dead.pid, host=vi._host(), resumed_from_line=1001)
    result = run_cli("runs", url=database_url(engine))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[1].split() == ["id", "command", "input", "started", "(UTC)", "duration", "status",
                                "read", "imported", "rejected", "skipped", "resumed", "from"]
    row = lines[2].split()
    assert row[:3] == [str(first.run_id), "import", str(SAMPLE)]
    assert row[-6:] == ["interrupted", "4,002", "2,000", "0", "2,002", "1,001"]
    data = json.loads(run_cli("runs", "--json", url=database_url(engine)).stdout)
    assert data["rows"][0]["status"] == "interrupted" and data["rows"][0]["imported"] == 2000
    alive = subprocess.Popen(["sleep", "60"])  # the same row, its process still there
    try:
        ImportRun.objects.using(engine).filter(pk=first.run_id).update(pid=alive.pid)
        data = json.loads(run_cli("runs", "--json", url=database_url(engine)).stdout)
        assert data["rows"][0]["status"] == "running"
    finally:
        alive.kill()
        alive.wait()
