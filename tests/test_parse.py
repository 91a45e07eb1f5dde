"""The fixed-width parser: every field of the data line, the reference line, line kinds."""
from decimal import Decimal

import pytest

import valdimport as vi
from tests.conftest import key_parts
from tests.lines import REFERENCE, data_line, dump


def transition_values(record):
    return record.transition


def state_values(row):
    return row


def test_field_definitions_cover_every_column_exactly_once():
    covered = []
    for f in vi.DATA_FIELDS:
        assert f.start < f.end
        covered.extend(range(f.start, f.end))
    assert covered == list(range(365))
    assert vi.LINE_WIDTH == 365


def test_every_field_of_a_hand_written_line():
    record = vi.parse_record(data_line(), REFERENCE)
    t = transition_values(record)
    assert t["species_id"] == 2601
    assert t["wave"] == "5000.12000"  # measured wins over Ritz
    assert t["waveritz"] == "5000.12345"
    assert t["loggf"] == "-1.234"
    assert t["gammarad"] == "8.120"
    assert t["gammastark"] == "-5.670"
    assert (t["gammawaals"], t["sigmawaals"], t["alphawaals"]) == (None, 312, "0.245")
    assert (t["accurflag"], t["accur"], t["loggf_err"]) == ("N", "B+", 0.030)
    assert (t["transition_type"], t["autoionized"]) == ("E1", False)
    assert t["comment"] == 'a\\b "c" 10%'
    assert [t[f"ll{i}"] for i in range(1, 10)] == list(range(1, 10))
    assert t["wave_ref_id"] == "K14,BWL"
    assert t["loggf_ref_id"] == "K14"
    assert t["waveritz_ref_id"] == "E1,E2"  # from the two level energies
    assert (t["gammarad_ref_id"], t["gammastark_ref_id"], t["waals_ref_id"]) == ("Gr", "St", "Wa")
    lower, upper = state_values(record.lower), state_values(record.upper)
    no_qn = dict.fromkeys(vi.LEVEL_QN_COLUMNS)
    assert lower == dict(no_qn, species_id=2601, energy="5740.4501", energy_scaled=57404501,
                         J="4.0", J_scaled=40, lande="1.50", term_desc="3d6.4s2 a5D",
                         coupling_case="LS", energy_linelist_id=3, energy_method=None,
                         energy_ref_id="E1", lande_ref_id="La", level_ref_id="Wb",
                         config="3d6.4s2", term="a5D", S=2.0, L=2, P="2")
    assert upper == dict(no_qn, species_id=2601, energy="25899.9876", energy_scaled=258999876,
                         J="3.5", J_scaled=35, lande=None, term_desc="3p5.(2P*<3/2>).4f 2[9/2]*",
                         coupling_case="JK", energy_linelist_id=4, energy_method=None,
                         energy_ref_id="E2", lande_ref_id="La", level_ref_id="Wb",
                         config="3p5.(2P*<3/2>).4f", term="2[9/2]*", S2=0.5, K=4.5, Jc=1.5, P="1")
    assert key_parts(record.lower_key) == (2601, 57404501, 40)
    assert key_parts(record.upper_key) == (2601, 258999876, 35)


@pytest.mark.parametrize("text, expected", [
    ("   0.000", (None, None, None)),          # unknown
    ("  -7.520", ("-7.520", None, None)),       # log10 gamma6
    (" 312.245", (None, 312, "0.245")),         # sigma.alpha, split from the digits
    ("  99.010", (None, 99, "0.010")),
    ("   1.300", (None, 1, "0.300")),
])
def test_van_der_waals_sign_decides_gamma6_or_sigma_alpha(text, expected):
    t = transition_values(vi.parse_record(data_line(gammawaals=text), None))
    assert (t["gammawaals"], t["sigmawaals"], t["alphawaals"]) == expected


def test_null_sentinels():
    line = data_line(measured=" " * 15, loggf=" " * 8, lower_j="     X", upper_j=" " * 6,
                     lower_lande="  99.00", gammarad="  0.000", gammastark="  0.000",
                     gammawaals="   0.000", accurflag=" ", accur="", comment="", lls=(0,) * 9)
    record = vi.parse_record(line, None)
    t = transition_values(record)
    assert t["wave"] == "5000.12345" == t["waveritz"]  # no measured value: Ritz
    for name in ("loggf", "einsteina", "gammarad", "gammastark", "gammawaals", "sigmawaals",
                 "alphawaals", "accurflag", "accur", "loggf_err", "comment", "wave_ref_id"):
        assert t[name] is None, name
    assert [t[f"ll{i}"] for i in range(1, 10)] == [None] * 9
    lower, upper = state_values(record.lower), state_values(record.upper)
    assert (lower["J"], lower["J_scaled"], lower["lande"]) == (None, vi.UNKNOWN_J, None)
    assert (upper["J"], upper["J_scaled"]) == (None, vi.UNKNOWN_J)


def test_a_short_line_is_padded_not_rejected():
    line = data_line(comment="")[:329].rstrip()  # as if trailing blanks were stripped
    assert len(line) < 329
    record = vi.parse_record(line, None)
    assert transition_values(record)["ll9"] is None


@pytest.mark.parametrize("coupling, description", [
    ("LS", "3d7.(4F).4p z5G*"),
    ("LS", "2p6.3s2.3p 3(3G)5H"),
    ("JJ", "4f13.(2F*<7/2>).6s.6p (7/2,3/2)"),
    ("JK", "3p5.(2P*<1/2>).5g (1/2)[7/2]"),
    ("LK", "4f.(2F*).5g\\ G 2[3/2]*"),
    ("  ", "n=5"),
    ("Ha", "X,2,1,e,0.5,0"),
    ("Hb", "A,2,0,+,3,1,g"),
    ("LS", " 3d6.4s2 a5D 'quoted' \"double\" 100% \\\\"),
])
def test_level_descriptions_are_kept_byte_exact(coupling, description):
    record = vi.parse_record(data_line(lower_coupling=coupling, lower_term=description), None)
    lower = state_values(record.lower)
    assert lower["term_desc"] == description  # leading blanks and backslashes kept
    assert lower["coupling_case"] == (coupling.strip() or None)


@pytest.mark.parametrize("flag, accur, error", [
    ("N", "AAA", 0.0013), ("N", "AA", 0.0043), ("N", "A+", 0.0087), ("N", "A", 0.013),
    ("N", "B", 0.043), ("N", "C+", 0.079), ("N", "C", 0.11), ("N", "D+", 0.18),
    ("N", "D-", 0.22), ("N", "E", 0.5), ("E", "0.120", 0.12), ("E", "-0.05", 0.05),
    ("_", "B+", 0.030), (" ", "C", 0.11), ("C", "0.5", None), ("P", "A", None),
    ("N", "", None), ("E", "x", None),
])
def test_log_gf_error_from_accuracy(flag, accur, error):
    t = transition_values(vi.parse_record(data_line(accurflag=flag, accur=accur), None))
    assert t["loggf_err"] == error


@pytest.mark.parametrize("flag, lower, upper, expected", [
    (" ", "     5740.4501", "    25899.9876", ("E1", False)),
    ("B", "     5740.4501", "    25899.9876", ("E2", False)),
    ("C", "     5740.4501", "    25899.9876", ("M1", False)),
    ("D", "     5740.4501", "    25899.9876", ("M2", False)),
    ("E", "     5740.4501", "    25899.9876", ("E3", False)),
    ("F", "     5740.4501", "    25899.9876", ("M3", False)),
    ("A", "     5740.4501", "    25899.9876", ("E1", False)),  # A but lower < upper: E1
    ("A", "    95740.4501", "    25899.9876", (None, True)),   # autoionisation
])
def test_transition_type_and_autoionisation(flag, lower, upper, expected):
    line = data_line(transition_flag=flag, lower_energy=lower, upper_energy=upper)
    t = transition_values(vi.parse_record(line, None))
    assert (t["transition_type"], t["autoionized"]) == expected


@pytest.mark.parametrize("loggf, j_upper, wave", [
    ("  -1.234", "   3.5", "     5000.12000"),
    ("   0.500", "   0.0", "      200.00000"),
    ("  -7.000", "  12.5", "    90000.00000"),
])
def test_einstein_a_follows_the_formula(loggf, j_upper, wave):
    record = vi.parse_record(data_line(loggf=loggf, upper_j=j_upper, measured=wave), None)
    expected = 0.667025e16 * 10 ** float(loggf) / ((2 * float(j_upper) + 1) * float(wave) ** 2)
    assert transition_values(record)["einsteina"] == pytest.approx(expected, rel=1e-12)


def test_einstein_a_needs_j_upper_and_log_gf_and_can_be_skipped():
    assert transition_values(vi.parse_record(data_line(upper_j="     X"), None))["einsteina"] is None
    assert transition_values(vi.parse_record(data_line(loggf=" " * 8), None))["einsteina"] is None
    assert transition_values(vi.parse_record(data_line(), None, skip_calc=True))["einsteina"] is None


def test_energy_key_comes_from_the_digits_not_floats():
    assert vi.scaled_int("5740.4501", 4, "e") == 57404501
    assert vi.scaled_int("-12.5000", 4, "e") == -125000
    assert vi.scaled_int(".5000", 4, "e") == 5000
    assert vi.scaled_int("0.1", 4, "e") == 1000
    # 0.1 + 0.2 style float noise cannot reach the key
    assert vi.scaled_int("49999.9999", 4, "e") == 499999999
    with pytest.raises(vi.RejectedLine):
        vi.scaled_int("1.23456", 4, "energy")


@pytest.mark.parametrize("changes, reason", [
    (dict(loggf="********"), "log gf is not a number"),
    (dict(lower_energy="**************"), "lower energy is not a number"),
    (dict(species="   abc"), "species index is not an integer"),
    (dict(species="      "), "no species index"),
    (dict(ritz=" " * 15, measured=" " * 15), "no wavelength"),
    (dict(upper_energy=" " * 14), "no upper energy"),
    (dict(gammarad="    nan"), "gammarad is not a number"),
    (dict(gammarad="  1_0.0"), "gammarad is not a number"),
    (dict(transition_flag="Z"), "unknown transition flag"),
    (dict(accurflag="Q"), "unknown accurflag"),
    (dict(lower_j="  -1.0"), "lower J is negative"),
])
def test_bad_fields_reject_the_line_with_a_reason(changes, reason):
    with pytest.raises(vi.RejectedLine, match=reason):
        vi.parse_record(data_line(**changes), None)


def test_a_negative_line_list_id_is_still_an_integer():
    record = vi.parse_record(data_line(lls=(1, 2, 3, 4, 5, 6, 7, 8, -1)), None)
    assert [transition_values(record)[f"ll{i}"] for i in range(1, 10)] == [1, 2, 3, 4, 5, 6, 7, 8, -1]


def test_reference_keys_per_quantity():
    keys = vi.reference_keys("wl:K14,iso:BWL gf:K14 K14 K14 K14 gr:K14 K14 K14 K14")
    assert keys == ("K14,BWL", "K14", "K14", "K14", "K14", "K14", "K14", "K14", "K14")
    assert vi.reference_keys("wl:Wa WA") == ("Wa", "WA") + (None,) * 7
    # "+" joins two keys, as "," does: each resolves on its own in refs
    assert vi.reference_keys("wl:SR+Sm gf:SR+gf:Sm")[:3] == ("SR,Sm", "SR,Sm", None)
    assert vi.field_keys("wl:K14,iso:BWL+FMW") == "K14,BWL,FMW"
    with pytest.raises(vi.RejectedLine, match="10 fields"):
        vi.reference_keys(" ".join(["wl:K14"] * 10))


def test_batch_counts_every_line_kind():
    lines = dump(
        (data_line(), REFERENCE),
        "# a comment",
        "",
        "   Unknown species in extraction",
        data_line(loggf="********"),
        "gf:K14 K14",  # the reference line of the rejected line goes with it
        (data_line(species="    26"), REFERENCE),
        "wl:stray K14",  # a second reference line for one data line
    ).splitlines(keepends=True)
    parsed = vi.parse_batch(b"".join(lines), 1)
    assert parsed.records == 2
    assert parsed.skipped == {"header": 2, "reference": 3, "comment": 1, "blank": 1, "unknown": 1}
    assert [(n, reason) for n, reason, _ in parsed.rejects] == [
        (8, "log gf is not a number: '********'"),
        (12, "reference line without a data line before it"),
    ]
    assert parsed.rejects[0][2] == data_line(loggf="********")
    assert len(lines) == parsed.records + sum(parsed.skipped.values()) + len(parsed.rejects)
    assert parsed.species_ids == {2601, 26}


def test_binary_garbage_and_long_lines_are_rejected():
    lines = [b"h1\n", b"h2\n", b"\x00\x01\xff garbage\n", (data_line() + "  extra").encode() + b"\n",
             data_line().encode() + b"\t\n"]
    parsed = vi.parse_batch(b"".join(lines), 1)
    assert parsed.records == 0
    reasons = [reason for _, reason, _ in parsed.rejects]
    assert reasons[0].startswith("not UTF-8 text")
    assert reasons[1].startswith("text after column 365")
    assert reasons[2].startswith("control characters")


def test_parse_batch_keeps_the_first_description_of_a_level():
    first = data_line(lower_term="first description")
    second = data_line(lower_term="second description", ritz="     6000.00000")
    parsed = vi.parse_batch(dump(first, second), 1)
    assert parsed.records == 2
    levels = dict(zip(parsed.keys[parsed.carried], parsed.levels.tuples()))
    assert len(levels) == 2
    assert dict(zip(vi.STATE_COLUMNS[2:], levels[vi.level_key(2601, 57404501, 40)]))["term_desc"] \
        == "first description"


def test_stored_decimal_text_is_exact():
    t = transition_values(vi.parse_record(data_line(ritz="  123456789.12345"[2:]), None))
    assert Decimal(t["waveritz"]) == Decimal("123456789.12345")


@pytest.mark.parametrize("changes, reason", [
    (dict(loggf="12345678"), "log gf has no decimal point"),
    (dict(loggf="      -2"), "log gf has no decimal point"),
    (dict(loggf="  -1.2345"[1:]), "log gf has more than 3 decimals"),
    (dict(loggf="   -1.50"), "log gf has fewer than 3 decimals"),
    (dict(lower_energy="  5740.450123"[-14:].rjust(14)), "lower energy has more than 4 decimals"),
    (dict(upper_energy="            53"), "upper energy has no decimal point"),  # cut at column 70
    (dict(upper_energy="      53991.85"), "upper energy has fewer than 4 decimals"),
    (dict(ritz="123456789012345"), "Ritz wavelength has no decimal point"),
    (dict(ritz="      5000.1234"), "Ritz wavelength has fewer than 5 decimals"),
    (dict(upper_j="     4"), "upper J has no decimal point"),
    (dict(lower_j="   4.50"[1:]), "lower J has more than 1 decimals"),
    (dict(lower_lande="  1.234"), "lower_lande has more than 2 decimals"),
    (dict(lower_lande=" 1.2000"), "lower_lande has more than 2 decimals"),
    (dict(mean_lande="    1.2"), "mean_lande has fewer than 2 decimals"),
    (dict(gammawaals="   312.2"), "gammawaals has fewer than 3 decimals"),
])
def test_a_numeric_field_that_is_not_a_complete_fortran_f_field_is_rejected(changes, reason):
    """The F format prints the point and exactly its decimals: anything else was cut off
    or did not come from the format (and would be padded or rounded in its column)."""
    with pytest.raises(vi.RejectedLine, match=reason):
        vi.parse_record(data_line(**changes), None)


@pytest.mark.parametrize("changes, read", [
    (dict(loggf="  -1.500"), lambda r: Decimal(r.transition["loggf"]) == Decimal("-1.5")),
    (dict(ritz="     5000.00000"), lambda r: Decimal(r.transition["waveritz"]) == 5000),
    (dict(loggf="   -.500"), lambda r: Decimal(r.transition["loggf"]) == Decimal("-0.5")),
    (dict(lower_j="    .5"), lambda r: (Decimal(r.lower["J"]), r.lower["J_scaled"]) == (Decimal("0.5"), 5)),
    (dict(gammawaals="  +1.300"), lambda r: (r.transition["gammawaals"], r.transition["sigmawaals"],
                                            r.transition["alphawaals"]) == (None, 1, "0.300")),
])
def test_complete_f_fields_are_accepted_with_their_values(changes, read):
    assert read(vi.parse_record(data_line(**changes), None))


@pytest.mark.parametrize("cut", [70, 180, 340, 364])
def test_a_last_line_cut_off_without_an_end_of_line_is_rejected_as_truncated(cut):
    lines = dump(data_line(), data_line(ritz="     6000.00000")).splitlines(keepends=True)
    lines[-1] = lines[-1][:cut]  # an interrupted download: no end of line
    parsed = vi.parse_batch(b"".join(lines), 1)
    assert parsed.records == 1
    (number, reason, raw), = parsed.rejects
    assert number == 4 and raw == data_line(ritz="     6000.00000")[:cut]
    assert reason.startswith("truncated input: the last line stops at column")


def test_a_complete_last_line_without_an_end_of_line_is_imported():
    lines = dump(data_line(), data_line(ritz="     6000.00000")).splitlines(keepends=True)
    lines[-1] = lines[-1].rstrip(b"\n")
    assert vi.parse_batch(b"".join(lines), 1).records == 2


def test_a_reference_line_the_input_ends_in_rejects_its_record():
    lines = dump(data_line(), (data_line(ritz="     6000.00000"), REFERENCE)).splitlines(keepends=True)
    lines[-1] = lines[-1][:12]  # "wl:K14,iso:B": a key may be cut off
    parsed = vi.parse_batch(b"".join(lines), 1)
    assert parsed.records == 1
    (number, reason, _), = parsed.rejects
    assert number == 4 and "ends inside this record's reference line" in reason


def test_a_reference_key_longer_than_its_column_is_rejected():
    with pytest.raises(vi.RejectedLine, match="loggf reference .* longer than its column"):
        vi.parse_record(data_line(), "wl:K14 gf:" + "x" * 65)


def test_decimal_columns_keep_what_the_format_prints():
    """Each F-format field and its column: same decimals, integer digits to spare."""
    from node_atom.models import State, Transition
    from node_common.models import REF_KEY_LENGTH
    columns = {"wave_ritz": Transition._meta.get_field("waveritz"),
               "wave_measured": Transition._meta.get_field("wave"),
               "loggf": Transition._meta.get_field("loggf"),
               "lower_energy": State._meta.get_field("energy"), "lower_j": State._meta.get_field("J"),
               "lower_lande": State._meta.get_field("lande"),
               "gammarad": Transition._meta.get_field("gammarad"),
               "gammastark": Transition._meta.get_field("gammastark"),
               "gammawaals": Transition._meta.get_field("gammawaals")}
    for name, column in columns.items():
        f = vi.FIELD[name]
        assert (column.max_digits, column.decimal_places) == (f.width - 1, f.places), name
    assert vi.REF_KEY_LENGTH == REF_KEY_LENGTH == Transition._meta.get_field("wave_ref_id").max_length


@pytest.mark.parametrize("parts", [(2601, 57404501, 40), (1, 0, -1), (999999, 9999999999999, 99999),
                                   (10001, -125000, 5), (26, -1, -1)])
def test_level_keys_pack_and_unpack_exactly(parts):
    assert key_parts(vi.level_key(*parts)) == parts


def test_level_keys_differ_when_any_part_differs():
    keys = {vi.level_key(s, e, j) for s in (1, 2, 999999) for e in (-1, 0, 1, 10**13) for j in (-1, 0, 5, 99999)}
    assert len(keys) == 3 * 4 * 4
