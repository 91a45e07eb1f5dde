"""Species, references, line lists and the import-run bookkeeping (node_common)."""
from django.db import models

from node_common.fields import CaseSensitiveCharField

REF_KEY_LENGTH = 64


class Species(models.Model):
    """One VALD species; ``id`` is the VALD species index (atoms < 10000)."""

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=32, null=True, db_index=True)
    ion = models.SmallIntegerField(null=True)
    inchi = models.TextField(null=True)
    inchikey = models.CharField(max_length=27, null=True)
    mass = models.FloatField(null=True)
    massno = models.SmallIntegerField(null=True)
    ionen = models.FloatField(null=True)
    solariso = models.FloatField(null=True)
    ncomp = models.SmallIntegerField(null=True)
    atomic = models.SmallIntegerField(null=True)
    isotope = models.SmallIntegerField(null=True)
    ground_state = models.ForeignKey(
        "node_atom.State", null=True, on_delete=models.DO_NOTHING,
        db_constraint=False, db_index=False, related_name="+")

    class Meta:
        db_table = "species"

    def __str__(self):
        return self.name or f"species {self.id}"


class SpeciesComponent(models.Model):
    """A component atom of a molecule (``position`` 1..4 as N1..N4 in the species list)."""

    molecule = models.ForeignKey(Species, on_delete=models.CASCADE, related_name="components")
    atom = models.ForeignKey(Species, on_delete=models.CASCADE, related_name="+")
    position = models.SmallIntegerField(default=1)

    class Meta:
        db_table = "species_components"
        constraints = [models.UniqueConstraint(fields=["molecule", "position"],
                                               name="species_components_position_unique")]


class Reference(models.Model):
    """A bibliographic reference; ``id`` is the BibTeX key (case-sensitive)."""

    id = CaseSensitiveCharField(max_length=REF_KEY_LENGTH, primary_key=True)
    bibtex = models.TextField(null=True)
    xml = models.TextField(null=True, help_text="the XSAMS <Source> element the node serves")

    class Meta:
        db_table = "refs"


class LineList(models.Model):
    """A VALD line list (source file) and the method of its values."""

    id = models.IntegerField(primary_key=True)
    srcfile = models.CharField(max_length=255, null=True)
    listtype = models.CharField(max_length=32, null=True)
    method = models.SmallIntegerField(null=True)

    class Meta:
        db_table = "linelists"


class ImportRun(models.Model):
    """One run of an import command over one input.

    ``committed_*`` describe the input prefix whose rows are committed: the
    importer updates them in the same transaction as each batch, which is what
    lets a rerun skip (or resume after) exactly what is already in the database.
    """

    RUNNING, COMPLETED, FAILED, STOPPED = "running", "completed", "failed", "stopped"
    ROLLED_BACK = "rolled back"

    command = models.CharField(max_length=32)
    input_name = models.TextField()
    input_size = models.BigIntegerField(null=True)
    input_head = models.CharField(max_length=64, help_text="SHA-256 of the first head_bytes bytes")
    head_bytes = models.IntegerField(default=0, help_text="64 KiB, or the whole input when shorter")
    options = models.JSONField(default=dict)
    status = models.CharField(max_length=16, default=RUNNING)
    host = models.CharField(max_length=255, default="")
    pid = models.IntegerField(null=True)
    started_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True)
    continues_run = models.ForeignKey(
        "self", null=True, on_delete=models.DO_NOTHING, db_constraint=False,
        related_name="+")
    start_line = models.BigIntegerField(default=0)
    resumed_from_line = models.BigIntegerField(null=True)
    committed_line = models.BigIntegerField(default=0)
    committed_bytes = models.BigIntegerField(default=0)
    committed_sha256 = models.CharField(max_length=64, default="")
    lines_read = models.BigIntegerField(default=0)
    imported = models.BigIntegerField(default=0)
    skipped = models.BigIntegerField(default=0)
    rejected = models.BigIntegerField(default=0)
    counts = models.JSONField(default=dict)
    message = models.TextField(default="")

    class Meta:
        db_table = "import_runs"

    def __str__(self):
        return f"run {self.id} ({self.command} {self.input_name}, {self.status})"
