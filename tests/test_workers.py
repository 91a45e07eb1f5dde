"""Parser processes and the bounded level cache change the speed, never the content."""
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


def test_a_tiny_level_cache_gives_the_same_content(engine):
    summary = vi.import_dump(str(SAMPLE), using=engine, batch_size=100, cache_size=3, workers=1)
    assert summary.cache_hit_rate is not None
    tiny = content(engine)
    clear(engine)
    vi.import_dump(str(SAMPLE), using=engine)
    assert content(engine) == tiny


def test_the_level_cache_stays_within_its_size():
    cache = vi.StateCache(10)
    cache.update({key: key for key in range(1000)})
    assert len(cache) <= 10
    assert cache.get(999) == 999 and cache.get(0) is None
    assert 0 < cache.hit_rate < 1
    keys = vi.KeySet(10)
    keys.update(range(1000))
    assert 999 in keys and 0 not in keys


def test_shipped_levels_are_looked_up_when_the_cache_forgot_them(engine, tmp_path):
    """A worker sends a level's row once; later batches name it by key only."""
    vi.import_transitions(str(SAMPLE), using=engine, batch_size=50, cache_size=2, workers=1)
    from node_atom.models import State, Transition
    assert Transition.objects.using(engine).count() == 2000
    assert State.objects.using(engine).count() == len(content(engine)["states"])
