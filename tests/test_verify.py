"""verify and check-indexes: pass on a fresh import, name each kind of damage, restore indexes."""
import json

from django.db import connections, models

import valdimport as vi
from node_atom.models import State, Transition
from node_common.models import ImportRun, Species
from tests.conftest import SAMPLE, database_url, run_cli, write_dump


def counts(report):
    return {row["check"]: row["count"] for row in report.as_dict()["rows"]}


def failed(report):
    return {row["check"] for row in report.as_dict()["rows"] if not row["ok"]}


def test_verify_passes_on_a_fresh_import(engine):
    vi.import_dump(str(SAMPLE), using=engine)
    report = vi.verify(engine, dump=str(SAMPLE))
    assert report.ok, report.table()
    assert len(counts(report)) == 12 and set(counts(report).values()) == {0}
    result = run_cli("verify", "--file", SAMPLE, url=database_url(engine))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().rstrip().endswith("all 12 checks passed")


def test_deleting_a_used_level_leaves_orphan_transitions(engine):
    vi.import_dump(str(SAMPLE), using=engine)
    used = Transition.objects.using(engine).values_list("upstate_id", flat=True).first()
    orphans = Transition.objects.using(engine).filter(upstate_id=used).count()
    State.objects.using(engine).filter(pk=used).delete()
    report = vi.verify(engine)
    assert not report.ok
    assert counts(report)["transitions whose upper level is missing"] == orphans
    result = run_cli("verify", url=database_url(engine))
    assert result.returncode == 1
    assert "transitions whose upper level is missing" in result.stdout.decode().splitlines()[-1]


def test_a_duplicated_level_row_is_named(engine):
    vi.import_dump(str(SAMPLE), using=engine)
    level = State.objects.using(engine).first()
    level.pk, level.J_scaled = None, 999  # same species, energy and J under another key
    level.save(using=engine)
    report = vi.verify(engine)
    assert failed(report) == {"levels stored twice (species, energy, J)",
                              "levels whose key disagrees with energy or J",
                              "levels used by no transition"}
    assert counts(report)["levels stored twice (species, energy, J)"] == 1


def test_missing_einstein_a_and_ground_states_are_found(engine):
    vi.import_dump(str(SAMPLE), using=engine)
    three = list(Transition.objects.using(engine).exclude(einsteina=None).values_list("pk", flat=True)[:3])
    Transition.objects.using(engine).filter(pk__in=three).update(einsteina=None)
    Species.objects.using(engine).filter(pk=Species.objects.using(engine).exclude(
        ground_state=None).values_list("pk", flat=True).first()).update(ground_state=None)
    report = vi.verify(engine)
    assert failed(report) == {"Einstein A missing where computable",
                              "species whose ground state is not their lowest level"}
    assert counts(report)["Einstein A missing where computable"] == 3
    vi.run_operation("housekeeping", engine)
    assert vi.verify(engine).ok


def test_a_wavelength_that_disagrees_with_its_levels_is_found(engine):
    vi.import_dump(str(SAMPLE), using=engine)
    line = Transition.objects.using(engine).filter(autoionized=False).exclude(waveritz=None).first()
    Transition.objects.using(engine).filter(pk=line.pk).update(waveritz=line.waveritz + 1)
    report = vi.verify(engine)
    assert failed(report) == {"Ritz wavelengths that disagree with level energies"}
    assert counts(report)["Ritz wavelengths that disagree with level energies"] == 1


def test_a_dropped_index_fails_verify_and_check_indexes_fix_restores_it(engine):
    vi.import_dump(str(SAMPLE), using=engine)
    index = next(i for i in Transition._meta.indexes if i.name == "transitions_wave_idx")
    with connections[engine].schema_editor() as editor:
        editor.execute(index.remove_sql(Transition, editor))
    report = vi.verify(engine)
    assert failed(report) == {"declared indexes and constraints missing"}
    assert "transitions_wave_idx" in report.table()
    url = database_url(engine)
    listed = run_cli("check-indexes", url=url)
    assert listed.returncode == 1
    assert "1 of 11 missing: transitions_wave_idx" in listed.stdout.decode()
    fixed = run_cli("check-indexes", "--fix", url=url)
    assert fixed.returncode == 0, fixed.stderr
    assert "created 1 missing: transitions_wave_idx" in fixed.stdout.decode()
    assert "transitions_wave_idx" in live_indexes(engine, "transitions")
    assert vi.verify(engine).ok


def test_the_species_name_index_is_checked_and_restored(engine):
    vi.prepare_database(engine)
    names = [name for name, c in live_constraints(engine, "species").items()
             if c["columns"] == ["name"] and c["index"]]
    assert names  # PostgreSQL also has a *_like index for LIKE queries
    with connections[engine].schema_editor() as editor:
        for name in names:
            editor.execute(models.Index(fields=["name"], name=name).remove_sql(Species, editor))
    assert [d.name for d in vi.missing_indexes(engine)] == ["species.name"]
    report = vi.check_indexes(engine, fix=True)
    assert report.ok and "created 1 missing: species.name" in report.verdict
    assert vi.missing_indexes(engine) == []
    assert any(c["columns"] == ["name"] and c["index"] for c in live_constraints(engine, "species").values())


def test_verify_file_passes_for_the_dump_and_fails_for_one_with_extra_lines(engine, sample_lines, tmp_path):
    vi.import_dump(str(SAMPLE), using=engine)
    assert vi.verify(engine, dump=str(SAMPLE)).ok
    extra = sample_lines[2:4] * 3  # the first record (data and reference line) three times more
    longer = write_dump(tmp_path / "longer.dat", sample_lines + extra)
    result = run_cli("verify", "--file", longer, "--json", url=database_url(engine))
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert not data["ok"]
    row = next(r for r in data["rows"] if r["check"].startswith("species whose transitions differ"))
    species = int(sample_lines[2][30:36])
    stored = Transition.objects.using(engine).filter(species_id=species).count()
    assert row["count"] == 1
    assert row["detail"] == f"species {species}: dump {stored + 3:,}, stored {stored:,}"


def test_verify_file_accounts_for_lines_the_database_refused(engine, sample_lines, tmp_path):
    vi.import_dump(str(SAMPLE), using=engine, reject_file=str(tmp_path / "sample.rejects"))
    first = Transition.objects.using(engine).order_by("id").first()
    Transition.objects.using(engine).filter(pk=first.pk).delete()
    assert not vi.verify(engine, dump=str(SAMPLE)).ok
    raw = sample_lines[2].decode().rstrip("\n")  # the first record's data line
    (tmp_path / "sample.rejects").write_text(f"3\trefused by the database: value too long\t{raw}\n")
    assert ImportRun.objects.using(engine).get().options["reject_file"] == str(tmp_path / "sample.rejects")
    assert vi.verify(engine, dump=str(SAMPLE)).ok


def test_verify_and_check_indexes_through_django(engine, capsys):
    from django.core.management import call_command
    vi.import_dump(str(SAMPLE), using=engine)
    call_command("verify", database=engine)
    assert "all 11 checks passed" in capsys.readouterr().out
    call_command("check_indexes", "--json", database=engine)
    assert json.loads(capsys.readouterr().out)["ok"] is True


def live_constraints(alias, table):
    with connections[alias].cursor() as cursor:
        return connections[alias].introspection.get_constraints(cursor, table)


def live_indexes(alias, table):
    return set(live_constraints(alias, table))
