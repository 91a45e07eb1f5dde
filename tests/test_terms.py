"""Quantum numbers decoded from level descriptions, per coupling, stored on three engines."""
import re
from collections import Counter

import pytest

import valdimport as vi
from node_atom.models import State
from tests.conftest import summary_rows, write_dump
from tests.lines import data_line, dump

ATOM, MOLECULE = 2601, 10001
# (coupling, description, expected values; config/term given where the split is the point)
DESCRIPTIONS = [
    # LS: S from the multiplicity before the last L letter, parity from *, seniority digit
    ("LS", "3d6.4s2 a5D", dict(config="3d6.4s2", term="a5D", S=2.0, L=2, P="2")),
    ("LS", "3d7.(4F).4p z5G*", dict(config="3d7.(4F).4p", term="z5G*", S=2.0, L=4, P="1")),
    ("LS", "2p6.3s2.3p 3(3G)5H", dict(term="3(3G)5H", S=2.0, L=5, P="2")),
    ("LS", "3d3 2D2", dict(S=0.5, L=2, Sn=2, P="2")),
    ("LS", "3d6.(5D).4s.4p.(3P*) y3F*", dict(S=1.0, L=3, P="1")),
    ("LS", "4s2 1S", dict(S=0.0, L=0, P="2")),
    ("LS", "4f7.(8S*).5d.6s.(3D) e10D*", dict(S=4.5, L=2, P="1")),
    ("LS", "3p5\\ 4s.(3P) b4P", dict(config="3p5\\ 4s.(3P)", term="b4P", S=1.5, L=1, P="2")),
    ("LS", "4f3 4I*", dict(S=1.5, L=6, P="1")),
    # JJ: (J1,J2)
    ("JJ", "4f13.(2F*<7/2>).6s.6p (7/2,3/2)", dict(term="(7/2,3/2)", J1=3.5, J2=1.5, P="2")),
    ("JJ", "5d9.6p (5/2,1/2)*", dict(J1=2.5, J2=0.5, P="1")),
    ("JJ", "3d2.(3G<5>).4s.4d (5,3/2)", dict(J1=5.0, J2=1.5, P="2")),
    ("JJ", "2p.4s (3/2,1/2)*", dict(J1=1.5, J2=0.5, P="1")),
    # JK: 2S2+1[K] or (S2)[K], Jc from <Jc> in the configuration
    ("JK", "3p5.(2P*<3/2>).4f 2[9/2]*", dict(S2=0.5, K=4.5, Jc=1.5, P="1")),
    ("JK", "3p5.(2P*<1/2>).5g (1/2)[7/2]", dict(S2=0.5, K=3.5, Jc=0.5, P="2")),
    ("JK", "3d2.(3D<2>).6g (1/2)[3]", dict(S2=0.5, K=3.0, Jc=2.0, P="2")),
    ("JK", "3d4.(3S<1>).5f 1[3]*", dict(S2=0.0, K=3.0, Jc=1.0, P="1")),
    ("JK", "3d7.(4F<9/2>).4s.(5F<5>).5g 2[11/2]", dict(S2=0.5, K=5.5, Jc=5.0, P="2")),  # the last <Jc>
    # LK: as JK, L from the letter after "\ " in the configuration
    ("LK", "2p.(2P*).3d\\ P 2[3/2]*", dict(config="2p.(2P*).3d\\ P", term="2[3/2]*",
                                           L=1, S2=0.5, K=1.5, P="1")),
    ("LK", "4f.(2F*).5g\\ G 2[3/2]*", dict(L=4, S2=0.5, K=1.5, P="1")),
    ("LK", "3d5.(2H).4f\\ L 2[15/2]", dict(L=8, S2=0.5, K=7.5, P="2")),
    # H/He-like levels
    ("", "n=5", dict(config="n=5", n=5)),
    # molecules: label,2S+1,|Lambda|,parity,|Omega| (Ha) or N (Hb),v[,g/u or a/s]
    ("Ha", "X,2,1,e,0.5,0", dict(elecstate="X", S=0.5, Lambda=1, kronig_parity="e", Omega=0.5, v=0)),
    ("Ha", "A,2,1,f,1.5,2", dict(elecstate="A", S=0.5, Lambda=1, kronig_parity="f", Omega=1.5, v=2)),
    ("Hb", "A,2,0,+,3,1", dict(elecstate="A", S=0.5, Lambda=0, P="+", rotN=3, v=1)),
    ("Hb", "X,1,0,+,0,1,g", dict(elecstate="X", S=0.0, Lambda=0, P="+", rotN=0, v=1, elec_inversion="g")),
    ("Hb", "B,1,0,0,13,0", dict(elecstate="B", S=0.0, Lambda=0, P="0", rotN=13, v=0)),
    ("Hb", "a,3,1,-,5,2,u", dict(elecstate="a", S=1.0, Lambda=1, P="-", rotN=5, v=2, elec_inversion="u")),
    ("Hb", "X,1,0,-,2,0,a", dict(elecstate="X", S=0.0, Lambda=0, P="-", rotN=2, v=0, asSym="a")),
]
# Real VALD material the generator never writes (hand-written here, in the dump's layout):
MOLECULES_WITH_CONFIGURATION = [  # config, first unescaped blank, then the molecular term
    ("Hb", "3s2.4s2.1p4.5s1 X,2,0,e,12,1", dict(
        config="3s2.4s2.1p4.5s1", term="X,2,0,e,12,1", elecstate="X", S=0.5, Lambda=0,
        kronig_parity="e", rotN=12, v=1)),
    ("Ha", "3s2.4s2.1p3.5s2 A,2,1,f,1.5,2", dict(
        config="3s2.4s2.1p3.5s2", term="A,2,1,f,1.5,2", elecstate="A", S=0.5, Lambda=1,
        kronig_parity="f", Omega=1.5, v=2)),
    ("Hb", "2s2.2p2 a,3,1,-,4,1,u", dict(
        config="2s2.2p2", term="a,3,1,-,4,1,u", elecstate="a", S=1.0, Lambda=1, P="-", rotN=4, v=1,
        elec_inversion="u")),
    ("Hb", "1s2.2s\\ 1p4 B,2,0,+,7,0", dict(
        config="1s2.2s\\ 1p4", term="B,2,0,+,7,0", elecstate="B", S=0.5, Lambda=0, P="+", rotN=7, v=0)),
]
KURUCZ_JK = [  # Kurucz's labels Jc[K] of predicted levels, "n+" = n + 1/2 (see README)
    ("JK", "s6g 4+[5+]", dict(config="s6g", term="4+[5+]", Jc=4.5, K=5.5, P="2")),
    ("JK", "s5f 3+[2+]*", dict(config="s5f", term="3+[2+]*", Jc=3.5, K=2.5, P="1")),
    ("JK", "4s6g 0+[4+]", dict(config="4s6g", term="0+[4+]", Jc=0.5, K=4.5, P="2")),
    ("JK", "s7h 4+[0+]*", dict(config="s7h", term="4+[0+]*", Jc=4.5, K=0.5, P="1")),
]
HYPERFINE = [  # a level of a hyperfine line list: the fine-structure term, then F (kept in term)
    ("LS", "3d.4s2 a2D F=3", dict(config="3d.4s2", term="a2D F=3", S=0.5, L=2, P="2")),
    ("LS", "3d2.(3F).4p z4G* F=11/2", dict(config="3d2.(3F).4p", term="z4G* F=11/2", S=1.5, L=4, P="1")),
    ("JJ", "6s.6p (1/2,3/2)* F=5/2", dict(config="6s.6p", term="(1/2,3/2)* F=5/2", J1=0.5, J2=1.5, P="1")),
]
REAL = MOLECULES_WITH_CONFIGURATION + KURUCZ_JK + HYPERFINE
UNDECODABLE = [
    ("LS", "3d6.4s2 ???", dict(config="3d6.4s2", term="???")),  # no L letter
    ("LS", "s6g 4+[5+]", dict(config="s6g", term="4+[5+]")),  # a Kurucz JK term, but flagged LS
    ("JJ", "4f13.6s (7/2 3/2)", dict(config="4f13.6s", term="(7/2 3/2)")),  # no comma
    ("Ha", "X,2,one,e,0.5,0", dict()),  # Lambda is not a number
    ("Hb", "X,1,0,+", dict()),  # too few fields
    ("Hb", "1s2.2s2 X,1,0", dict(config="1s2.2s2", term="X,1,0")),  # a configuration, a short term
    ("", "3d6 a5D", dict(config="3d6", term="a5D")),  # no coupling to decode it with
]


def expected_row(values):
    return {**dict.fromkeys(vi.LEVEL_QN_COLUMNS), **values}


def species_of(coupling):
    return MOLECULE if coupling in ("Ha", "Hb") else ATOM


@pytest.mark.parametrize("coupling, description, values", DESCRIPTIONS + REAL + UNDECODABLE,
                         ids=[d for _, d, _ in DESCRIPTIONS + REAL + UNDECODABLE])
def test_decoded_quantum_numbers(coupling, description, values):
    decoded = dict(zip(vi.LEVEL_QN_COLUMNS, vi.decode_level(
        coupling or None, description, vi.is_molecule(species_of(coupling), coupling or None))))
    expected = expected_row(values)
    if "config" not in values and coupling not in ("Ha", "Hb"):
        expected["config"], expected["term"] = vi.split_description(description)
    elif coupling in ("Ha", "Hb") and "term" not in values:  # no configuration: all term
        expected["term"] = description
    assert decoded == expected


ORBITAL = re.compile(r"(\d+)([spdfghiklmnoq])(\d*)\Z")
QUIRKS = ('"', "\\", "%")  # how the generator makes a description undecodable, at its end


def parity_of(config):
    """1 (odd) or 2 (even) from the orbitals of a configuration: the sum of l x occupancy."""
    total = 0
    for piece in config.replace("'", "").split("."):
        match = ORBITAL.match(piece.split("\\")[0])
        if match:
            total += "spdfghiklmnoq".index(match[2]) * int(match[3] or 1)
    return "1" if total % 2 else "2"


def within(j, a, b):
    return abs(a - b) - 1e-9 <= j <= a + b + 1e-9


def test_every_level_of_the_sample_decodes_consistently_with_its_j_and_parity(sample_lines):
    """Not the decoder's own table: the bundled sample's 1,460 levels obey angular-momentum
    coupling (J within what the decoded numbers allow) and the parity of their configuration,
    and only the generator's deliberately broken descriptions stay undecoded."""
    levels = {}
    for line in sample_lines[2:]:
        if line[:1].islower():
            continue
        record = vi.parse_record(line.decode().rstrip("\n"), None)
        levels.update({record.lower_key: record.lower, record.upper_key: record.upper})
    checked = Counter()
    for state in levels.values():
        row = state
        coupling, description, j = row["coupling_case"], row["term_desc"], row["J_scaled"] / 10
        decoded = {c: row[c] for c in vi.DECODED_QN_COLUMNS if row[c] is not None}
        if description.endswith(QUIRKS):
            assert decoded == {}, description
            continue
        checked[coupling] += 1
        known_j = row["J_scaled"] >= 0
        if coupling == "LS":
            assert not known_j or within(j, decoded["L"], decoded["S"]), (description, j, decoded)
        elif coupling == "JJ":
            assert not known_j or within(j, decoded["J1"], decoded["J2"]), (description, j, decoded)
        elif coupling in ("JK", "LK"):
            assert not known_j or within(j, decoded["K"], decoded["S2"]), (description, j, decoded)
            assert ("Jc" in decoded) == ("<" in row["config"]) and ("L" in decoded) == (coupling == "LK")
        elif coupling == "Ha":
            assert not known_j or (j >= decoded["Omega"] and (j - decoded["Omega"]) % 1 == 0), description
        elif coupling == "Hb":
            assert not known_j or within(j, decoded["rotN"], decoded["S"]), (description, j, decoded)
        else:
            assert decoded == {"n": int(description[2:])}, description
        if coupling in ("LS", "JJ", "JK", "LK"):
            assert decoded["P"] == parity_of(row["config"]), description
    assert min(checked.values()) >= 50 and set(checked) == {"LS", "JJ", "JK", "LK", "Ha", "Hb", None}


def test_a_molecule_without_hund_case_keeps_what_it_can():
    decoded = dict(zip(vi.LEVEL_QN_COLUMNS, vi.decode_level(None, "X,2,1,e,0.5,0", True)))
    assert (decoded["elecstate"], decoded["Lambda"], decoded["Omega"], decoded["rotN"]) == ("X", 1, None, None)


def test_each_distinct_description_is_decoded_once():
    vi.decode_level.cache_clear()
    for _ in range(3):
        vi.parse_record(data_line(), None)
    info = vi.decode_level.cache_info()
    assert (info.misses, info.hits) == (2, 4)


def test_split_keeps_escaped_blanks_in_the_configuration():
    assert vi.split_description("3d9.(2D).4f\\ 2D 2[5/2]") == ("3d9.(2D).4f\\ 2D", "2[5/2]")
    assert vi.split_description("n=5") == ("n=5", None)
    assert vi.split_description("") == (None, None)


def test_quantum_numbers_are_stored(engine, tmp_path):
    cases = DESCRIPTIONS + REAL + UNDECODABLE
    lines = []
    for i, (coupling, description, _) in enumerate(cases):
        upper = dict(upper_coupling="Hb", upper_term="X,1,0,+,1,0") if species_of(coupling) == MOLECULE else {}
        lines.append(data_line(species=f"{species_of(coupling):6d}", lower_coupling=coupling,
                               lower_term=description, lower_energy=f"{1000 + i:14.4f}",
                               ritz=f"{5000 + i:15.5f}", **upper))
    summary = vi.import_dump(str(write_dump(tmp_path / "terms.dat", [dump(*lines)])), using=engine)
    assert summary.tally.imported == len(cases)
    assert summary.tally.undecoded == len(UNDECODABLE)
    rows = summary_rows(summary.table())
    assert rows["undecoded levels"].startswith(f"{len(UNDECODABLE)} ")
    per_coupling = Counter(c for c, _, _ in UNDECODABLE)
    assert [c or "" for c, _, _ in summary.tally.undecoded_by_coupling] == sorted(
        per_coupling)  # one row per coupling, each with an example of its own
    for coupling, n in per_coupling.items():
        count, _, example = rows[coupling or "no coupling"].partition("  e.g. ")
        assert count == str(n)
        assert example in {d for c, d, _ in UNDECODABLE if c == coupling}, (coupling, example)
    for i, (coupling, description, values) in enumerate(cases):
        state = State.objects.using(engine).get(energy_scaled=(1000 + i) * 10_000)
        assert state.term_desc == description
        assert state.coupling_case == (coupling or None)
        stored = {c: getattr(state, c) for c in vi.LEVEL_QN_COLUMNS}
        decoded = dict(zip(vi.LEVEL_QN_COLUMNS, vi.decode_level(
            coupling or None, description, vi.is_molecule(species_of(coupling), coupling or None))))
        assert stored == decoded, description
        for name, value in values.items():
            assert stored[name] == value, (description, name)
