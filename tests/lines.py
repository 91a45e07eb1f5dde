"""Hand-written dump lines for the tests, column by column (docs/format.md)."""


def data_line(ritz="     5000.12345", measured="     5000.12000", species="  2601",
              loggf="  -1.234", lower_energy="     5740.4501", lower_j="   4.0",
              upper_energy="    25899.9876", upper_j="   3.5", lower_lande="   1.50",
              upper_lande="  99.00", mean_lande="   1.25", gammarad="  8.120",
              gammastark=" -5.670", gammawaals=" 312.245", lower_coupling="LS",
              lower_term="3d6.4s2 a5D", upper_coupling="JK",
              upper_term="3p5.(2P*<3/2>).4f 2[9/2]*", accurflag="N", accur="B+",
              transition_flag=" ", broadening="3", comment='a\\b "c" 10%',
              lls=(1, 2, 3, 4, 5, 6, 7, 8, 9)):
    """A 365-character data line; every argument is the exact text of its columns."""
    widths = [(ritz, 15), (measured, 15), (species, 6), (loggf, 8), (lower_energy, 14),
              (lower_j, 6), (upper_energy, 14), (upper_j, 6), (lower_lande, 7),
              (upper_lande, 7), (mean_lande, 7), (gammarad, 7), (gammastark, 7),
              (gammawaals, 8)]
    for text, width in widths:
        assert len(text) == width, (text, width)
    line = "".join(text for text, _ in widths)
    line += lower_coupling.ljust(2) + lower_term.ljust(86) + upper_coupling.ljust(2)
    line += upper_term.ljust(86) + " " + accurflag + accur.ljust(6) + transition_flag + broadening
    line += comment.ljust(16) + "".join(f"{ll:4d}" for ll in lls)
    assert len(line) == 365
    return line


REFERENCE = "wl:K14,iso:BWL gf:K14 E1 E2 La gr:Gr St Wa Wb"
HEADER = ["    4000.0,   6000.0, 2, 2, 'synthetic'", "  Elm Ion  WL_air(A)  log gf  E_low ..."]


def dump(*records, header=HEADER):
    """Dump bytes: header lines, then each record (a line or a (data, reference) pair)."""
    lines = list(header)
    for record in records:
        lines.extend([record] if isinstance(record, str) else record)
    return ("\n".join(lines) + "\n").encode()
