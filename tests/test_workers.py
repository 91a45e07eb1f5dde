"""Parser processes change the speed, never the content."""
import gzip
import math

import pytest

import valdimport as vi
from tests.conftest import SAMPLE, clear, content
from tests.test_columnar import rows_of


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


def test_a_batch_too_large_for_its_slot_is_parsed_by_the_main_process(engine, tmp_path, monkeypatch):
    """A 3 MB comment line makes its batch larger than half a slot (4 MB at this batch
    size): that batch is parsed where the workers' results are read, in its turn."""
    lines = gzip.open(SAMPLE).read().split(b"\n")
    dump = tmp_path / "long.dat"
    dump.write_bytes(b"\n".join(lines[:1001] + [b"#" + b"x" * (3 << 20)] + lines[1001:]))
    vi.import_dump(str(dump), using=engine, batch_size=150, workers=0)
    expected = content(engine)
    clear(engine)
    here = []
    original = vi.parse_batch

    def counted(data, *args, **kwargs):
        here.append(len(data))
        return original(data, *args, **kwargs)
    monkeypatch.setattr(vi, "parse_batch", counted)  # the main process's only: workers are spawned
    summary = vi.import_dump(str(dump), using=engine, batch_size=150, workers=1)
    assert content(engine) == expected
    assert summary.tally.skipped["comment"] == 1
    assert len(here) == 2 and here[1] > 3 << 20  # the first batch, and the large one


def test_a_parser_process_that_dies_stops_the_run_with_one_line():
    batches = vi.read_batches(vi.Input(str(SAMPLE)).blocks(), 150)
    with vi.ParserPool(1, vi.ParseConfig(), 150, vi.SentLevels()) as pool:
        results = pool.parsed(batches)
        next(results)
        pool.processes[0].kill()
        with pytest.raises(vi.ValdImportError, match=r"a parser process stopped unexpectedly \(exit code -9\)"):
            for _ in results:
                pass


def test_an_error_in_a_parser_process_is_raised_in_the_main_one():
    """What a worker raises comes back through its pipe and is raised where the batches
    are read, as itself (a method table that is not pairs breaks every batch's parse)."""
    batches = vi.read_batches(vi.Input(str(SAMPLE)).blocks(), 150)
    with vi.ParserPool(1, vi.ParseConfig(methods=((1, 2, 3),)), 150, vi.SentLevels()) as pool:
        with pytest.raises(ValueError, match="dictionary update sequence"):
            next(pool.parsed(batches))


@pytest.mark.parametrize("form", [vi.TEXT, vi.TUPLES])
def test_transition_rows_left_unrendered_render_to_the_same_rows(form):
    data, config = gzip.open(SAMPLE).read(), vi.ParseConfig(rows=form)
    whole = vi.parse_batch(data, 1, config)
    left = vi.parse_batch(data, 1, config, render_transitions=False)
    assert isinstance(left.transitions, vi.Unrendered)
    seconds = left.seconds
    rows = left.rendered().transitions
    assert type(rows) is type(whole.transitions) and left.seconds > seconds  # the render counts as parsing
    assert rows_of(rows, vi.TRANSITION_COLUMNS, 3) == rows_of(whole.transitions, vi.TRANSITION_COLUMNS, 3)
    assert len(rows) == whole.records == 2000


@pytest.mark.parametrize("form", [vi.TEXT, vi.TUPLES])
def test_a_pool_whose_results_are_waited_for_leaves_the_rendering_to_the_caller(form, monkeypatch):
    """The threshold decides: a caller that waited longer than it for the last result
    renders the next batch's transition rows itself; the rows are the same either way."""
    batches = list(vi.read_batches(vi.Input(str(SAMPLE)).blocks(), 150))
    config = vi.ParseConfig(rows=form)
    expected = [rows_of(vi.parse_batch(b.data, b.first_line, config).transitions, vi.TRANSITION_COLUMNS, 3)
                for b in batches]
    for threshold, here in ((math.inf, 0), (0.0, len(batches))):  # never waited that long; always
        monkeypatch.setattr(vi.ParserPool, "WAIT_TO_SHARE", threshold)
        with vi.ParserPool(1, config, 150, vi.SentLevels()) as pool:
            got = [rows_of(parsed.transitions, vi.TRANSITION_COLUMNS, 3) for _, parsed in pool.parsed(iter(batches))]
        assert pool.rendered_here == here and len(batches) > 2
        assert got == expected


def test_transition_rows_rendered_by_the_writer_give_the_same_content(engine, monkeypatch):
    vi.import_dump(str(SAMPLE), using=engine, batch_size=150, workers=0)
    expected = content(engine)
    clear(engine)
    monkeypatch.setattr(vi.ParserPool, "WAIT_TO_SHARE", 0.0)  # every batch the workers parse
    left, original = [], vi.ParsedBatch.rendered

    def counted(parsed):
        left.append(isinstance(parsed.transitions, vi.Unrendered))
        return original(parsed)
    monkeypatch.setattr(vi.ParsedBatch, "rendered", counted)
    vi.import_dump(str(SAMPLE), using=engine, batch_size=150, workers=1)
    assert content(engine) == expected
    assert len(left) > 2 and all(left)


def test_a_worker_has_a_batch_queued_beside_the_one_it_parses_while_the_caller_writes():
    """While the caller holds a result, the worker has the next batch and one more: it
    does not wait idle for the caller when it parses faster than the caller writes."""
    read = []

    def batches():
        for batch in vi.read_batches(vi.Input(str(SAMPLE)).blocks(), 150):
            read.append(batch.first_line)
            yield batch
    with vi.ParserPool(1, vi.ParseConfig(), 150, vi.SentLevels()) as pool:
        results = pool.parsed(batches())
        batch, _ = next(results)
        assert batch.first_line == 1 and len(read) == 3  # the one returned, two in flight
        assert len(list(results)) == len(read) - 1 > 2
