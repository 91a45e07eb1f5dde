"""The columnar parser agrees with parse_record, the reference parser, line by line: the same
rows, the same rejections, and most lines never need parse_record."""
import gzip
import math
import random
from decimal import Decimal

import numpy as np
import pytest

import valdimport as vi
from tests.conftest import SAMPLE, generate_dump
from tests.lines import REFERENCE, data_line, dump

TEXT_COLUMNS = {"accurflag", "accur", "transition_type", "comment", "term_desc", "coupling_case",
                "config", "term", "P", "elecstate", "kronig_parity", "elec_inversion", "asSym",
                *(c for c in vi.TRANSITION_COLUMNS + vi.STATE_COLUMNS if c.endswith("_ref_id"))}
FLOAT_COLUMNS = {"einsteina", "loggf_err", "S", "J1", "J2", "K", "S2", "Jc", "Sigma", "Omega"}
CONFIGS = {
    "tuples": vi.ParseConfig(rows=vi.TUPLES),
    "text": vi.ParseConfig(rows=vi.TEXT),
    "pass1": vi.ParseConfig(rows=vi.TUPLES, transitions=False),
    "text-methods-skipcalc": vi.ParseConfig(rows=vi.TEXT, skip_calc=True, methods=((1, 4), (3, 2), (17, 1))),
}


def canonical(column, value):
    """A stored value, whatever form the rows carry it in (float, digits, COPY text)."""
    if value is None or value == "\\N" or (isinstance(value, float) and math.isnan(value)):
        return None
    if column in TEXT_COLUMNS:
        return value
    if isinstance(value, bool):
        return int(value)
    if column in FLOAT_COLUMNS:  # a double: the same one, however it was printed
        return float(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


def rows_of(rows, columns, slots):
    """The rows of TextRows or ColumnRows as canonical dicts (without the slots)."""
    values = rows.values() if isinstance(rows, vi.TextRows) else rows.tuples(*[0] * slots)
    return [{c: canonical(c, v) for c, v in zip(columns[slots:], row[slots:])} for row in values]


def columnar(data, config):
    parsed = vi.parse_batch(data, 1, config)
    levels = rows_of(parsed.levels, vi.STATE_COLUMNS, 2) if parsed.records else []
    transitions = rows_of(parsed.transitions, vi.TRANSITION_COLUMNS, 3) if parsed.transitions else []
    keys = list(zip(parsed.keys[parsed.lower].tolist(), parsed.keys[parsed.upper].tolist())) \
        if parsed.records else []
    return parsed, dict(rejects=[r[:2] for r in parsed.rejects], keys=keys, transitions=transitions,
                        levels=dict(zip(parsed.keys[parsed.carried].tolist(), levels)))


def reference(data, config):
    """What parse_record makes of the same batch, record by record."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    rejects, keys, transitions, levels = [], [], [], {}
    for i, line in enumerate(lines[2:], 3):
        if 97 <= line[:1][0] <= 122 if line else False:
            if i == 3 or not _is_data(lines[i - 2]):
                rejects.append((i, "reference line without a data line before it"))
            continue
        if not _is_data(line):
            continue
        ref = lines[i] if i < len(lines) and lines[i] and 97 <= lines[i][0] <= 122 else None
        try:
            record = vi.oracle_record(line, ref, config)
        except vi.RejectedLine as reason:
            rejects.append((i, str(reason)))
            continue
        keys.append((record.lower_key, record.upper_key))
        if config.transitions:
            transitions.append({c: canonical(c, v) for c, v in record.transition.items()})
        for key, row in ((record.lower_key, record.lower), (record.upper_key, record.upper)):
            levels.setdefault(key, {c: canonical(c, v) for c, v in row.items()})
    return dict(rejects=sorted(rejects), keys=keys, transitions=transitions, levels=levels)


def _is_data(line):
    return bool(line.strip()) and not line.startswith(b"#") and b"Unknown" not in line \
        and not 97 <= line[0] <= 122


def assert_agree(data, config):
    parsed, got = columnar(data, config)
    expected = reference(data, config)
    assert got["rejects"] == expected["rejects"]
    assert got["keys"] == expected["keys"]
    assert got["transitions"] == expected["transitions"]
    assert got["levels"] == expected["levels"]
    return parsed


@pytest.fixture(scope="module")
def sample_data():
    return gzip.open(SAMPLE).read()


@pytest.mark.parametrize("name", CONFIGS)
def test_the_sample_agrees_and_needs_no_parse_record(sample_data, name):
    parsed = assert_agree(sample_data, CONFIGS[name])
    assert parsed.records == 2000 and parsed.oracle == 0


def test_a_generated_dump_agrees(tmp_path):
    data = generate_dump(tmp_path / "g.dat", records=4000, seed=7, species=40, levels=300).read_bytes()
    for name in ("tuples", "text"):
        parsed = assert_agree(data, CONFIGS[name])
        assert parsed.records == 4000 and parsed.oracle == 0


HAND_WRITTEN = [  # lines the columnar parser must accept as they are, or hand over
    data_line(), data_line(measured=" " * 15), data_line(measured="        0.00000"),
    data_line(loggf=" " * 8), data_line(lower_j="     X", upper_j=" " * 6),
    data_line(lower_lande="  99.00", gammarad="  0.000", gammastark="  0.000", gammawaals="   0.000"),
    data_line(gammawaals="  -7.520"), data_line(gammawaals=" 312.245"), data_line(gammawaals="   1.300"),
    data_line(gammawaals="    .300"), data_line(loggf="   -.500"), data_line(loggf="  +1.500"),
    data_line(transition_flag="A", lower_energy="    95740.4501"), data_line(transition_flag="A"),
    data_line(transition_flag="B"), data_line(accurflag="E", accur="0.120"), data_line(accurflag="_", accur="D-"),
    data_line(accurflag="C", accur="0.5"), data_line(accurflag=" ", accur=""), data_line(comment=""),
    data_line(comment="a\\b\\\\c"), data_line(accur="\\x"), data_line(lls=(0,) * 9),
    data_line(lls=(12, 0, 3, 0, 0, 0, 0, 0, 7)), data_line(lls=(1, 2, 3, 4, 5, 6, 7, 8, -1)),
    data_line()[:329].rstrip(), data_line()[:340].rstrip(), data_line(species="    26"),
    data_line(lower_term=" 3d6 'q' \"d\" 100%", upper_coupling="Hb", upper_term="X,1,0,+,1,0"),
    data_line(lower_term="3p5\\ 4s.(3P) b4P"), data_line(loggf="   -1.5"[-8:].rjust(8)),
    data_line(ritz="      5000.1234"), data_line(lower_j="  -1.0"), data_line(loggf="********"),
    data_line(species="  abc"[-6:].rjust(6)), data_line(gammarad="    nan"), data_line(gammarad="  1_0.0"),
    data_line(loggf="12345678"), data_line(loggf=" 999.000"), data_line(transition_flag="Z"),
    data_line() + "   ", data_line() + "  x", data_line().replace("3d6", "3d\u00e96", 1)[:365],
    data_line(upper_j="   0.0", loggf="   0.500", measured="      200.00000"),
    data_line(loggf=" 400.000"), data_line(species="     0"), data_line(species="    -5"),
    data_line(lower_j="  1.50"), data_line(upper_energy="   -25899.9876"),
]
REFERENCES = [None, REFERENCE, "wl:K14,iso:BWL gf:K14 K14 K14 K14 K14 K14 K14 K14", "wl:Wa WA",
              "wl:K14, gf:K14", "wl: gf:K14", "wl:a:b:c K14", "wl:K14,,BWL x", "wl:x\\y z",
              "wl:" + "K" * 70, " ".join(["wl:K"] * 10), "wl:E1 gf:G le:A ue:A", "wl:E1 gf:G le:A,B ue:B,C",
              "wl:SR+Sm gf:K14", "wl:K14  gf:K14   K14", "wl:K14 \x01"]


@pytest.mark.parametrize("name", CONFIGS)
def test_hand_written_lines_agree(name):
    header = b"h\nh\n"
    for line in HAND_WRITTEN:
        for ref in REFERENCES:
            data = header + line.encode() + b"\n" + (b"" if ref is None else ref.encode() + b"\n")
            assert_agree(data, CONFIGS[name])


def mutated(line: bytes, rng: random.Random) -> bytes:
    """One of the accidents real files have, applied to a data line."""
    kind = rng.randrange(11)
    fields = [f for f in vi.DATA_FIELDS if f.kind in ("decimal", "int")]
    f = rng.choice(fields)
    text = bytearray(line.ljust(vi.LINE_WIDTH))
    if kind == 0:  # a random byte anywhere
        text[rng.randrange(len(text))] = rng.randrange(256)
    elif kind == 1:  # cut
        return bytes(text[:rng.randrange(1, vi.LINE_WIDTH)])
    elif kind == 2:  # a blank field
        text[f.start:f.end] = b" " * f.width
    elif kind == 3:  # a letter in a number
        text[rng.randrange(f.start, f.end)] = rng.choice(b"abeEXx+-")
    elif kind == 4:  # Fortran's overflow
        text[f.start:f.end] = b"*" * f.width
    elif kind == 5:  # the point moved
        field = bytes(text[f.start:f.end]).replace(b".", b"")
        at = rng.randrange(len(field) + 1)
        text[f.start:f.end] = (field[:at] + b"." + field[at:]).rjust(f.width)[-f.width:]
    elif kind == 6:  # an odd flag
        flag = rng.choice([g for g in vi.DATA_FIELDS if g.allowed])
        text[flag.start] = rng.choice(b"ABCDEFGHNPZ_ 0123456789*\\")
    elif kind == 7:  # a sign where Fortran would not print one
        text[rng.randrange(f.start, f.end)] = rng.choice(b"+-")
    elif kind == 8:  # text after the last column
        return bytes(text) + rng.choice([b"   ", b" x", b"\t", b"0"])
    elif kind == 9:  # a number shifted by one column
        field = bytes(text[f.start:f.end])
        text[f.start:f.end] = (field[1:] + b" ") if rng.random() < 0.5 else (b" " + field[:-1])
    else:  # fewer or more decimals
        field = bytes(text[f.start:f.end]).strip()
        field = field[:-1] if rng.random() < 0.5 else field + b"0"
        text[f.start:f.end] = field.rjust(f.width)[-f.width:]
    return bytes(text)


def mutated_reference(ref: bytes, rng: random.Random) -> bytes:
    return rng.choice([ref + b" x" * rng.randrange(1, 9), ref.replace(b" ", b",", 1), ref + b":",
                       b"wl:" + b"K" * rng.randrange(60, 70), ref.replace(b" ", b"  "), ref + b"+x",
                       ref.replace(b"K", b"\xff", 1), b"wl:" + ref])


@pytest.mark.parametrize("name", ["tuples", "text"])
def test_thousands_of_mutated_lines_agree(sample_data, name):
    rng = random.Random(f"mutations-{name}")
    lines = sample_data.splitlines()[2:]
    records = list(zip(lines[0::2], lines[1::2]))
    handed, mutations, accepted = 0, 0, 0
    for batch in range(60):
        out = [b"h", b"h"]
        changed = 0
        for data, ref in rng.sample(records, 60):
            if rng.random() < 0.5:
                data, changed = mutated(data, rng), changed + 1
            if rng.random() < 0.1:
                ref, changed = mutated_reference(ref, rng), changed + 1
            out += [data, ref]
        data = b"\n".join(out) + b"\n"
        parsed = assert_agree(data, CONFIGS[name])
        assert parsed.oracle <= changed  # an untouched line never needs parse_record
        handed, mutations = handed + parsed.oracle, mutations + changed
        accepted += parsed.records
    assert mutations > 1500
    assert handed < mutations  # many mutations still look like Fortran output
    assert accepted > 60 * 60 // 2


def test_a_parser_that_hands_every_line_over_would_fail_these_tests(sample_data, monkeypatch):
    """The path counts bite: a parser whose checks pass nothing still gives the same rows
    (parse_record decides every line), and only the count shows it."""
    original = vi.field_columns
    calls = []

    def nothing_passes(matrix, skip_calc=False):
        values, ok = original(matrix, skip_calc)
        calls.append(len(matrix))
        return values, ok & (len(calls) > 1)  # the batch's first check refuses every line
    monkeypatch.setattr(vi, "field_columns", nothing_passes)
    parsed = assert_agree(sample_data, CONFIGS["tuples"])
    assert parsed.oracle == parsed.records == 2000
    calls.clear()
    with pytest.raises(AssertionError, match="oracle"):
        test_the_sample_agrees_and_needs_no_parse_record(sample_data, "tuples")


LS_LABELS = ["a", "z", "2(3D)", "(4F)", "3d6.(5D)", "w", ""]
ODD_LS_TERMS = ["w15P", "3D**", "a2D F=3/2", "(3D)", "3D1", "1S0*", "5d", "D", "#2D", "x3D\\"]


def _ls_line(i, lower, upper):
    return data_line(lower_energy=f"{5000 + i:14.4f}", upper_energy=f"{30000 + i:14.4f}",
                     lower_term=lower, upper_coupling="LS", upper_term=upper)


def _ls_dump():
    return dump(*[_ls_line(i, f"3d6.4s2 {label}5D", f"3d6.4p {label}5F*") for i, label in enumerate(LS_LABELS)],
                *[_ls_line(100 + i, f"3d6 {term}", f"3d5.4p {term}") for i, term in enumerate(ODD_LS_TERMS)])


@pytest.mark.parametrize("name", CONFIGS)
def test_ls_terms_with_labels_agree(name):
    parsed = assert_agree(_ls_dump(), CONFIGS[name])
    assert parsed.records == len(LS_LABELS) + len(ODD_LS_TERMS) and parsed.oracle == 0


def test_an_ls_term_is_decoded_once_whatever_its_label(monkeypatch):
    """The label before an LS term's multiplicity ('z', '2(3D)') does not change what it
    decodes to, so the terms of a batch are decoded once per multiplicity, L and parity."""
    decoded = []
    original = vi.decoded_quantum_numbers

    def counting(key, as_text):
        if key[:2] == b"LS":
            decoded.append(key[3 + vi.TERM_WIDTH:].replace(b"\0", b""))
        return original(key, as_text)
    monkeypatch.setattr(vi, "decoded_quantum_numbers", counting)
    lines = [_ls_line(i, f"3d6.4s2 {label}5D", f"3d6.4p {label}5F*") for i, label in enumerate(LS_LABELS)]
    parsed = vi.parse_batch(dump(*lines), 1, CONFIGS["text"])
    assert parsed.records == len(LS_LABELS) and parsed.carried.sum() == 2 * len(LS_LABELS)
    assert sorted(decoded) == [b"5D", b"5F*"]


def _description_dump(lower_terms, upper_terms):
    return dump(*[_ls_line(i, lower, upper) for i, (lower, upper) in enumerate(zip(lower_terms, upper_terms))])


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("lower, upper", [
    (["", ""], ["", ""]),  # no description in the whole batch
    (["x" * 86, "3d6 a5D"], ["3d6.4p z5F*", "y" * 85 + "\\"]),  # the field's whole width
    (["3d6 a5D", "3d6 a5D"], ["3d6.4p " + "\\ " * 38 + "5F*", "3d6.4p z5F*"]),
], ids=["blank", "full-width", "escaped-blanks"])
def test_descriptions_of_any_width_agree(name, lower, upper):
    """A batch's descriptions are narrowed to the columns any of them fills before they
    are split and decoded: a batch with none, or one as wide as the field, agrees too."""
    parsed = assert_agree(_description_dump(lower, upper), CONFIGS[name])
    assert parsed.records == 2 and parsed.oracle == 0


def test_a_level_decodes_alike_in_batches_of_any_width():
    """The decoder's cache key of a level is the same whether the batch's widest
    description is short or the field's whole width."""
    vi.decoded_quantum_numbers.cache_clear()
    vi.parse_batch(_description_dump(["3d6 a5D"], ["3d6.4p z5F*"]), 1, CONFIGS["text"])
    misses = vi.decoded_quantum_numbers.cache_info().misses
    vi.parse_batch(_description_dump(["3d6 a5D"], ["x" * 86]), 1, CONFIGS["text"])
    assert vi.decoded_quantum_numbers.cache_info().misses == misses + 1  # only the new 'x...' one


def test_a_text_column_gives_its_values_with_the_null_each_caller_asks_for():
    column = vi.Strings(np.array([2, 0, 1, 3, 0], np.int32), ["a\\b", None, "c d"])
    parts = [column.take(slice(0, 2)), column.take(slice(2, 5))]
    flat = [value for part in parts for value in part.tolist(vi.NAN)]  # as the SQLite writer binds
    assert [v if isinstance(v, str) else "NaN" for v in flat] == ["c d", "a\\b", "NaN", "NaN", "a\\b"]
    assert all(math.isnan(v) for v in flat if not isinstance(v, str))
    assert [value for part in parts for value in part.tolist()] == ["c d", "a\\b", None, None, "a\\b"]
    assert column.tolist(vi.NAN)[2:4] != [None, None]
