"""import-species: the VALD species list, molecules' components, placeholders filled in."""
from node_common.models import Species, SpeciesComponent
import valdimport as vi
from tests.conftest import summary_rows
from tests.lines import data_line, dump

SPECIES_CSV = """#VER 2026-11-23 test list
Use,Index,Name,Charge,InChI,InChIkey,Mass,Ion. en.,Fract.,Num. comp.,N1,N2,N3,N4,Dummy
1,601,C 1,0,InChI=1S/C,OKTJSMMVPCPJKN-UHFFFAOYSA-N,12.0110,11.260,1.000,1,601,0,0,0,0
1,801,O 1,0,InChI=1S/O,QVGXLLKOCUKJST-UHFFFAOYSA-N,15.9990,13.618,1.000,1,801,0,0,0,0
1,2601,Fe 1,0,InChI=1S/Fe,XEEYBQQBJWHFJM-UHFFFAOYSA-N,55.8450,7.902,1.000,1,2601,0,0,0,0
1,2602,Fe 2,1,InChI=1S/Fe/q+1,XEEYBQQBJWHFJM-UHFFFAOYSA-O,55.8450,16.199,1.000,1,2602,0,0,0,0
1,10001,CO,0,"InChI=1S/CO/c1-2",UGFAIRIUMAVXCW-UHFFFAOYSA-N,28.0100,14.014,0.987,2,601,801,0,0,0
1,10003,C2,0,"InChI=1S/C2/c1-2,3",QSHDDOUJBYECFT-UHFFFAOYSA-N,24.0220,11.400,1.000,2,601,601,0,0,0
1,10099,X2Y,0,"InChI=1S/X,Y",,40.0000,,,3,2601,2602,2601,0,0
1,abc,Broken,0,InChI=1S/?,,1,1,1,1,0,0,0,0,0
"""


def write_species(tmp_path, text=SPECIES_CSV):
    path = tmp_path / "VALD_list_of_species.csv"
    path.write_text(text)
    return str(path)


def species_state(alias):
    return (list(Species.objects.using(alias).order_by("id").values_list()),
            list(SpeciesComponent.objects.using(alias).order_by("id").values_list()))


def test_species_rows_with_quoted_commas_and_components(engine, tmp_path):
    summary = vi.import_species(write_species(tmp_path), using=engine,
                                reject_file=str(tmp_path / "species.rejects"))
    assert (summary.tally.imported, summary.tally.rejected) == (7, 1)
    assert summary.tally.skipped == {"comment": 1, "header": 1}
    assert (tmp_path / "species.rejects").read_text().startswith("10\tbad species row: invalid literal")
    co = Species.objects.using(engine).get(pk=10001)
    assert (co.name, co.ion, co.inchi, co.ncomp, co.atomic) == ("CO", 0, "InChI=1S/CO/c1-2", 2, None)
    assert Species.objects.using(engine).get(pk=10003).inchi == "InChI=1S/C2/c1-2,3"
    fe2 = Species.objects.using(engine).get(pk=2602)
    assert (fe2.name, fe2.ion, fe2.atomic, fe2.massno, fe2.mass, fe2.ionen) == ("Fe 2", 1, 26, 56, 55.845, 16.199)
    assert fe2.inchikey == "XEEYBQQBJWHFJM-UHFFFAOYSA-O" and fe2.solariso == 1.0
    components = list(SpeciesComponent.objects.using(engine).order_by("molecule_id", "position")
                      .values_list("molecule_id", "position", "atom_id"))
    assert components == [(10001, 1, 601), (10001, 2, 801), (10003, 1, 601), (10003, 2, 601),
                          (10099, 1, 2601), (10099, 2, 2602), (10099, 3, 2601)]
    assert summary_rows(summary.table())["species"] == "7 new, 0 updated, 0 unchanged"


def test_placeholders_from_the_data_get_filled_in(engine, tmp_path):
    dump_path = tmp_path / "d.dat"
    dump_path.write_bytes(dump(data_line(species="  2601"), data_line(species=" 10001")))
    data = vi.import_dump(str(dump_path), using=engine)
    assert data.tally.species_created == [2601, 10001]
    ground = Species.objects.using(engine).get(pk=2601).ground_state_id
    assert ground is not None and Species.objects.using(engine).get(pk=2601).name is None
    summary = vi.import_species(write_species(tmp_path), using=engine)
    assert summary_rows(summary.table())["species"] == "5 new, 2 updated, 0 unchanged"
    fe = Species.objects.using(engine).get(pk=2601)
    assert (fe.name, fe.atomic, fe.ground_state_id) == ("Fe 1", 26, ground)


def test_rerunning_the_species_list_changes_nothing(engine, tmp_path):
    path = write_species(tmp_path)
    vi.import_species(path, using=engine)
    before = species_state(engine)
    again = vi.import_species(path, using=engine)
    assert species_state(engine) == before
    assert summary_rows(again.table())["species"] == "0 new, 0 updated, 7 unchanged"


def test_a_changed_species_list_updates_rows_and_components(engine, tmp_path):
    vi.import_species(write_species(tmp_path), using=engine)
    changed = SPECIES_CSV.replace("1,10003,C2,0", "1,10003,C2 renamed,0").replace(
        "3,2601,2602,2601,0,0", "2,2601,2602,0,0,0")
    summary = vi.import_species(write_species(tmp_path, changed), using=engine)
    assert summary_rows(summary.table())["species"] == "0 new, 2 updated, 5 unchanged"
    assert Species.objects.using(engine).get(pk=10003).name == "C2 renamed"
    assert list(SpeciesComponent.objects.using(engine).filter(molecule_id=10099)
                .order_by("position").values_list("atom_id", flat=True)) == [2601, 2602]


def test_missing_component_atoms_become_placeholders(engine, tmp_path):
    text = "\n".join(SPECIES_CSV.splitlines()[:2] + [
        '1,10005,OH,0,"InChI=1S/HO/h1H",,17.0,13.0,1.0,2,801,101,0,0,0'])
    summary = vi.import_species(write_species(tmp_path, text + "\n"), using=engine)
    assert summary.tally.species_created == [101, 801]
    assert Species.objects.using(engine).filter(pk__in=[101, 801], name=None).count() == 2


def test_a_repeated_species_index_keeps_the_first_row(engine, tmp_path):
    repeated = SPECIES_CSV + "1,2601,Fe repeated,0,InChI=1S/Fe,,55.8450,7.902,1.000,1,2601,0,0,0,0\n"
    summary = vi.import_species(write_species(tmp_path, repeated), using=engine,
                                reject_file=str(tmp_path / "species.rejects"))
    assert (summary.tally.imported, summary.tally.rejected) == (7, 2)
    assert Species.objects.using(engine).get(pk=2601).name == "Fe 1"
    rejects = (tmp_path / "species.rejects").read_text().splitlines()
    assert rejects[1].split("\t")[:2] == ["11", "duplicate species index 2601; the first, on line 5, is kept"]
    assert summary_rows(summary.table())["duplicates"] == "1 rejected, the first of each kept: 2601"
