"""The two passes and the single pass, on SQLite, PostgreSQL and MySQL."""
from decimal import Decimal

import pytest
from django.conf import settings

import valdimport as vi
from node_atom.models import State, Transition
from node_common.models import ImportRun, Species
from tests.conftest import ENGINES, SAMPLE, clear, content, summary_rows, write_dump
from tests.lines import REFERENCE, data_line, dump


def counts(alias):
    return (State.objects.using(alias).count(), Transition.objects.using(alias).count(),
            Species.objects.using(alias).count())


def two_passes(alias, path, **options):
    first = vi.import_states(str(path), using=alias, **options)
    second = vi.import_transitions(str(path), using=alias, **options)
    return first, second


def test_two_passes_equal_the_single_pass(engine):
    first, second = two_passes(engine, SAMPLE)
    assert first.tally.imported == second.tally.imported == 2000
    assert second.tally.transitions == 2000
    assert second.tally.states_new == 0  # pass 1 stored every level
    two = content(engine)
    clear(engine)
    single = vi.import_dump(str(SAMPLE), using=engine)
    assert single.tally.transitions == 2000
    assert content(engine) == two
    assert single.tally.states_new == first.tally.states_new == len(two["states"])


@pytest.mark.django_db(transaction=True, databases=[a for a in ENGINES if a in settings.DATABASES])
def test_the_same_content_on_every_engine():
    engines = [a for a in ENGINES if a in settings.DATABASES]
    if len(engines) < 2:
        pytest.skip("needs at least two engines")
    contents = {}
    for alias in engines:
        two_passes(alias, SAMPLE)
        contents[alias] = content(alias)
    reference = contents.pop("default")
    assert len(reference["transitions"]) == 2000
    for alias, stored in contents.items():
        assert stored["states"] == reference["states"], alias
        assert stored["transitions"] == reference["transitions"], alias
        assert stored == reference, alias


def test_passes_and_import_rerun_add_nothing(engine):
    two_passes(engine, SAMPLE)
    before = counts(engine)
    again = two_passes(engine, SAMPLE)
    single = vi.import_dump(str(SAMPLE), using=engine)
    assert counts(engine) == before
    for summary in (*again, single):
        assert summary.tally.imported == 0
        assert summary.message.startswith("found nothing new")
        assert summary.tally.lines_read == summary.tally.skipped["already imported"]


def test_a_restarted_pass_1_is_deduplicated_by_the_database(engine):
    first = vi.import_states(str(SAMPLE), using=engine)
    again = vi.import_states(str(SAMPLE), using=engine, restart=True)
    assert again.tally.imported == 2000  # read and offered again ...
    assert again.tally.states_new == 0  # ... and the unique constraint kept them out
    assert again.tally.states_existing == first.tally.states_new
    assert State.objects.using(engine).count() == first.tally.states_new


def test_levels_with_unknown_j_are_one_state(engine, tmp_path):
    blank = data_line(lower_j="      ", upper_energy="    30000.0000")
    x = data_line(lower_j="     X", upper_energy="    31000.0000", ritz="     4000.00000")
    known = data_line(lower_j="   2.0", upper_energy="    32000.0000", ritz="     3000.00000")
    path = write_dump(tmp_path / "j.dat", [dump(blank, x, known, blank)])
    vi.import_dump(str(path), using=engine)
    levels = State.objects.using(engine).filter(energy_scaled=57404501)
    assert sorted((s.J_scaled, s.J) for s in levels) == [(-1, None), (20, Decimal("2.0"))]
    assert Transition.objects.using(engine).count() == 4
    unknown = levels.get(J__isnull=True)
    assert Transition.objects.using(engine).filter(lostate=unknown).count() == 3
    # the unique constraint holds for unknown J too, not only the importer
    vi.import_states(str(path), using=engine, restart=True)
    assert State.objects.using(engine).filter(energy_scaled=57404501).count() == 2


def test_text_is_stored_byte_exact(engine, tmp_path):
    nasty = "3d6.(5D)\\ 4s \"it's\" 100% \\\\N \\t"
    path = write_dump(tmp_path / "text.dat", [dump(
        (data_line(lower_term=nasty, comment="\\N 'q' \"%s\""), "wl:Wa,WA gf:x%y"))])
    vi.import_dump(str(path), using=engine)
    state = State.objects.using(engine).get(energy_scaled=57404501)
    assert state.term_desc == nasty
    transition = Transition.objects.using(engine).get()
    assert transition.comment == "\\N 'q' \"%s\""
    assert (transition.wave_ref_id, transition.loggf_ref_id) == ("Wa,WA", "x%y")


def test_values_are_stored_with_the_file_precision(engine, tmp_path):
    path = write_dump(tmp_path / "v.dat", [dump((data_line(), REFERENCE))])
    vi.import_dump(str(path), using=engine)
    t = Transition.objects.using(engine).select_related().get()
    assert (t.wave, t.waveritz, t.loggf) == (Decimal("5000.12000"), Decimal("5000.12345"), Decimal("-1.234"))
    assert (t.gammarad, t.gammastark, t.gammawaals) == (Decimal("8.120"), Decimal("-5.670"), None)
    assert (t.sigmawaals, t.alphawaals) == (312, Decimal("0.245"))
    assert (t.accurflag, t.accur, t.loggf_err, t.transition_type, t.autoionized) == ("N", "B+", 0.03, "E1", False)
    assert [getattr(t, f"ll{i}") for i in range(1, 10)] == list(range(1, 10))
    lower = State.objects.using(engine).get(pk=t.lostate_id)
    upper = State.objects.using(engine).get(pk=t.upstate_id)
    assert (lower.energy, lower.J, lower.lande) == (Decimal("5740.4501"), Decimal("4.0"), Decimal("1.50"))
    assert (upper.energy, upper.J, upper.lande) == (Decimal("25899.9876"), Decimal("3.5"), None)
    assert (lower.energy_ref_id, upper.energy_ref_id, lower.level_ref_id) == ("E1", "E2", "Wb")


def test_einstein_a_is_computed_while_inserting(engine):
    vi.import_dump(str(SAMPLE), using=engine)
    checked = 0
    for t in Transition.objects.using(engine).exclude(loggf=None).order_by("id")[:50]:
        upper = State.objects.using(engine).get(pk=t.upstate_id)
        if upper.J is None:
            assert t.einsteina is None
            continue
        expected = 0.667025e16 * 10 ** float(t.loggf) / ((2 * float(upper.J) + 1) * float(t.wave) ** 2)
        assert t.einsteina == pytest.approx(expected, rel=1e-12)
        checked += 1
    assert checked > 30


def test_skip_calc_leaves_einstein_a_empty(engine):
    vi.import_dump(str(SAMPLE), using=engine, skip_calc=True)
    assert not Transition.objects.using(engine).exclude(einsteina=None).exists()


def test_unknown_species_become_reported_placeholders(engine, tmp_path):
    Species.objects.using(engine).create(id=2601, name="Fe 1")
    path = write_dump(tmp_path / "s.dat", [dump(data_line(), data_line(species="    99"),
                                                data_line(species=" 10108"))])
    summary = vi.import_dump(str(path), using=engine)
    assert summary.tally.species_created == [99, 10108]
    assert summary_rows(summary.table())["placeholder species"] == "2 (99, 10108)"
    assert dict(Species.objects.using(engine).values_list("id", "name")) == {
        2601: "Fe 1", 99: None, 10108: None}


def test_ground_state_is_the_lowest_level_of_each_species(engine):
    vi.import_dump(str(SAMPLE), using=engine)
    for species in Species.objects.using(engine).all():
        lowest = State.objects.using(engine).filter(species=species).order_by("energy_scaled", "id").first()
        assert species.ground_state_id == (lowest.id if lowest else None)
    assert Species.objects.using(engine).exclude(ground_state=None).count() > 1


def test_pass_2_alone_adds_the_levels_it_needs(engine):
    summary = vi.import_transitions(str(SAMPLE), using=engine)
    assert summary.tally.states_new == State.objects.using(engine).count() > 0
    alone = content(engine)
    clear(engine)
    vi.import_dump(str(SAMPLE), using=engine)
    assert content(engine) == alone


def test_an_appended_input_imports_only_the_new_lines(engine, tmp_path, sample_lines):
    head = write_dump(tmp_path / "head.dat", sample_lines[:1002])
    vi.import_dump(str(head), using=engine)
    assert Transition.objects.using(engine).count() == 500
    whole = write_dump(tmp_path / "whole.dat", sample_lines)
    summary = vi.import_dump(str(whole), using=engine)
    assert summary.continues_run is not None
    assert summary.tally.skipped["already imported"] == 1002
    assert summary.tally.transitions == 1500
    assert Transition.objects.using(engine).count() == 2000
    appended = content(engine)
    clear(engine)
    vi.import_dump(str(whole), using=engine)
    assert content(engine) == appended


def test_a_different_file_with_the_same_start_is_a_new_run(engine, tmp_path, sample_lines):
    first = write_dump(tmp_path / "a.dat", sample_lines)
    changed = list(sample_lines)
    changed[-2] = data_line(species="    26").encode() + b"\n"
    second = write_dump(tmp_path / "b.dat", changed)
    vi.import_dump(str(first), using=engine)
    with pytest.raises(vi.UsageError, match="does not continue it"):
        vi.import_dump(str(second), using=engine)  # its lines would be stored twice
    assert Transition.objects.using(engine).count() == 2000
    summary = vi.import_dump(str(second), using=engine, append=True)
    assert summary.continues_run is None and summary.tally.transitions == 2000
    assert Transition.objects.using(engine).count() == 4000
    # the first file is still recognised as imported, though a later run came between
    assert vi.import_dump(str(first), using=engine).tally.imported == 0


def test_small_batches_give_the_same_content(engine):
    vi.import_dump(str(SAMPLE), using=engine, batch_size=7)
    small = content(engine)
    clear(engine)
    vi.import_dump(str(SAMPLE), using=engine)
    assert content(engine) == small


def test_counts_add_up_and_are_kept_in_the_run_row(engine, tmp_path, sample_lines):
    lines = sample_lines[:40] + [b"# note\n", b"\n", b"bogus Unknown\n", b"****\n"] + sample_lines[40:80]
    path = write_dump(tmp_path / "mixed.dat", lines)
    summary = vi.import_dump(str(path), using=engine, reject_file=str(tmp_path / "rejects"))
    t = summary.tally
    assert t.lines_read == len(lines) == t.imported + sum(t.skipped.values()) + t.rejected
    assert t.rejected == 1
    run = ImportRun.objects.using(engine).get(pk=summary.run_id)
    assert (run.lines_read, run.imported, run.skipped, run.rejected) == (
        t.lines_read, t.imported, sum(t.skipped.values()), t.rejected)
    assert run.status == "completed" and run.committed_line == len(lines)
    assert (tmp_path / "rejects").read_text() == "44\tno species index\t****\n"


@pytest.mark.django_db(transaction=True)
def test_sqlite_checkpoints_every_80_mb_during_an_import_and_as_before_after(sqlite_only, monkeypatch):
    from django.db import connections
    seen = []
    remember = vi.BatchImport._remember_levels

    def remember_and_look(self):
        seen.append(connections[sqlite_only].connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        remember(self)

    monkeypatch.setattr(vi.BatchImport, "_remember_levels", remember_and_look)
    vi.import_dump(str(SAMPLE), using=sqlite_only, batch_size=500)
    assert seen and set(seen) == {vi.SQLiteWriter.WAL_PAGES}
    raw = connections[sqlite_only].connection
    assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
