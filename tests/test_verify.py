"""verify and check-indexes: pass on a fresh import, name each kind of damage, restore indexes."""
import json

import pytest
from django.db import connections, models

import valdimport as vi
from node_atom.models import State, Transition
from node_common.models import ImportRun, Species
from tests.conftest import DATA, SAMPLE, database_url, run_cli, scalar, write_dump
from tests.lines import data_line, dump


def counts(report):
    return {row["check"]: row["count"] for row in report.as_dict()["rows"]}


def failed(report):
    return {row["check"] for row in report.as_dict()["rows"] if not row["ok"]}


def details(report):
    return {row["check"]: row["detail"] for row in report.as_dict()["rows"]}


def import_sample(alias):
    """The sample and the references it names: what verify needs to pass."""
    vi.import_references(str(DATA / "refs.bib"), using=alias)
    vi.import_dump(str(SAMPLE), using=alias)


def named_level(state):
    return (f"level {state.pk} (species {state.species_id}, energy {state.energy:.4f}, "
            f"J {'unknown' if state.J is None else f'{state.J:.1f}'})")


def named_transition(t):
    return f"transition {t.pk} (species {t.species_id}, wave {t.wave:.5f})"


def test_verify_passes_on_a_fresh_import(engine):
    import_sample(engine)
    report = vi.verify(engine, dump=str(SAMPLE))
    assert report.ok, report.table()
    assert len(counts(report)) == 15 and set(counts(report).values()) == {0}
    assert set(details(report).values()) == {""}
    result = run_cli("verify", "--file", SAMPLE, url=database_url(engine))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().rstrip().endswith("all 15 checks passed")


def test_deleting_a_used_level_leaves_orphan_transitions(engine):
    import_sample(engine)
    used = Transition.objects.using(engine).values_list("upstate_id", flat=True).first()
    orphans = list(Transition.objects.using(engine).filter(upstate_id=used).order_by("id"))
    assert len(orphans) >= 1
    State.objects.using(engine).filter(pk=used).delete()
    report = vi.verify(engine)
    assert not report.ok
    assert counts(report)["transitions whose upper level is missing"] == len(orphans)
    assert details(report)["transitions whose upper level is missing"] == "; ".join(
        named_transition(t) for t in orphans[:5]) + (f" and {len(orphans) - 5} more" if len(orphans) > 5 else "")
    result = run_cli("verify", url=database_url(engine))
    assert result.returncode == 1
    assert "transitions whose upper level is missing" in result.stdout.decode().splitlines()[-1]
    assert named_transition(orphans[0]) in result.stdout.decode()


def test_a_duplicated_level_row_is_named(engine):
    import_sample(engine)
    level = State.objects.using(engine).order_by("id").first()
    level.pk, level.J_scaled = None, 999  # same species, energy and J under another key
    level.save(using=engine)
    report = vi.verify(engine)
    assert failed(report) == {"levels stored twice (species, energy, J)",
                              "levels whose key disagrees with energy or J",
                              "levels used by no transition"}
    assert counts(report)["levels stored twice (species, energy, J)"] == 1
    j = "unknown" if level.J is None else f"{level.J:.1f}"
    assert details(report)["levels stored twice (species, energy, J)"] == (
        f"species {level.species_id}, energy {level.energy:.4f}, J {j}: 2 rows")
    assert details(report)["levels whose key disagrees with energy or J"] == named_level(level)
    assert details(report)["levels used by no transition"] == named_level(level)


def test_missing_einstein_a_and_ground_states_are_found(engine):
    import_sample(engine)
    seven = list(Transition.objects.using(engine).exclude(einsteina=None).order_by("id")[:7])
    Transition.objects.using(engine).filter(pk__in=[t.pk for t in seven]).update(einsteina=None)
    species = Species.objects.using(engine).exclude(ground_state=None).order_by("id").first()
    Species.objects.using(engine).filter(pk=species.pk).update(ground_state=None)
    report = vi.verify(engine)
    assert failed(report) == {"Einstein A missing where computable",
                              "species whose ground state is not their lowest level"}
    assert counts(report)["Einstein A missing where computable"] == 7
    assert details(report)["Einstein A missing where computable"] == "; ".join(
        named_transition(t) for t in seven[:5]) + " and 2 more"
    assert details(report)["species whose ground state is not their lowest level"] == f"species {species.pk}"
    vi.run_operation("housekeeping", engine)
    assert vi.verify(engine).ok


def test_a_wavelength_that_disagrees_with_its_levels_is_found(engine):
    import_sample(engine)
    line = Transition.objects.using(engine).filter(autoionized=False).exclude(waveritz=None).first()
    Transition.objects.using(engine).filter(pk=line.pk).update(waveritz=line.waveritz + 1)
    report = vi.verify(engine)
    assert failed(report) == {"Ritz wavelengths that disagree with level energies"}
    assert counts(report)["Ritz wavelengths that disagree with level energies"] == 1
    lower = State.objects.using(engine).get(pk=line.lostate_id)
    upper = State.objects.using(engine).get(pk=line.upstate_id)
    assert details(report)["Ritz wavelengths that disagree with level energies"] == (
        f"transition {line.pk} (species {line.species_id}, waveritz {line.waveritz + 1:.5f}, "
        f"levels {lower.energy:.4f} and {upper.energy:.4f})")


def test_levels_whose_species_is_missing_are_named(engine):
    import_sample(engine)
    level = State.objects.using(engine).order_by("id").first()
    Species.objects.using(engine).filter(pk=level.species_id).delete()
    on_species = list(State.objects.using(engine).filter(species_id=level.species_id).order_by("id"))
    report = vi.verify(engine)
    assert counts(report)["levels whose species is missing"] == len(on_species)
    assert details(report)["levels whose species is missing"].startswith(
        "; ".join(named_level(s) for s in on_species[:5]))


REFS_BIB = "@misc{SR, title={a}}\n@misc{Wa, title={b}}\n@misc{K14, title={c}}\n"


def test_reference_keys_refs_lacks_are_counted_per_quantity(engine, tmp_path):
    (tmp_path / "refs.bib").write_text(REFS_BIB)
    vi.import_references(str(tmp_path / "refs.bib"), using=engine)
    no_ritz = " " * 15
    path = write_dump(tmp_path / "r.dat", [dump(
        (data_line(ritz=no_ritz), "wl:SR+Sm gf:K14 K14 K14 Wa K14 K14 K14 K14"),
        (data_line(ritz=no_ritz, upper_energy="    30000.0000"), "wl:SR gf:K14+Xy K14 K14 WA K14 K14 K14 K14"),
        (data_line(ritz=no_ritz, upper_energy="    31000.0000"),
         "wl:Sm,iso:SR gf:K14 K14 K14 Wa K14 K14 K14 K14"))])
    vi.import_dump(str(path), using=engine)
    assert list(Transition.objects.using(engine).order_by("id").values_list("wave_ref_id", flat=True)) == [
        "SR,Sm", "SR", "Sm,SR"]
    report = vi.verify(engine)
    name = "reference keys missing from refs (rows, per quantity)"
    assert failed(report) == {name}
    assert counts(report)[name] == 2 + 1 + 1  # wave: 2 rows, loggf: 1, lande: 1 (WA is not Wa)
    assert details(report)[name] == "wave_ref_id 2 rows (Sm); loggf_ref_id 1 row (Xy); lande_ref_id 1 row (WA)"
    (tmp_path / "refs.bib").write_text(REFS_BIB + "@misc{Sm, title={d}}\n@misc{Xy, title={e}}\n"
                                                   "@misc{WA, title={f}}\n")
    vi.import_references(str(tmp_path / "refs.bib"), using=engine)
    assert vi.verify(engine).ok


def test_a_dropped_index_fails_verify_and_check_indexes_fix_restores_it(engine):
    import_sample(engine)
    index = next(i for i in Transition._meta.indexes if i.name == "transitions_wave_idx")
    with connections[engine].schema_editor() as editor:
        editor.execute(index.remove_sql(Transition, editor))
    report = vi.verify(engine)
    assert failed(report) == {"declared indexes and constraints missing"}
    assert "transitions_wave_idx" in report.table()
    url = database_url(engine)
    listed = run_cli("check-indexes", url=url)
    assert listed.returncode == 1
    assert "1 of 10 missing: transitions_wave_idx" in listed.stdout.decode()
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
    import_sample(engine)
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
    vi.import_references(str(DATA / "refs.bib"), using=engine)
    vi.import_dump(str(SAMPLE), using=engine, reject_file=str(tmp_path / "sample.rejects"))
    first = Transition.objects.using(engine).order_by("id").first()
    Transition.objects.using(engine).filter(pk=first.pk).delete()
    assert not vi.verify(engine, dump=str(SAMPLE)).ok
    raw = sample_lines[2].decode().rstrip("\n")  # the first record's data line
    (tmp_path / "sample.rejects").write_text(f"3\trefused by the database: value too long\t{raw}\n")
    assert ImportRun.objects.using(engine).get(command="import").options["reject_file"] == str(
        tmp_path / "sample.rejects")
    assert vi.verify(engine, dump=str(SAMPLE)).ok


def test_verify_and_check_indexes_through_django(engine, capsys):
    from django.core.management import call_command
    import_sample(engine)
    call_command("verify", database=engine)
    assert "all 14 checks passed" in capsys.readouterr().out
    call_command("check_indexes", "--json", database=engine)
    assert json.loads(capsys.readouterr().out)["ok"] is True


def live_constraints(alias, table):
    with connections[alias].cursor() as cursor:
        return connections[alias].introspection.get_constraints(cursor, table)


def live_indexes(alias, table):
    return set(live_constraints(alias, table))


TABLES = {"sqlite": "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
          "postgresql": "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
          "mysql": "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE()"}


@pytest.mark.parametrize("command", ["verify", "check-indexes", "runs"])
def test_read_only_commands_never_create_a_database_or_its_tables(engine, empty_database, command,
                                                                  tmp_path):
    """A mistyped SQLite path, an empty PostgreSQL or MySQL database: said, not created."""
    result = run_cli(command, url=empty_database, cwd=tmp_path)
    err = result.stderr.decode()
    assert result.returncode == 2 and err.count("\n") == 1 and "Traceback" not in err
    vendor = connections[engine].vendor
    if vendor == "sqlite":
        assert f"there is no SQLite database {tmp_path}/empty.sqlite3" in err
        assert list(tmp_path.iterdir()) == []
        (tmp_path / "empty.sqlite3").touch()  # a file that is no database yet
        result = run_cli(command, url=empty_database, cwd=tmp_path)
        assert result.returncode == 2
        err = result.stderr.decode()
    assert "holds no valdimport tables" in err
    assert scalar(empty_database, TABLES[vendor]) == 0
