"""Energy levels (states) and transitions (node_atom).

Decimal columns keep exactly the precision the dump prints (F15.5 wavelengths,
F14.4 energies, F8.3/F7.3 log values, F7.2 Landé factors), sized so that any
value the Fortran format can print fits. Foreign keys are not enforced by the
database (``db_constraint=False``): the importer guarantees them and
``valdimport verify`` checks them; enforcing them row by row would cost a
large share of the import time on 255 million rows.
"""
from django.db import models

from node_common.fields import CaseSensitiveCharField
from node_common.models import REF_KEY_LENGTH, ImportRun, Species

UNKNOWN_J = -1
"""``J_scaled`` of a level whose J is unknown (``J`` is NULL)."""


def _ref_field():
    return CaseSensitiveCharField(max_length=REF_KEY_LENGTH, null=True)


def _no_constraint_fk(to, **kwargs):
    kwargs.setdefault("related_name", "+")
    return models.ForeignKey(to, on_delete=models.DO_NOTHING, db_constraint=False,
                             db_index=False, **kwargs)


class State(models.Model):
    """One distinct energy level, identified by (species, energy_scaled, J_scaled)."""

    species = _no_constraint_fk(Species, related_name="states")
    energy = models.DecimalField(max_digits=13, decimal_places=4)
    energy_scaled = models.BigIntegerField(help_text="energy x 10^4, from the printed digits")
    J = models.DecimalField(max_digits=5, decimal_places=1, null=True, db_column="J")
    J_scaled = models.IntegerField(db_column="J_scaled",
                                   help_text="J x 10, or -1 when J is unknown")
    lande = models.DecimalField(max_digits=6, decimal_places=2, null=True)
    term_desc = models.CharField(max_length=86, null=True)
    config = models.CharField(max_length=86, null=True)
    term = models.CharField(max_length=86, null=True)
    energy_method = models.SmallIntegerField(null=True)
    energy_linelist_id = models.SmallIntegerField(
        null=True, help_text="line list of the energy (ll3 or ll4 of the first line naming the level)")
    energy_ref_id = _ref_field()
    lande_ref_id = _ref_field()
    level_ref_id = _ref_field()
    # quantum numbers, decoded from term_desc
    S = models.FloatField(null=True, db_column="S")
    L = models.SmallIntegerField(null=True, db_column="L")
    P = models.CharField(max_length=1, null=True, db_column="P",
                         help_text="atoms: 1 odd, 2 even; molecules: total parity + - 0")
    J1 = models.FloatField(null=True, db_column="J1")
    J2 = models.FloatField(null=True, db_column="J2")
    K = models.FloatField(null=True, db_column="K")
    S2 = models.FloatField(null=True, db_column="S2")
    Jc = models.FloatField(null=True, db_column="Jc")
    Sn = models.SmallIntegerField(null=True, db_column="Sn")
    n = models.SmallIntegerField(null=True)
    v = models.SmallIntegerField(null=True)
    Lambda = models.SmallIntegerField(null=True, db_column="Lambda")
    Sigma = models.FloatField(null=True, db_column="Sigma")
    Omega = models.FloatField(null=True, db_column="Omega")
    rotN = models.SmallIntegerField(null=True, db_column="rotN")
    elecstate = models.CharField(max_length=32, null=True)
    coupling_case = models.CharField(max_length=8, null=True)
    kronig_parity = models.CharField(max_length=1, null=True)
    elec_inversion = models.CharField(max_length=1, null=True)
    asSym = models.CharField(max_length=1, null=True, db_column="asSym")
    # hyperfine constants A and B and their uncertainties, as the AB file gives them (import-hfs)
    hfs_A = models.FloatField(null=True, db_column="hfs_A")
    hfs_dA = models.FloatField(null=True, db_column="hfs_dA")
    hfs_B = models.FloatField(null=True, db_column="hfs_B")
    hfs_dB = models.FloatField(null=True, db_column="hfs_dB")
    run = _no_constraint_fk(ImportRun, null=True)

    class Meta:
        db_table = "states"
        constraints = [models.UniqueConstraint(
            fields=["species", "energy_scaled", "J_scaled"], name="states_level_unique")]


class HyperfineMatch(models.Model):
    """Which row of the hyperfine (AB) file gave a level its constants, in the last import-hfs.

    import-hfs replaces the whole table; ``verify`` compares the constants of
    every level with it.
    """

    state = models.OneToOneField(State, primary_key=True, on_delete=models.DO_NOTHING,
                                 db_constraint=False, related_name="+")
    ab_id = models.BigIntegerField(help_text="ID of the row in table AB")
    candidates = models.SmallIntegerField(help_text="levels within the tolerance (> 1: ambiguous)")
    hfs_A = models.FloatField(null=True, db_column="hfs_A")
    hfs_dA = models.FloatField(null=True, db_column="hfs_dA")
    hfs_B = models.FloatField(null=True, db_column="hfs_B")
    hfs_dB = models.FloatField(null=True, db_column="hfs_dB")

    class Meta:
        db_table = "hfs_matches"


class Transition(models.Model):
    """One data line of the dump."""

    upstate = _no_constraint_fk(State, db_column="upstate")
    lostate = _no_constraint_fk(State, db_column="lostate")
    species = _no_constraint_fk(Species)
    wave = models.DecimalField(max_digits=14, decimal_places=5)
    waveritz = models.DecimalField(max_digits=14, decimal_places=5, null=True)
    loggf = models.DecimalField(max_digits=7, decimal_places=3, null=True)
    einsteina = models.FloatField(null=True)
    gammarad = models.DecimalField(max_digits=6, decimal_places=3, null=True)
    gammastark = models.DecimalField(max_digits=6, decimal_places=3, null=True)
    gammawaals = models.DecimalField(max_digits=7, decimal_places=3, null=True)
    sigmawaals = models.SmallIntegerField(null=True)
    alphawaals = models.DecimalField(max_digits=4, decimal_places=3, null=True)
    accurflag = models.CharField(max_length=1, null=True)
    accur = models.CharField(max_length=6, null=True)
    loggf_err = models.FloatField(null=True)
    transition_type = models.CharField(max_length=2, null=True)
    autoionized = models.BooleanField(default=False)
    wave_method = models.SmallIntegerField(null=True)
    comment = models.CharField(max_length=16, null=True)
    wave_ref_id = _ref_field()
    waveritz_ref_id = _ref_field()
    loggf_ref_id = _ref_field()
    gammarad_ref_id = _ref_field()
    gammastark_ref_id = _ref_field()
    waals_ref_id = _ref_field()
    ll1 = models.SmallIntegerField(null=True)
    ll2 = models.SmallIntegerField(null=True)
    ll3 = models.SmallIntegerField(null=True)
    ll4 = models.SmallIntegerField(null=True)
    ll5 = models.SmallIntegerField(null=True)
    ll6 = models.SmallIntegerField(null=True)
    ll7 = models.SmallIntegerField(null=True)
    ll8 = models.SmallIntegerField(null=True)
    ll9 = models.SmallIntegerField(null=True)
    run = _no_constraint_fk(ImportRun, null=True)

    class Meta:
        db_table = "transitions"
        indexes = [
            models.Index(fields=["species", "wave"], name="transitions_species_wave_idx"),
            models.Index(fields=["wave"], name="transitions_wave_idx"),
            models.Index(fields=["waveritz"], name="transitions_waveritz_idx"),
            models.Index(fields=["einsteina"], name="transitions_einsteina_idx"),
        ]
