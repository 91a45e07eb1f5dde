"""XSAMS <Source> elements of the references: built from the BibTeX, stored in refs.xml."""
import xml.etree.ElementTree as ET

import pytest
from django.test import override_settings

import valdimport as vi
from node_common.models import Reference
from tests.conftest import DATA, database_url, run_cli, summary_rows

ARTICLE = r"""@article{Wa,
  author = {M{\"u}ller, J. and Fran{\c c}ois, {\'E}. and {Den Hartog}, E. A. and van der Berg, Jr, Jan},
  title = {{Fe} {\sc i} oscillator strengths:
           50\% of them, $\alpha$ < 3 \& {W}{A}~lines},
  journal = {A\&A},
  year = {2001},
  volume = {373},
  pages = {L12--L15},
  url = {https://example.org/find?q=a_b%20c&x=1},
  doi = {10.1051/0004-6361\_20010001}
}"""
BOOK = "@book{K14, author = {Kurucz, R. L.}, title = {Atomic data {\\&} <tables>}, publisher = {SAO}, year = 2014}"
MISC = "@misc{WA, title = {Private communication}, year = {1999}, note = {by e-mail}}"
NO_FIELDS = "@article{Bare, title = {Only a title}}"
BROKEN = "@article{broken, title = {never closed}"
NAMES = "@unpublished{Names, author = {Smith, J., Jr., Sir}, title = {Too many commas}}"
NOT_AN_ENTRY = "@article{ = no key}"


def parsed(bibtex, key, node="vald"):
    text, readable = vi.source_xml(key, bibtex, node)
    return ET.fromstring(text), readable


def children(element):
    return [(child.tag, child.text) for child in element if child.tag not in ("Authors", "BibTeX")]


def authors(element):
    return [name.text for name in element.findall("Authors/Author/Name")]


def test_an_article_with_accents_ampersands_and_braces():
    source, readable = parsed(ARTICLE, "Wa")
    assert readable and source.tag == "Source" and source.attrib == {"sourceID": "Bvald-Wa"}
    assert [child.tag for child in source] == [
        "Authors", "Title", "Category", "Year", "SourceName", "Volume", "PageBegin", "PageEnd",
        "UniformResourceIdentifier", "DigitalObjectIdentifier", "BibTeX"]
    assert authors(source) == ["J. Müller", "É. François", "E. A. Den Hartog", "Jan van der Berg Jr"]
    assert children(source) == [
        ("Title", "Fe i oscillator strengths: 50% of them, $\\alpha$ < 3 & WA lines"),
        ("Category", "journal"), ("Year", "2001"), ("SourceName", "A&A"), ("Volume", "373"),
        ("PageBegin", "12"), ("PageEnd", "15"),
        ("UniformResourceIdentifier", "https://example.org/find?q=a_b%20c&x=1"),
        ("DigitalObjectIdentifier", "10.1051/0004-6361_20010001")]
    assert source.find("BibTeX").text == ARTICLE  # the entry itself, every character


def test_a_book_and_a_misc_entry():
    book, readable = parsed(BOOK, "K14")
    assert readable and authors(book) == ["R. L. Kurucz"]
    assert children(book) == [("Title", "Atomic data & <tables>"), ("Category", "book"), ("Year", "2014")]
    misc, readable = parsed(MISC, "WA", node="uu")
    assert readable and misc.get("sourceID") == "Buu-WA" and authors(misc) == []
    assert children(misc) == [("Title", "Private communication"), ("Category", "private communication"),
                              ("Year", "1999")]


@pytest.mark.parametrize("entry_type, category", [
    ("article", "journal"), ("book", "book"), ("techreport", "report"),
    ("inproceedings", "proceedings"), ("phdthesis", "thesis"), ("misc", "private communication"),
    ("unpublished", "private communication"), ("ARTICLE", "journal")])
def test_the_category_follows_the_entry_type(entry_type, category):
    source, _ = parsed(f"@{entry_type}{{k, title = {{t}}}}", "k")
    assert source.find("Category").text == category


def test_missing_fields_leave_their_elements_out():
    source, readable = parsed(NO_FIELDS, "Bare")
    assert readable and [child.tag for child in source] == ["Authors", "Title", "Category", "BibTeX"]
    assert source.find("Authors").text is None and list(source.find("Authors")) == []


@pytest.mark.parametrize("bibtex, key", [(BROKEN, "broken"), (NAMES, "Names"), ("", "empty")])
def test_an_entry_that_cannot_be_read_gets_its_key_and_text(bibtex, key):
    source, readable = parsed(bibtex, key)
    assert not readable
    assert source.get("sourceID") == f"Bvald-{key}"
    category = {BROKEN: [("Category", "journal")],  # the type can be read
                NAMES: [("Category", "private communication")]}.get(bibtex, [])
    assert [(child.tag, child.text) for child in source] == [
        ("Authors", None), *category, ("BibTeX", bibtex or None)]


def test_characters_xml_cannot_hold_are_replaced():
    bibtex = "@misc{C, title = {bell\x07 and\x0cform feed}}"
    source, readable = parsed(bibtex, "C")
    assert readable and source.find("Title").text == "bell\ufffd and form feed"  # \x0c is a blank
    assert source.find("BibTeX").text == bibtex.replace("\x07", "\ufffd").replace("\x0c", "\ufffd")


def test_import_references_stores_a_source_for_every_entry(engine, tmp_path):
    path = tmp_path / "refs.bib"
    path.write_text("\n\n".join([ARTICLE, BOOK, MISC, NAMES, BROKEN, NOT_AN_ENTRY]) + "\n")
    summary = vi.import_references(str(path), using=engine, reject_file=str(tmp_path / "rej"))
    assert (summary.tally.imported, summary.tally.rejected) == (5, 1)
    assert summary_rows(summary.table())["XSAMS sources"] == (
        "5 for node 'vald', 2 minimal (fields not readable: Names, broken)")
    assert "not a BibTeX entry" in (tmp_path / "rej").read_text()  # no key to store it under
    stored = dict(Reference.objects.using(engine).values_list("id", "xml"))
    assert sorted(stored) == ["K14", "Names", "WA", "Wa", "broken"]
    broken = ET.fromstring(stored["broken"])
    assert [(child.tag, child.text) for child in broken] == [
        ("Authors", None), ("Category", "journal"), ("BibTeX", BROKEN)]
    for key, xml in stored.items():
        source = ET.fromstring(xml)
        assert source.get("sourceID") == f"Bvald-{key}"
        assert source.find("BibTeX").text == Reference.objects.using(engine).get(pk=key).bibtex
    assert ET.fromstring(stored["Wa"]).find("SourceName").text == "A&A"
    assert ET.fromstring(stored["Names"]).find("Category").text == "private communication"


def test_the_node_id_setting_and_rebuilding_the_sources(engine, monkeypatch):
    vi.import_references(str(DATA / "refs.bib"), using=engine)
    references = Reference.objects.using(engine)
    count = references.count()
    assert all(xml.startswith('<Source sourceID="Bvald-') for xml in references.values_list("xml", flat=True))
    check = "references without the XSAMS source of this node"
    with override_settings(VALD_NODE_ID="uu"):
        assert {c.name: c.count for c in vi.database_checks(engine)}[check] == count
        report = vi.run_operation("housekeeping", engine, vi.ImportOptions(rebuild_xml=True))
        assert report.rows[0][:2] == ("XSAMS sources", f"{count:,}")
        assert {c.name: c.count for c in vi.database_checks(engine)}[check] == 0
        again = vi.run_operation("housekeeping", engine, vi.ImportOptions(rebuild_xml=True))
        assert again.rows[0][:2] == ("XSAMS sources", "0")  # nothing left to change
    for key, xml in references.values_list("id", "xml"):
        assert ET.fromstring(xml).get("sourceID") == f"Buu-{key}"
    references.filter(pk=references.first().pk).update(xml=None)
    monkeypatch.setenv("VALD_NODE_ID", "uu")  # settings_dev reads it
    result = run_cli("verify", url=database_url(engine))
    assert f"{check}" in result.stdout.decode().splitlines()[-1]
    fixed = run_cli("housekeeping", "--rebuild-xml", url=database_url(engine))
    assert fixed.returncode == 0, fixed.stderr
    with override_settings(VALD_NODE_ID="uu"):
        assert {c.name: c.count for c in vi.database_checks(engine)}[check] == 0


def test_a_node_id_that_cannot_be_part_of_a_source_id_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("VALD_NODE_ID", "my node")
    result = run_cli("import-references", "--file", DATA / "refs.bib", url=f"sqlite:///{tmp_path}/n.sqlite3")
    assert result.returncode == 2
    assert result.stderr.decode().strip() == (
        "valdimport: error: VALD_NODE_ID 'my node' cannot be part of an XSAMS source id: "
        "give one word without blanks (the default is vald)")
