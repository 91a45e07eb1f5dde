"""The schema the node reads: every table and column after migrate, and migrating in place."""
from django.db import connections
from django.db.migrations.executor import MigrationExecutor

import valdimport as vi
from node_atom.models import State
from node_common.models import Reference

# The tables and columns of the database (VAMDC VALD node names), as documented for the node.
SCHEMA = {
    "species": ["id", "name", "ion", "inchi", "inchikey", "mass", "massno", "ionen", "solariso",
                "ncomp", "atomic", "isotope", "ground_state_id"],
    "species_components": ["id", "molecule_id", "atom_id"],
    "refs": ["id", "bibtex", "xml"],
    "linelists": ["id", "srcfile", "listtype", "method"],
    "states": ["id", "species_id", "energy", "energy_scaled", "J", "lande", "term_desc", "config",
               "term", "energy_method", "energy_ref_id", "lande_ref_id", "level_ref_id",
               "S", "L", "P", "J1", "J2", "K", "S2", "Jc", "Sn", "n", "v", "Lambda", "Sigma",
               "Omega", "rotN", "elecstate", "coupling_case", "kronig_parity", "elec_inversion",
               "asSym", "hfs_A", "hfs_dA", "hfs_B", "hfs_dB"],
    "transitions": ["id", "upstate", "lostate", "species_id", "wave", "waveritz", "loggf",
                    "einsteina", "gammarad", "gammastark", "gammawaals", "sigmawaals", "alphawaals",
                    "accurflag", "accur", "loggf_err", "transition_type", "autoionized",
                    "wave_method", "comment", "wave_ref_id", "waveritz_ref_id", "loggf_ref_id",
                    "gammarad_ref_id", "gammastark_ref_id", "waals_ref_id",
                    "ll1", "ll2", "ll3", "ll4", "ll5", "ll6", "ll7", "ll8", "ll9"],
    "import_runs": ["command", "input_name", "input_size", "input_head", "lines_read", "imported",
                    "rejected", "skipped", "committed_line", "committed_bytes", "status",
                    "started_at", "finished_at"],
}
BEFORE = [("node_atom", "0002_initial"), ("node_common", "0001_initial")]  # before refs.xml and hfs_*


def columns(alias, table):
    with connections[alias].cursor() as cursor:
        return [c.name for c in connections[alias].introspection.get_table_description(cursor, table)]


def test_every_table_and_column_exists_after_migrate(engine):
    tables = connections[engine].introspection.table_names()
    for table, wanted in SCHEMA.items():
        assert table in tables
        assert [c for c in wanted if c not in columns(engine, table)] == [], table


def test_a_database_of_the_previous_schema_migrates_in_place_keeping_its_rows(engine):
    connection = connections[engine]
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    try:
        assert "xml" not in columns(engine, "refs") and "hfs_A" not in columns(engine, "states")
        q = connection.ops.quote_name
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO refs (id, bibtex) VALUES (%s, %s)",
                           ["K14", "@book{K14, title = {Kurucz}, year = {2014}}"])
            cursor.execute(f"INSERT INTO states (species_id, energy, energy_scaled, {q('J')}, "
                           f"{q('J_scaled')}, term_desc) VALUES (%s, %s, %s, %s, %s, %s)",
                           [2601, "1000.1234", 10001234, "2.5", 25, "3d6.4s2 a5D"])
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
    assert "xml" in columns(engine, "refs") and "hfs_dB" in columns(engine, "states")
    level = State.objects.using(engine).get()
    assert (level.species_id, str(level.energy), level.energy_scaled, str(level.J), level.term_desc) == (
        2601, "1000.1234", 10001234, "2.5", "3d6.4s2 a5D")
    assert (level.hfs_A, level.hfs_dA, level.hfs_B, level.hfs_dB) == (None, None, None, None)
    reference = Reference.objects.using(engine).get()
    assert (reference.pk, reference.bibtex, reference.xml) == (
        "K14", "@book{K14, title = {Kurucz}, year = {2014}}", None)
    check = "references without the XSAMS source of this node"
    assert {c.name: c.count for c in vi.database_checks(engine)}[check] == 1
    vi.housekeeping(engine, rebuild_xml=True)
    assert Reference.objects.using(engine).get().xml.startswith('<Source sourceID="Bvald-K14">')
    assert {c.name: c.count for c in vi.database_checks(engine)}[check] == 0


LOOKUP = "SELECT id FROM states WHERE species_id = 2601 AND energy_scaled BETWEEN 10000000 AND 10020000"


def lookup_plan(alias) -> str:
    """How the engine would find the levels of a species in an energy range (the lookup of
    import-hfs and of the node), as one text."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":  # on a near-empty table a scan is cheaper
            cursor.execute("SET LOCAL enable_seqscan = off")
        prefix = {"sqlite": "EXPLAIN QUERY PLAN ", "mysql": "EXPLAIN FORMAT=JSON "}.get(connection.vendor, "EXPLAIN ")
        cursor.execute(prefix + LOOKUP)
        return " ".join(str(value) for row in cursor.fetchall() for value in row)


def test_levels_are_found_by_species_and_energy_through_the_unique_constraint_alone(engine):
    with connections[engine].cursor() as cursor:
        constraints = connections[engine].introspection.get_constraints(cursor, "states")
    indexed = {name: tuple(c["columns"]) for name, c in constraints.items() if c["index"] or c["unique"]}
    unique = [name for name, c in constraints.items()
              if c["unique"] and c["columns"] == ["species_id", "energy_scaled", "J_scaled"]]
    assert len(unique) == 1, constraints
    if connections[engine].vendor == "sqlite":  # a table constraint: SQLite names its index so
        unique = ["sqlite_autoindex_states_1"]
    plan = lookup_plan(engine)
    assert unique[0] in plan, plan
    assert not any(scan in plan for scan in ("SCAN states", "Seq Scan", '"access_type": "ALL"')), plan
    # no index whose columns begin another's: each new level would update both for nothing
    assert [(a, b) for a, ca in indexed.items() for b, cb in indexed.items()
            if a != b and cb[:len(ca)] == ca] == [], indexed
