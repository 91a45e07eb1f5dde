"""--dry-run: parse and check everything, write the reject file and the summary, touch no table."""
from node_atom.models import State, Transition
from node_common.models import ImportRun, LineList, Reference, Species, SpeciesComponent
from tests.conftest import SAMPLE, database_url, run_cli, summary_rows
from tests.test_rejects import BAD, mixed_dump

MODELS = (Transition, State, Species, SpeciesComponent, ImportRun, LineList, Reference)


def test_dry_run_leaves_every_table_empty(engine, tmp_path):
    path, expected, total = mixed_dump(tmp_path)
    result = run_cli("import", "--file", path, "--dry-run", url=database_url(engine), cwd=tmp_path)
    assert result.returncode == 3
    out = result.stdout.decode()
    assert out.startswith("import: checked (dry run: nothing was written)")
    rows = summary_rows(out)
    assert rows["lines read"] == str(total) and rows["rejected"].startswith(f"{len(BAD)}  -> ")
    assert "transitions" not in rows and "levels" not in rows
    assert rows["rejected"].endswith(f"-> {tmp_path / 'mixed.dat.dry-run.rejects'}")
    rejects = (tmp_path / "mixed.dat.dry-run.rejects").read_text(encoding="utf-8").splitlines()
    assert [int(r.split("\t")[0]) for r in rejects] == sorted(expected)
    for model in MODELS:
        assert not model.objects.using(engine).exists(), model.__name__


def test_dry_run_needs_no_schema(tmp_path):
    database = tmp_path / "never.sqlite3"
    result = run_cli("import-states", "--file", SAMPLE, "--dry-run", url=f"sqlite:///{database}")
    assert result.returncode == 0
    assert summary_rows(result.stdout.decode())["valid"] == "2,000 records"
    assert not database.exists()
