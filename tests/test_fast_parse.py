"""The bytes fast path agrees with parse_record, the reference parser, on every line."""
import gzip

import pytest

import valdimport as vi
from tests.conftest import SAMPLE
from tests.lines import REFERENCE, data_line

VARIANTS = [  # lines the fast path must handle or hand over, with the same result
    data_line(), data_line(measured=" " * 15), data_line(measured="        0.00000"),
    data_line(loggf=" " * 8), data_line(lower_j="     X", upper_j=" " * 6),
    data_line(lower_lande="  99.00", gammarad="  0.000", gammastark="  0.000", gammawaals="   0.000"),
    data_line(gammawaals="  -7.520"), data_line(gammawaals=" 312.245"), data_line(gammawaals="   1.300"),
    data_line(transition_flag="A", lower_energy="    95740.4501"), data_line(transition_flag="A"),
    data_line(transition_flag="B"), data_line(accurflag="E", accur="0.120"), data_line(accurflag="_", accur="D-"),
    data_line(accurflag="C", accur="0.5"), data_line(accurflag=" ", accur=""), data_line(comment=""),
    data_line(comment="a\\b\\\\c"), data_line(lls=(0,) * 9), data_line(lls=(12, 0, 3, 0, 0, 0, 0, 0, 7)),
    data_line()[:329].rstrip(), data_line()[:340].rstrip(), data_line(species="    26"),
    data_line(lower_term=" 3d6 'q' \"d\" 100%", upper_coupling="Hb", upper_term="X,1,0,+,1,0"),
    data_line(lower_term="3p5\\ 4s.(3P) b4P"), data_line(loggf="   -1.5"[-8:].rjust(8)),
    data_line(ritz="      5000.1234"), data_line(lower_j="  -1.0"), data_line(loggf="********"),
    data_line(species="  abc"[-6:].rjust(6)), data_line(gammarad="    nan"), data_line(gammarad="  1_0.0"),
    data_line(loggf="12345678"), data_line(loggf=" 999.000"), data_line(transition_flag="Z"),
    data_line() + "   ", data_line() + "  x", data_line().replace("3d6", "3d\u00e96", 1)[:365],
    data_line(upper_j="   0.0", loggf="   0.500", measured="      200.00000"),
]
REFERENCES = [None, REFERENCE, "wl:K14,iso:BWL gf:K14 K14 K14 K14 K14 K14 K14 K14", "wl:Wa WA",
              "wl:K14, gf:K14", "wl: gf:K14", "wl:a:b:c K14", "wl:K14,,BWL x", "wl:x\\y z",
              "wl:" + "K" * 70, " ".join(["wl:K"] * 10), "wl:E1 gf:G le:A ue:A", "wl:E1 gf:G le:A,B ue:B,C"]


def reference_result(data, ref, config):
    """What parse_record makes of a line, in the form the fast path produces."""
    try:
        record = vi.parse_record(vi.decoded_line(data), None if ref is None else vi.decoded_line(ref),
                                 config.skip_calc, dict(config.methods))
    except vi.RejectedLine as reason:
        return "rejected", str(reason)
    levels = {record.lower_key: record.lower}
    levels.setdefault(record.upper_key, record.upper)
    return record.lower_key, record.upper_key, vi.transition_output(record.transition, config.rows), levels


def batch_result(data, ref, config):
    lines = [b"h\n", b"h\n", data + b"\n"] + ([] if ref is None else [ref + b"\n"])
    parsed = vi.parse_batch(lines, 1, config)
    if parsed.rejects:
        return "rejected", parsed.rejects[0][1]
    (_, lower, upper, row), = parsed.transitions
    return lower, upper, row, parsed.levels


CONFIGS = [vi.ParseConfig(rows=vi.TEXT), vi.ParseConfig(rows=vi.TUPLES),
           vi.ParseConfig(rows=None), vi.ParseConfig(rows=vi.TEXT, skip_calc=True, methods=((1, 4), (3, 2)))]


@pytest.mark.parametrize("config", CONFIGS, ids=["text", "tuples", "pass1", "text-methods"])
def test_hand_written_variants_agree(config):
    for line in VARIANTS:
        for ref in REFERENCES:
            data = line.encode("utf-8")
            ref_bytes = None if ref is None else ref.encode()
            assert batch_result(data, ref_bytes, config) == reference_result(data, ref_bytes, config), (line, ref)


@pytest.mark.parametrize("config", CONFIGS[:3], ids=["text", "tuples", "pass1"])
def test_the_sample_agrees_line_by_line(config):
    lines = gzip.open(SAMPLE).read().splitlines()[2:]
    for data, ref in zip(lines[0::2], lines[1::2]):
        assert batch_result(data, ref, config) == reference_result(data, ref, config), data


def test_the_fast_path_handles_ordinary_lines():
    """Most sample lines must not need parse_record (or the fast path is pointless)."""
    lines = gzip.open(SAMPLE).read().splitlines()[2:]
    unusual = 0
    for data, ref in zip(lines[0::2], lines[1::2]):
        try:
            vi._fast_record(data, ref, vi.ParseConfig(rows=vi.TEXT), {}, set(), {})
        except (vi._Unusual, ValueError):
            unusual += 1
    assert unusual < len(lines) // 2 * 0.02


def test_shipped_levels_are_left_out():
    lines = [b"h\n", b"h\n", data_line().encode() + b"\n"]
    first = vi.parse_batch(lines, 1)
    assert len(first.levels) == 2
    again = vi.parse_batch(lines, 1, shipped=set(first.levels))
    assert again.levels == {} and again.keys == first.keys and again.records == 1
