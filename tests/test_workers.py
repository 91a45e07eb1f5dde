"""Parser processes change the speed, never the content."""
import valdimport as vi
from tests.conftest import SAMPLE, clear, content


def test_one_or_two_parser_processes_give_the_same_content(engine):
    vi.import_dump(str(SAMPLE), using=engine, batch_size=150, workers=1)
    one = content(engine)
    clear(engine)
    vi.import_dump(str(SAMPLE), using=engine, batch_size=150, workers=2)
    assert content(engine) == one
    clear(engine)
    vi.import_dump(str(SAMPLE), using=engine, batch_size=150, workers=0)
    assert content(engine) == one


def test_two_passes_with_workers_equal_the_single_process_import(engine):
    vi.import_states(str(SAMPLE), using=engine, batch_size=150, workers=2)
    vi.import_transitions(str(SAMPLE), using=engine, batch_size=150, workers=2)
    parallel = content(engine)
    clear(engine)
    vi.import_dump(str(SAMPLE), using=engine, workers=0)
    assert content(engine) == parallel
