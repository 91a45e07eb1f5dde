"""The VAMDC VALD node reads what we import: models declared here the way the node declares its
own (its table and column names, read-only) read every row of every table with all fields.

Written from the column list of the node's current models, with their field types, except
J and the half-integer quantum numbers (5 digits, not 3: molecular J reach 100 and more)
and P (text: molecules have parity + - 0), which SQLite's strict DECIMAL conversion would
refuse in the node's own declaration too.
"""
import xml.etree.ElementTree as ET

from django.db import connections, models

import valdimport as vi
from node_atom.models import State as OurState
from tests.conftest import DATA, SAMPLE, write_ab

DO_NOTHING = models.DO_NOTHING


class NodeModel(models.Model):
    class Meta:
        abstract = True
        managed = False
        app_label = "vamdc_node"


class Species(NodeModel):
    id = models.AutoField(primary_key=True)
    name = models.CharField(max_length=10)
    ion = models.PositiveSmallIntegerField()
    inchi = models.CharField(max_length=32)
    inchikey = models.CharField(max_length=28)
    mass = models.DecimalField(max_digits=8, decimal_places=5)
    massno = models.PositiveSmallIntegerField(null=True)
    ionen = models.DecimalField(max_digits=10, decimal_places=3, null=True)
    solariso = models.DecimalField(max_digits=6, decimal_places=4, null=True)
    ncomp = models.PositiveSmallIntegerField(null=True)
    atomic = models.PositiveSmallIntegerField(null=True)
    isotope = models.PositiveSmallIntegerField(null=True)
    ground_state = models.ForeignKey("State", null=True, on_delete=DO_NOTHING, related_name="+")

    class Meta(NodeModel.Meta):
        db_table = "species"


class SpeciesComp(NodeModel):
    molecule = models.ForeignKey(Species, related_name="molec", on_delete=DO_NOTHING)
    atom = models.ForeignKey(Species, related_name="atom", on_delete=DO_NOTHING)

    class Meta(NodeModel.Meta):
        db_table = "species_components"


class Reference(NodeModel):
    id = models.CharField(max_length=7, primary_key=True)
    bibtex = models.TextField(null=True)
    xml = models.TextField(null=True)

    def XML(self):
        return self.xml

    class Meta(NodeModel.Meta):
        db_table = "refs"


class LineList(NodeModel):
    id = models.PositiveSmallIntegerField(primary_key=True)
    srcfile = models.CharField(max_length=128)
    listtype = models.CharField(max_length=32, null=True)
    method = models.PositiveSmallIntegerField(null=True)

    class Meta(NodeModel.Meta):
        db_table = "linelists"


class State(NodeModel):
    id = models.IntegerField(primary_key=True)
    species = models.ForeignKey(Species, on_delete=DO_NOTHING)
    energy = models.DecimalField(max_digits=15, decimal_places=4, null=True)
    energy_scaled = models.BigIntegerField(null=True)
    lande = models.DecimalField(max_digits=6, decimal_places=2, null=True)
    config = models.CharField(max_length=86, null=True)
    term = models.CharField(max_length=86, null=True)
    hfs_a = models.FloatField(null=True, db_column="hfs_A")
    hfs_a_error = models.FloatField(null=True, db_column="hfs_dA")
    hfs_b = models.FloatField(null=True, db_column="hfs_B")
    hfs_b_error = models.FloatField(null=True, db_column="hfs_dB")
    energy_ref_id = models.CharField(max_length=7, null=True)
    lande_ref_id = models.CharField(max_length=7, null=True)
    level_ref_id = models.CharField(max_length=7, null=True)
    energy_method = models.PositiveSmallIntegerField(null=True)
    j = models.DecimalField(max_digits=5, decimal_places=1, db_column="J", null=True)
    s = models.DecimalField(max_digits=5, decimal_places=1, db_column="S", null=True)
    p = models.CharField(max_length=1, db_column="P", null=True)  # parity: 1, 2, or + - 0
    n = models.PositiveSmallIntegerField(db_column="n", null=True)
    l = models.PositiveSmallIntegerField(db_column="L", null=True)  # noqa: E741 (the node's name)
    j1 = models.DecimalField(max_digits=5, decimal_places=1, db_column="J1", null=True)
    j2 = models.DecimalField(max_digits=5, decimal_places=1, db_column="J2", null=True)
    k = models.DecimalField(max_digits=5, decimal_places=1, db_column="K", null=True)
    s2 = models.DecimalField(max_digits=5, decimal_places=1, db_column="S2", null=True)
    jc = models.DecimalField(max_digits=5, decimal_places=1, db_column="Jc", null=True)
    sn = models.PositiveSmallIntegerField(db_column="Sn", null=True)
    v = models.PositiveSmallIntegerField(db_column="v", null=True)
    Lambda = models.PositiveSmallIntegerField(db_column="Lambda", null=True)
    Sigma = models.DecimalField(max_digits=5, decimal_places=1, db_column="Sigma", null=True)
    Omega = models.DecimalField(max_digits=5, decimal_places=1, db_column="Omega", null=True)
    rotN = models.PositiveSmallIntegerField(db_column="rotN", null=True)
    elecstate = models.CharField(max_length=10, null=True)
    coupling_case = models.CharField(max_length=2, null=True)
    kronig_parity = models.CharField(max_length=1, null=True)
    elec_inversion = models.CharField(max_length=1, null=True)
    asSym = models.CharField(max_length=1, db_column="asSym", null=True)

    class Meta(NodeModel.Meta):
        db_table = "states"


class Transition(NodeModel):
    id = models.AutoField(primary_key=True)
    upstate = models.ForeignKey(State, related_name="isupperstate_trans", db_column="upstate",
                                null=True, on_delete=DO_NOTHING)
    lostate = models.ForeignKey(State, related_name="islowerstate_trans", db_column="lostate",
                                null=True, on_delete=DO_NOTHING)
    wave = models.DecimalField(max_digits=16, decimal_places=8)
    waveritz = models.DecimalField(max_digits=16, decimal_places=8, null=True)
    species = models.ForeignKey(Species, on_delete=DO_NOTHING)
    loggf = models.DecimalField(max_digits=8, decimal_places=3, null=True)
    einsteina = models.FloatField(null=True)
    gammarad = models.DecimalField(max_digits=6, decimal_places=3, null=True)
    gammastark = models.DecimalField(max_digits=7, decimal_places=3, null=True)
    gammawaals = models.DecimalField(max_digits=7, decimal_places=3, null=True)
    sigmawaals = models.PositiveSmallIntegerField(null=True)
    alphawaals = models.DecimalField(max_digits=6, decimal_places=3, null=True)
    accurflag = models.CharField(max_length=1, null=True)
    accur = models.CharField(max_length=10, null=True)
    loggf_err = models.DecimalField(max_digits=6, decimal_places=3, null=True)
    wave_ref_id = models.CharField(max_length=7, null=True)
    waveritz_ref_id = models.CharField(max_length=7, null=True)
    loggf_ref_id = models.CharField(max_length=7, null=True)
    gammarad_ref_id = models.CharField(max_length=7, null=True)
    gammastark_ref_id = models.CharField(max_length=7, null=True)
    waals_ref_id = models.CharField(max_length=7, null=True)
    transition_type = models.CharField(max_length=2, null=True)
    autoionized = models.BooleanField(default=False, null=True)
    wave_method = models.PositiveSmallIntegerField(null=True)

    class Meta(NodeModel.Meta):
        db_table = "transitions"


NODE_MODELS = (Species, SpeciesComp, Reference, LineList, State, Transition)


def import_everything(alias, tmp_path):
    """The full sequence for a new node, ending with references and hyperfine constants."""
    vi.import_species(str(DATA / "species.csv"), using=alias)
    vi.import_linelists(str(DATA / "linelists.dat"), using=alias)
    vi.import_references(str(DATA / "refs.bib"), using=alias)
    vi.import_dump(str(SAMPLE), using=alias)
    levels = OurState.objects.using(alias).exclude(J=None).order_by("id")[:20]
    rows = [(i, s.species_id, float(s.energy) + 0.01, float(s.J), s.term, 10.0 + i, 0.5, -i, None)
            for i, s in enumerate(levels, 1)]
    vi.import_hfs(str(write_ab(tmp_path / "AB.db", rows)), using=alias)
    return {s.pk: (10.0 + i, 0.5, float(-i), None) for i, s in enumerate(levels, 1)}


def test_the_node_models_read_every_table_with_all_fields(engine, tmp_path):
    hyperfine = import_everything(engine, tmp_path)
    with_constants = {}
    for model in NODE_MODELS:
        rows = list(model.objects.using(engine).all())
        assert rows, model.__name__
        with connections[engine].cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {model._meta.db_table}")
            assert len(rows) == cursor.fetchone()[0]
        for row in rows:
            values = [getattr(row, f.attname) for f in model._meta.concrete_fields]
            assert values[0] is not None
            if model is State and row.hfs_a is not None:
                with_constants[row.pk] = (row.hfs_a, row.hfs_a_error, row.hfs_b, row.hfs_b_error)
    assert with_constants == hyperfine
    for reference in Reference.objects.using(engine).all():
        source = ET.fromstring(reference.XML())
        assert (source.tag, source.get("sourceID")) == ("Source", f"Bvald-{reference.pk}")
    # (the node's Species.components goes through species_components: these models are not in
    # an installed app, so only their forward relations work)
    parts = SpeciesComp.objects.using(engine).select_related("molecule", "atom")
    assert all(p.molecule.pk >= 10000 > p.atom.pk for p in parts)
    line = Transition.objects.using(engine).select_related("upstate", "lostate", "species").first()
    assert line.upstate.species_id == line.lostate.species_id == line.species.pk
