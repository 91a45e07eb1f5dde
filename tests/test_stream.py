"""Streaming input: compression by magic bytes, file or stdin, batches at record boundaries."""
import bz2
import gzip
import io
import lzma
import sys

import pytest

import valdimport as vi
from tests.lines import REFERENCE, data_line, dump

PLAIN = dump(*[(data_line(ritz=f"{5000 + i:15.5f}"), REFERENCE) for i in range(25)])
COMPRESSORS = {"plain": lambda b: b, "gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_compression_is_recognised_by_magic_bytes_in_a_file(tmp_path, kind):
    path = tmp_path / "dump.txt"  # the name says nothing about the compression
    path.write_bytes(COMPRESSORS[kind](PLAIN))
    inp = vi.Input(str(path))
    assert inp.compression == (None if kind == "plain" else kind)
    assert b"".join(inp.lines()) == PLAIN
    assert inp.size == path.stat().st_size
    assert inp.position() == inp.size


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_compressed_stdin_is_recognised_too(monkeypatch, kind):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(COMPRESSORS[kind](PLAIN))))
    inp = vi.Input("-")
    assert inp.name == "-" and not inp.reopenable
    assert b"".join(inp.lines()) == PLAIN


def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(vi.UsageError, match="cannot read .*No such file"):
        vi.Input(str(tmp_path / "nope.dat"))


def test_truncated_compressed_file_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(PLAIN * 200)[:-5000])
    with pytest.raises(vi.ValdImportError, match="damaged or truncated"):
        b"".join(vi.Input(str(path)).lines())


def test_batches_hold_n_records_and_never_split_a_reference_line():
    lines = PLAIN.splitlines(keepends=True)
    batches = list(vi.read_batches(iter(lines), batch_size=4))
    assert [b.first_line for b in batches] == [1, 7, 15, 23, 31, 39, 47]
    for b in batches[1:]:
        assert not b.data[:1].islower()  # a batch starts with a data line
    assert b"".join(b.data for b in batches) == PLAIN
    assert batches[-1].end_offset == len(PLAIN)
    assert batches[-1].last_line == len(lines)


def test_batch_digests_are_of_the_whole_prefix():
    import hashlib
    lines = PLAIN.splitlines(keepends=True)
    for b in vi.read_batches(iter(lines), batch_size=3):
        assert b.sha256 == hashlib.sha256(PLAIN[:b.end_offset]).hexdigest()


@pytest.mark.parametrize("cut, alone", [(-200, 1), (-30, 2)])  # in a data line, in a reference line
def test_a_last_record_without_an_end_of_line_comes_alone_and_is_never_committed(cut, alone):
    """A download that stopped: once the whole dump is there, a rerun continues before it."""
    lines = PLAIN[:cut].splitlines(keepends=True)
    *complete, last = vi.read_batches(iter(lines), batch_size=100)
    assert last.cut and last.data == b"".join(lines[-alone:]) and last.first_line == len(lines) - alone + 1
    assert last.end_offset == complete[-1].end_offset == len(b"".join(lines[:-alone]))
    assert last.sha256 == complete[-1].sha256 and last.committed_line == len(lines) - alone
    assert not complete[-1].cut and complete[-1].committed_line == complete[-1].last_line


def test_checkpoints_are_digests_of_the_input_up_to_them():
    import hashlib
    data = PLAIN * 3
    (batch,) = vi.read_batches(iter(data.splitlines(keepends=True)), batch_size=1000)
    assert sorted(batch.checkpoints) == [o for o in (4096, 5120, 6144, 7168, 8192, 10240, 12288, 14336,
                                                     16384, 20480, 24576, 28672, 32768) if o <= len(data)]
    for offset, sha in batch.checkpoints.items():
        assert sha == hashlib.sha256(data[:offset]).hexdigest()


def test_batches_stop_exactly_at_a_committed_offset():
    lines = PLAIN.splitlines(keepends=True)
    stop = sum(len(line) for line in lines[:9])
    batches = list(vi.read_batches(iter(lines), batch_size=100, stop_at=stop))
    assert batches[0].end_offset == stop
    assert batches[0].last_line == 9


def test_an_offset_inside_a_line_is_a_mismatch():
    lines = PLAIN.splitlines(keepends=True)
    with pytest.raises(vi.PrefixMismatch) as error:
        list(vi.read_batches(iter(lines), batch_size=100, stop_at=len(lines[0]) + 3))
    assert error.value.line == 2


def test_an_input_shorter_than_the_offset_is_a_mismatch():
    with pytest.raises(vi.PrefixMismatch):
        list(vi.read_batches(iter(PLAIN.splitlines(keepends=True)), 100, stop_at=len(PLAIN) + 1))


def test_head_matching_uses_the_length_an_earlier_run_saw(tmp_path):
    short, longer = tmp_path / "short.dat", tmp_path / "longer.dat"
    short.write_bytes(PLAIN[:1000])
    longer.write_bytes(PLAIN)
    first = vi.Input(str(short))
    assert len(first.head) == 1000
    assert vi.Input(str(longer)).head_matches(len(first.head), first.head_sha256)
    assert not vi.Input(str(short)).head_matches(len(PLAIN), vi.Input(str(longer)).head_sha256)
