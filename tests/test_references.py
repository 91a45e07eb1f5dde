"""References: per-quantity keys from reference lines, and the BibTeX file."""
from node_atom.models import State, Transition
from node_common.models import Reference
import valdimport as vi
from tests.conftest import DATA, summary_rows
from tests.lines import data_line, dump

BIBTEX = r"""% references for the tests
@article{Wa,
  author = {M{\"u}ller, J. and Fran{\c c}ois, {\'E}.},
  title = {{Fe} {\sc i} oscillator strengths: 50\% of them},
  journal = {A\&A},
  year = {2001}
}

@misc{WA,
  title = {Another {W}{A} with {nested {braces}}},
  note = {100\% synthetic, ~ and $\alpha$},
  year = 1999
}

@book{K14, title = {Kurucz}, year = {2014}}
@misc{Wa, title = {a duplicate of Wa}}
@article{K14, title = {a repeat that bibtexparser cannot read}
@article{broken, title = {never closed}
"""


def test_reference_keys_are_stored_per_quantity(engine, tmp_path):
    path = tmp_path / "r.dat"
    path.write_bytes(dump((data_line(), "wl:K14,iso:BWL gf:GF le:LE ue:UE La Gr St Wa Ld")))
    vi.import_dump(str(path), using=engine)
    t = Transition.objects.using(engine).get()
    assert (t.wave_ref_id, t.waveritz_ref_id, t.loggf_ref_id) == ("K14,BWL", "LE,UE", "GF")
    assert (t.gammarad_ref_id, t.gammastark_ref_id, t.waals_ref_id) == ("Gr", "St", "Wa")
    lower = State.objects.using(engine).get(pk=t.lostate_id)
    upper = State.objects.using(engine).get(pk=t.upstate_id)
    assert (lower.energy_ref_id, lower.lande_ref_id, lower.level_ref_id) == ("LE", "La", "Ld")
    assert (upper.energy_ref_id, upper.lande_ref_id, upper.level_ref_id) == ("UE", "La", "Ld")
    assert [getattr(t, f"ll{i}") for i in range(1, 10)] == list(range(1, 10))
    assert t.comment == 'a\\b "c" 10%'


def test_keys_differing_in_case_are_two_references_kept_byte_exact(engine, tmp_path):
    path = tmp_path / "refs.bib"
    path.write_text(BIBTEX)
    summary = vi.import_references(str(path), using=engine, reject_file=str(tmp_path / "rej"))
    assert (summary.tally.imported, summary.tally.rejected) == (4, 2)
    stored = dict(Reference.objects.using(engine).values_list("id", "bibtex"))
    assert sorted(stored) == ["K14", "WA", "Wa", "broken"]
    assert stored["K14"] == "@book{K14, title = {Kurucz}, year = {2014}}"
    assert stored["broken"] == "@article{broken, title = {never closed}"  # kept, unreadable
    for key in ("Wa", "WA"):
        start = BIBTEX.index("@", BIBTEX.index("{" + key + ",") - 10)
        assert stored[key] == BIBTEX[start:BIBTEX.index("\n}\n", start) + 2]
    assert "50\\% of them" in stored["Wa"] and "{\\'E}" in stored["Wa"]
    assert Reference.objects.using(engine).get(id="Wa").bibtex != Reference.objects.using(engine).get(id="WA").bibtex
    assert Reference.objects.using(engine).filter(id="wa").count() == 0  # case-sensitive lookups
    rejects = (tmp_path / "rej").read_text().splitlines()
    assert [r.split("\t")[:2] for r in rejects] == [
        ["16", "duplicate key 'Wa'; the first, on line 2, is kept"],
        ["17", "duplicate key 'K14'; the first, on line 15, is kept"]]
    rows = summary_rows(summary.table())
    assert rows["references"] == "4 new, 0 updated, 0 unchanged"
    assert rows["duplicates"] == "2 rejected, the first of each kept: Wa, K14"


def test_rerunning_the_references_changes_nothing(engine):
    first = vi.import_references(str(DATA / "refs.bib"), using=engine)
    before = sorted(Reference.objects.using(engine).values_list("id", "bibtex"))
    again = vi.import_references(str(DATA / "refs.bib"), using=engine)
    assert sorted(Reference.objects.using(engine).values_list("id", "bibtex")) == before
    assert first.tally.imported == 49
    assert summary_rows(again.table())["references"] == "0 new, 0 updated, 49 unchanged"


def test_a_changed_bibtex_file_counts_the_entries_it_changes(engine, tmp_path):
    path = tmp_path / "refs.bib"
    path.write_text(BIBTEX)
    vi.import_references(str(path), using=engine, reject_file=str(tmp_path / "rej"))
    changed = BIBTEX.replace("year = {2014}", "year = {2015}") + "@misc{New1, title = {new}}\n"
    path.write_text(changed)
    summary = vi.import_references(str(path), using=engine, reject_file=str(tmp_path / "rej"))
    assert summary_rows(summary.table())["references"] == "1 new, 1 updated, 3 unchanged"  # Wa, WA, broken
    stored = dict(Reference.objects.using(engine).values_list("id", "bibtex"))
    assert stored["K14"] == "@book{K14, title = {Kurucz}, year = {2015}}"
    assert stored["New1"] == "@misc{New1, title = {new}}"
