#!/usr/bin/env python3
"""valdimport: load a VALD line dump into a VAMDC node database.

The dump is one fixed-width text file: a data line per transition, each
usually followed by a reference line, both levels of the transition inline.
Two passes fill the database (``import-states`` then ``import-transitions``)
or one pass does both per batch (``import``); the same code writes SQLite,
PostgreSQL and MySQL through Django's connections.

    gunzip -c vald3_atoms_all.dat.gz | python valdimport.py import-states
    gunzip -c vald3_atoms_all.dat.gz | python valdimport.py import-transitions

Then ``verify``, ``check-indexes``, ``runs``, ``rollback`` and ``housekeeping``
look after what was imported.

The byte layout is documented in FORMAT.md; run ``python valdimport.py --help``.
"""
from __future__ import annotations

import argparse
import bz2
import functools
import gzip
import hashlib
import io
import json
import lzma
import math
import os
import re
import socket
import struct
import sys
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from operator import itemgetter
from pathlib import Path

try:
    from django.core.management.base import BaseCommand, CommandError
    from django.db import DEFAULT_DB_ALIAS, connections, transaction
    DJANGO_MISSING = None
except ImportError as error:  # --help still answers; any command then says what to install
    DJANGO_MISSING = error
    BaseCommand, CommandError, DEFAULT_DB_ALIAS = object, Exception, "default"
    connections = transaction = None

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3


class ValdImportError(Exception):
    """An error the user can fix; printed as one line, with ``exit_code``."""

    exit_code = EXIT_FAILED


class UsageError(ValdImportError):
    """Bad usage or configuration: missing file, bad URL, unreachable database."""

    exit_code = EXIT_USAGE


class RejectedLine(ValueError):
    """A data line that cannot be imported; the message is the reason."""


# ---------------------------------------------------------------- format ----

@dataclass(frozen=True)
class FieldDef:
    """One fixed-width field of the data line: columns [start, end), 0-based."""

    name: str
    start: int
    end: int
    kind: str  # "decimal", "int", "j", "text", "char", "waals"
    null: float | None = None  # numeric sentinel meaning "unknown"
    required: bool = False
    places: int = 0  # decimals of an F format; its column keeps exactly these

    @property
    def width(self) -> int:
        return self.end - self.start


# Fortran: 2F15.5,I6,F8.3,2(F14.4,F6.1),3F7.2,2F7.3,F8.3,A2,A86,A2,A86,1X,A1,A7,1X,A16,9I4
DATA_FIELDS = (
    FieldDef("wave_ritz", 0, 15, "decimal", places=5),
    FieldDef("wave_measured", 15, 30, "decimal", places=5),
    FieldDef("species_id", 30, 36, "int", required=True),
    FieldDef("loggf", 36, 44, "decimal", places=3),
    FieldDef("lower_energy", 44, 58, "decimal", required=True, places=4),
    FieldDef("lower_j", 58, 64, "j", places=1),
    FieldDef("upper_energy", 64, 78, "decimal", required=True, places=4),
    FieldDef("upper_j", 78, 84, "j", places=1),
    FieldDef("lower_lande", 84, 91, "decimal", null=99.0, places=2),
    FieldDef("upper_lande", 91, 98, "decimal", null=99.0, places=2),
    FieldDef("mean_lande", 98, 105, "decimal", null=99.0, places=2),
    FieldDef("gammarad", 105, 112, "decimal", null=0.0, places=3),
    FieldDef("gammastark", 112, 119, "decimal", null=0.0, places=3),
    FieldDef("gammawaals", 119, 127, "waals", null=0.0, places=3),
    FieldDef("lower_coupling", 127, 129, "text"),
    FieldDef("lower_term", 129, 215, "text"),
    FieldDef("upper_coupling", 215, 217, "text"),
    FieldDef("upper_term", 217, 303, "text"),
    FieldDef("blank", 303, 304, "char"),
    FieldDef("accurflag", 304, 305, "char"),
    FieldDef("accur", 305, 311, "text"),
    FieldDef("transition_flag", 311, 312, "char"),
    FieldDef("broadening_flag", 312, 313, "char"),
    FieldDef("comment", 313, 329, "text"),
    *(FieldDef(f"ll{i + 1}", 329 + 4 * i, 333 + 4 * i, "int") for i in range(9)),
)
LINE_WIDTH = DATA_FIELDS[-1].end  # 365
F = {f.name: i for i, f in enumerate(DATA_FIELDS)}  # field name -> position in a parsed tuple

REFERENCE_QUANTITIES = ("wave", "loggf", "lower_energy", "upper_energy", "lande",
                        "gammarad", "gammastark", "gammawaals", "level")
"""What each whitespace-separated field of a reference line is the source of (ll1..ll9)."""

ACCURACY_FLAGS = frozenset("NECP_ ")
TRANSITION_TYPES = {" ": "E1", "A": "E1", "B": "E2", "C": "M1", "D": "M2", "E": "E3", "F": "M3"}
BROADENING_FLAGS = frozenset(" 01234567")
NIST_CLASS_ERRORS = (  # longest prefixes first, so "AA" is not read as "A"
    ("AAA", 0.0013), ("AA", 0.0043), ("A+", 0.0087), ("A", 0.013), ("B+", 0.030),
    ("B", 0.043), ("C+", 0.079), ("C", 0.11), ("D+", 0.18), ("D", 0.22), ("E", 0.5),
)
EINSTEIN_A_CONSTANT = 0.667025e16
REF_KEY_LENGTH = 64  # node_common.models.REF_KEY_LENGTH: the *_ref_id columns
UNKNOWN_J = -1  # J_scaled of a level with unknown J (J is NULL)


def level_key(species_id: int, energy_scaled: int, j_scaled: int) -> int:
    """A level's identity (species, energy x 10^4, J x 10) packed in one int: cheaper to
    hash, keep and send than a tuple (species < 2^20, J x 10 + 1 < 2^20)."""
    return (energy_scaled << 40) | ((j_scaled + 1) << 20) | species_id


def key_parts(key: int) -> tuple[int, int, int]:
    """(species_id, energy_scaled, J_scaled) of a level_key."""
    return key & 0xFFFFF, key >> 40, ((key >> 20) & 0xFFFFF) - 1

# Column order of the rows the parser produces and the writers store.
STATE_COLUMNS = ("species_id", "energy", "energy_scaled", "J", "J_scaled", "lande",
                 "term_desc", "coupling_case", "energy_linelist_id", "energy_method",
                 "energy_ref_id", "lande_ref_id", "level_ref_id",
                 "config", "term", "S", "L", "P", "J1", "J2", "K", "S2", "Jc", "Sn", "n",
                 "v", "Lambda", "Omega", "rotN", "elecstate", "kronig_parity",
                 "elec_inversion", "asSym", "run_id")  # the quantum numbers: LEVEL_QN_COLUMNS
STATE_KEY_COLUMNS = ("species_id", "energy_scaled", "J_scaled")
TRANSITION_COLUMNS = ("lostate", "upstate", "species_id", "wave", "waveritz", "loggf",
                      "einsteina", "gammarad", "gammastark", "gammawaals", "sigmawaals",
                      "alphawaals", "accurflag", "accur", "loggf_err", "transition_type",
                      "autoionized", "wave_method", "comment", "wave_ref_id",
                      "waveritz_ref_id", "loggf_ref_id", "gammarad_ref_id",
                      "gammastark_ref_id", "waals_ref_id",
                      *(f"ll{i}" for i in range(1, 10)), "run_id")


# ----------------------------------------------------------------- parse ----

_NUMERIC_CHARS = frozenset(" 0123456789.+-")
_slice_fields = itemgetter(*(slice(f.start, f.end) for f in DATA_FIELDS))


def decimal_text(text: str, name: str, field: FieldDef | None = None) -> str | None:
    """The stripped digits of a decimal field, or None when blank.

    Rejects what is not a number and, given its ``field``, what its column
    cannot keep exactly: more decimals than the F format prints (they would be
    rounded away) or more integer digits than the field can print with them.
    """
    text = text.strip()
    if not text:
        return None
    if not _NUMERIC_CHARS.issuperset(text):
        raise RejectedLine(f"{name} is not a number: {text!r}")
    try:
        float(text)
    except ValueError:
        raise RejectedLine(f"{name} is not a number: {text!r}") from None
    if field is not None and not (len(text) > field.places and text[-field.places - 1] == "."):
        _check_fits(text, name, field)  # not the usual "exactly `places` decimals"
    return text


def _check_fits(text, name, field):
    whole, _, frac = text.partition(".")
    if len(frac.rstrip("0")) > field.places:
        raise RejectedLine(f"{name} has more than {field.places} decimals: {text!r}")
    if len(whole.lstrip("+-").lstrip("0")) > field.width - 1 - field.places:
        raise RejectedLine(f"{name} is too large for its column: {text!r}")


def scaled_int(text: str, places: int, name: str) -> int:
    """``text`` x 10**places as an exact integer, from the digits ("5740.4501" -> 57404501)."""
    whole, _, frac = text.partition(".")
    if len(frac) > places:
        if frac[places:].strip("0"):
            raise RejectedLine(f"{name} has more than {places} decimals: {text!r}")
        frac = frac[:places]
    digits = whole + frac.ljust(places, "0")
    return int(digits) if digits not in ("", "-", "+") else 0


def int_field(text: str, name: str) -> int | None:
    """An integer field (I-format), None when blank."""
    text = text.strip()
    if not text:
        return None
    if not text.lstrip("+-").isdigit() or not text.isascii():
        raise RejectedLine(f"{name} is not an integer: {text!r}")
    return int(text)


def j_value(text: str, name: str, field: FieldDef | None = None) -> tuple[str | None, int]:
    """(J digits or None, J x 10 or UNKNOWN_J) of an F6.1 J field; blank or X is unknown."""
    text = text.strip()
    if not text or text == "X":
        return None, UNKNOWN_J
    text = decimal_text(text, name, field)
    scaled = scaled_int(text, 1, name)
    if scaled < 0:
        raise RejectedLine(f"{name} is negative: {text!r}")
    return text, scaled


def waals_values(text: str | None) -> tuple[str | None, int | None, str | None]:
    """(log gamma6, sigma, alpha) from the raw van der Waals field.

    Negative: log10 gamma6. Positive: ABO theory packed as sigma.alpha, split
    from the digits (312.245 -> sigma 312, alpha 0.245), never via float arithmetic.
    """
    if text is None:
        return None, None, None
    if text.startswith("-"):
        return text, None, None
    whole, _, frac = text.lstrip("+").partition(".")
    return None, int(whole or "0"), "0." + (frac or "0")


def loggf_error(flag: str, accur: str | None) -> float | None:
    """The log gf uncertainty in dex from the accuracy flag and text (FORMAT.md)."""
    if accur is None or flag in "CP":
        return None
    if flag == "E":
        try:
            value = abs(float(accur))
        except ValueError:
            return None
        return value if math.isfinite(value) else None
    for prefix, error in NIST_CLASS_ERRORS:  # "N", "_" and blank: NIST letter classes
        if accur.startswith(prefix):
            return error
    return None


def einstein_a(loggf: str | None, j_upper_scaled: int, wave: str) -> float | None:
    """A (s^-1) = 0.667025e16 * 10^loggf / ((2 J_upper + 1) * wave^2), wave in Angstrom."""
    if loggf is None or j_upper_scaled == UNKNOWN_J:
        return None
    wave_value = float(wave)
    if wave_value == 0:
        return None
    try:
        value = EINSTEIN_A_CONSTANT * 10.0 ** float(loggf) / (
            (j_upper_scaled / 5 + 1) * wave_value * wave_value)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise RejectedLine(f"Einstein A overflows for log gf {loggf}")
    return value


def reference_keys(line: str) -> tuple[str | None, ...]:
    """The reference keys per quantity (REFERENCE_QUANTITIES) of a reference line.

    ``wl:K14,iso:BWL`` -> ``K14,BWL``: type prefixes are dropped, keys joined with commas.
    """
    fields = line.split()
    if len(fields) > len(REFERENCE_QUANTITIES):
        raise RejectedLine(f"reference line has {len(fields)} fields, at most "
                           f"{len(REFERENCE_QUANTITIES)} expected")
    keys = [",".join(part.rpartition(":")[2] for part in f.split(",") if part) or None
            for f in fields]
    for quantity, key in zip(REFERENCE_QUANTITIES, keys):
        if key is not None and len(key) > REF_KEY_LENGTH:
            raise RejectedLine(f"{quantity} reference {key[:20]!r}... is longer than its column "
                               f"({REF_KEY_LENGTH} characters)")
    return tuple(keys) + (None,) * (len(REFERENCE_QUANTITIES) - len(keys))


NO_REFERENCES = (None,) * len(REFERENCE_QUANTITIES)


def slice_data_line(line: str) -> tuple[str, ...]:
    """The raw text of every DATA_FIELDS column; a short line is padded with blanks."""
    if len(line) > LINE_WIDTH and line[LINE_WIDTH:].strip():
        raise RejectedLine(f"text after column {LINE_WIDTH}: {line[LINE_WIDTH:].strip()[:20]!r}")
    return _slice_fields(line.ljust(LINE_WIDTH))


# Level descriptions ---------------------------------------------------------

L_LETTERS = "SPDFGHIKLMNOQRTUV"  # orbital angular momentum L = 0, 1, 2, ...
LEVEL_QN_COLUMNS = ("config", "term", "S", "L", "P", "J1", "J2", "K", "S2", "Jc", "Sn", "n",
                    "v", "Lambda", "Omega", "rotN", "elecstate", "kronig_parity",
                    "elec_inversion", "asSym")
DECODED_QN_COLUMNS = LEVEL_QN_COLUMNS[2:]
ODD, EVEN = "1", "2"  # atomic parity as the VAMDC node stores it

_UNESCAPED_BLANK = re.compile(r"(?<!\\) ")
_LS_TERM = re.compile(rf"(?P<label>.*?)(?P<mult>\d+)(?P<L>[{L_LETTERS}])(?P<sn>\d*)\Z")
_JJ_TERM = re.compile(r"\((?P<j1>[\d/.]+),(?P<j2>[\d/.]+)\)\Z")
_JK_TERM = re.compile(r"(?:(?P<mult>\d+)|\((?P<s2>[\d/.]+)\))\[(?P<k>[\d/.]+)\]\Z")
_JC = re.compile(r"<([\d/.]+)>")
_LK_LETTER = re.compile(rf"\\ ([{L_LETTERS}])")
_PRINCIPAL = re.compile(r"n=(\d+)\Z")


def split_description(description: str) -> tuple[str | None, str | None]:
    """(config, term): split at the first blank not preceded by a backslash."""
    text = description.strip()
    match = _UNESCAPED_BLANK.search(text)
    if match is None:
        return text or None, None
    return text[:match.start()] or None, text[match.end():].strip() or None


def fraction(text: str) -> float:
    """'3/2' -> 1.5, '5' -> 5.0."""
    top, _, bottom = text.partition("/")
    return float(top) / float(bottom) if bottom else float(top)


@functools.lru_cache(maxsize=1 << 14)
def decode_level(coupling: str | None, description: str | None, molecule: bool) -> tuple:
    """LEVEL_QN_COLUMNS values of a level description.

    The dump repeats a few hundred thousand descriptions hundreds of millions of
    times, so each distinct one is decoded once. A description that cannot be
    decoded keeps config/term (where it splits) and no quantum numbers.
    """
    qn = dict.fromkeys(LEVEL_QN_COLUMNS)
    if description is None:
        return tuple(qn.values())
    try:
        if molecule:
            _decode_molecule(coupling, description, qn)
        else:
            qn["config"], qn["term"] = split_description(description)
            _decode_atom(coupling, qn)
    except (ValueError, ZeroDivisionError, IndexError):
        qn.update(dict.fromkeys(DECODED_QN_COLUMNS))
    return tuple(qn.values())


def _decode_atom(coupling, qn):
    config, term = qn["config"] or "", qn["term"] or ""
    if coupling is None:
        match = _PRINCIPAL.match(config) if not term else None
        if match:
            qn["n"] = int(match[1])
        return
    odd = term.endswith("*")
    term = term.rstrip("*")
    if coupling == "LS":
        match = _LS_TERM.match(term)
        if match is None:
            return
        qn.update(S=(int(match["mult"]) - 1) / 2, L=L_LETTERS.index(match["L"]),
                  Sn=int(match["sn"]) if match["sn"] else None)
    elif coupling == "JJ":
        match = _JJ_TERM.match(term)
        if match is None:
            return
        qn.update(J1=fraction(match["j1"]), J2=fraction(match["j2"]))
    elif coupling in ("JK", "LK"):
        match = _JK_TERM.match(term)
        if match is None:
            return
        qn.update(K=fraction(match["k"]),
                  S2=(int(match["mult"]) - 1) / 2 if match["mult"] else fraction(match["s2"]))
        if coupling == "JK":
            jc = _JC.findall(config)
            qn["Jc"] = fraction(jc[-1]) if jc else None
        else:
            letters = _LK_LETTER.findall(config)
            qn["L"] = L_LETTERS.index(letters[-1]) if letters else None
    else:
        return
    qn["P"] = ODD if odd else EVEN


def _decode_molecule(coupling, description, qn):
    """``label,2S+1,|Lambda|,parity,|Omega| (Ha) or N (Hb),v[,g/u or a/s]``."""
    fields = [f.strip() for f in description.split(",")]
    if not 6 <= len(fields) <= 7:
        return
    label, mult, lam, parity, fifth, v = fields[:6]
    if parity not in ("e", "f", "+", "-", "0"):
        return
    values = dict(elecstate=label or None, S=(int(mult) - 1) / 2, Lambda=int(lam), v=int(v))
    if parity in "ef":
        values["kronig_parity"] = parity
    else:
        values["P"] = parity
    if coupling == "Ha":
        values["Omega"] = fraction(fifth)
    elif coupling == "Hb":
        values["rotN"] = int(fifth)
    if len(fields) == 7:
        symmetry = fields[6]
        if symmetry in ("g", "u"):
            values["elec_inversion"] = symmetry
        elif symmetry in ("a", "s"):
            values["asSym"] = symmetry
        else:
            return
    qn.update(values)


def is_molecule(species_id: int, coupling: str | None) -> bool:
    return coupling in ("Ha", "Hb") or species_id >= 10000


@dataclass
class Record:
    """A parsed data line, as the rows it gives: two levels and one transition."""

    lower_key: int  # level_key
    upper_key: int
    lower: tuple  # STATE_COLUMNS without run_id
    upper: tuple
    transition: tuple  # TRANSITION_COLUMNS without lostate, upstate, run_id


def parse_record(line: str, ref_line: str | None, skip_calc: bool = False,
                 methods: dict | None = None) -> Record:
    """Parse one data line and its reference line (or None) into rows.

    ``methods`` maps line-list ids to their method (``linelists.method``).
    """
    methods = methods or {}
    raw = slice_data_line(line)
    species_id = int_field(raw[F["species_id"]], "species index")
    if species_id is None:
        raise RejectedLine("no species index")
    if species_id <= 0:
        raise RejectedLine(f"bad species index {species_id}")
    ritz = _decimal(raw, "wave_ritz", "Ritz wavelength")
    measured = _decimal(raw, "wave_measured", "measured wavelength")
    if measured is not None and float(measured) == 0:
        measured = None
    wave = measured or ritz
    if wave is None:
        raise RejectedLine("no wavelength")
    loggf = _decimal(raw, "loggf", "log gf")
    levels = []
    for side in ("lower", "upper"):
        energy = _decimal(raw, f"{side}_energy", f"{side} energy")
        if energy is None:
            raise RejectedLine(f"no {side} energy")
        j, j_scaled = j_value(raw[F[f"{side}_j"]], f"{side} J", DATA_FIELDS[F[f"{side}_j"]])
        levels.append((energy, scaled_int(energy, 4, f"{side} energy"), j, j_scaled))
    landes = [_sentinel_decimal(raw, name, 99.0) for name in ("lower_lande", "upper_lande", "mean_lande")]
    gammarad = _sentinel_decimal(raw, "gammarad", 0.0)
    gammastark = _sentinel_decimal(raw, "gammastark", 0.0)
    gammawaals, sigma, alpha = waals_values(_sentinel_decimal(raw, "gammawaals", 0.0))
    for name in ("blank", "accurflag", "transition_flag", "broadening_flag"):
        _check_flag(raw, name)
    flag, accur = raw[F["accurflag"]], raw[F["accur"]].strip() or None
    ttype, autoionized = _transition_type(raw[F["transition_flag"]], levels)
    lls = [int_field(raw[F[f"ll{i}"]], f"line list {i}") or None for i in range(1, 10)]
    refs = reference_keys(ref_line) if ref_line is not None else NO_REFERENCES
    einsteina = None if skip_calc else einstein_a(loggf, levels[1][3], wave)
    states = []
    for (energy, scaled, j, j_scaled), side, lande, ll, ref in zip(
            levels, ("lower", "upper"), landes, lls[2:4], refs[2:4]):
        description = raw[F[f"{side}_term"]].rstrip(" ") or None
        coupling = raw[F[f"{side}_coupling"]].strip() or None
        states.append((species_id, energy, scaled, j, j_scaled, lande, description, coupling,
                       ll, methods.get(ll), ref, refs[4], refs[8],
                       *decode_level(coupling, description, is_molecule(species_id, coupling))))
    ritz_refs = _joined_keys(refs[2], refs[3])
    transition = (species_id, wave, ritz, loggf, einsteina, gammarad, gammastark, gammawaals,
                  sigma, alpha, flag.strip() or None, accur, loggf_error(flag, accur),
                  ttype, autoionized, methods.get(lls[0]), raw[F["comment"]].strip() or None,
                  refs[0], ritz_refs, refs[1], refs[5], refs[6], refs[7], *lls)
    return Record(level_key(species_id, levels[0][1], levels[0][3]),
                  level_key(species_id, levels[1][1], levels[1][3]), states[0], states[1], transition)


def _decimal(raw, name, label):
    return decimal_text(raw[F[name]], label, DATA_FIELDS[F[name]])


def _sentinel_decimal(raw, name, sentinel):
    text = _decimal(raw, name, name)
    return None if text is None or float(text) == sentinel else text


def _check_flag(raw, name):
    allowed = {"blank": " ", "accurflag": ACCURACY_FLAGS, "transition_flag": TRANSITION_TYPES,
               "broadening_flag": BROADENING_FLAGS}[name]
    if raw[F[name]] not in allowed:
        raise RejectedLine(f"unknown {name.replace('_', ' ')} {raw[F[name]]!r}")


def _transition_type(flag, levels):
    """(transition_type, autoionized): flag A with lower energy above upper is autoionisation."""
    if flag == "A" and levels[0][1] > levels[1][1]:
        return None, True
    return TRANSITION_TYPES[flag], False


def _joined_keys(*fields):
    keys = []
    for f in fields:
        for key in (f or "").split(","):
            if key and key not in keys:
                keys.append(key)
    return ",".join(keys) or None


# Fast path -------------------------------------------------------------------
# parse_record is the reference: it explains every rejection. The fast path
# below handles ordinary lines straight from bytes and hands anything unusual
# to parse_record, so both always agree (tests/test_fast_parse.py).

TEXT, TUPLES = "text", "tuples"  # transition rows as COPY/LOAD DATA text, or as tuples
NULL = b"\\N"
_UNPACK = struct.Struct("".join(f"{f.width}s" for f in DATA_FIELDS)).unpack
_PRINTABLE = bytes(range(32, 127))
_NUMERIC_BYTES = b" 0123456789.+-X"  # X: unknown J
(_RITZ, _MEAS, _SPECIES, _LOGGF, _ELO, _JLO, _EUP, _JUP, _LANDE_LO, _LANDE_UP, _LANDE_MEAN,
 _GRAD, _GSTARK, _GWAALS, _CLO, _TLO, _CUP, _TUP, _BLANK, _AFLAG, _ACCUR, _TFLAG, _BFLAG,
 _COMMENT) = range(24)
_LL = 24
_FLAGS_OK = tuple(frozenset(ord(c) for c in allowed)
                  for allowed in (" ", ACCURACY_FLAGS, TRANSITION_TYPES, BROADENING_FLAGS))


class _Unusual(Exception):
    """Something the fast path does not handle: parse_record decides."""


@dataclass(frozen=True)
class ParseConfig:
    """How a batch is parsed; picklable, for worker processes."""

    skip_header: int = 2
    skip_calc: bool = False
    methods: tuple = ()  # (line-list id, method) pairs
    rows: str | None = TUPLES  # TEXT, TUPLES, or None (pass 1 needs no transition rows)


def _decimal_bytes(text: bytes, places: int) -> tuple:
    """(stripped digits, value) of a decimal field with exactly ``places`` decimals;
    (None, None) when blank. float() checks the structure ("1-2.345" raises ValueError)."""
    text = text.strip()
    if not text:
        return None, None
    if text[-places - 1:-places] != b".":
        raise _Unusual
    return text, float(text)


def _copy_bytes(text: bytes) -> bytes:
    """Text for COPY / LOAD DATA: backslashes doubled (the fast path has no control characters)."""
    return text.replace(b"\\", b"\\\\") if b"\\" in text else text


_TYPE_PREFIX = re.compile(rb"[^\s,:]+:")  # "wl:" before a key
_ODD_REFERENCE = re.compile(rb",,|(?:^|\s),|,(?:\s|$)|:(?:\s|$|,)|\\")  # empty keys, backslashes
_NO_REFERENCE_FIELDS = (NO_REFERENCES, None, (NULL,) * len(REFERENCE_QUANTITIES), NULL)


def _checked_reference(ref: bytes | None):
    """What the fast path needs of a reference line when no key is used: that it is valid."""
    if ref is not None and (len(ref.split()) > len(REFERENCE_QUANTITIES) or len(ref) > REF_KEY_LENGTH):
        _reference_fields(ref)  # raises _Unusual when it is not
    return None


@functools.lru_cache(maxsize=1 << 12)
def _reference_fields(ref: bytes | None) -> tuple:
    """(keys, Ritz keys) as str and as COPY text, of a reference line (see reference_keys)."""
    if ref is None:
        return _NO_REFERENCE_FIELDS
    if (b"," in ref or b"\\" in ref or b": " in ref or ref[-1:] == b":") and _ODD_REFERENCE.search(ref):
        raise _Unusual
    cleaned = _TYPE_PREFIX.sub(b"", ref)
    texts = cleaned.split()
    missing = len(REFERENCE_QUANTITIES) - len(texts)
    if missing < 0 or len(cleaned) > REF_KEY_LENGTH and max(map(len, texts)) > REF_KEY_LENGTH:
        raise _Unusual
    keys = tuple(cleaned.decode().split()) + (None,) * missing
    ritz = keys[2] if keys[3] in (None, keys[2]) else _joined_keys(keys[2], keys[3])
    return (keys, ritz, tuple(texts) + (NULL,) * missing,
            NULL if ritz is None else ritz.encode())


@functools.lru_cache(maxsize=1 << 12)
def _accuracy(flag: bytes, accur: bytes) -> tuple:
    """(accurflag, accur, loggf_err) as Python values and as COPY text."""
    flag_s, accur_s = flag.decode().strip() or None, accur.decode().strip() or None
    err = loggf_error(flag.decode(), accur_s)
    return (flag_s, accur_s, err, NULL if flag_s is None else flag.strip(),
            NULL if accur_s is None else _copy_bytes(accur.strip()),
            NULL if err is None else repr(err).encode())


def _fast_record(raw: bytes, ref: bytes | None, config: ParseConfig, methods: dict,
                 shipped, levels: dict):
    """(lower key, upper key, transition row) of an ordinary data line, straight from bytes.

    Adds the state rows of its levels that are not in ``shipped`` to ``levels``.
    Raises _Unusual (or ValueError, OverflowError) for anything parse_record must look at.
    """
    if len(raw) != LINE_WIDTH:
        if len(raw) > LINE_WIDTH:
            raise _Unusual
        raw = raw.ljust(LINE_WIDTH)
    if (not raw.isascii() or raw.translate(None, _PRINTABLE)
            or raw[:127].translate(None, _NUMERIC_BYTES) or raw[329:].translate(None, b" 0123456789")):
        raise _Unusual
    f = _UNPACK(raw)
    lls = raw[329:].split()
    if len(lls) != 9 or b" " in raw[332::4]:  # a blank I4 field, or one with a blank inside
        lls = [ll.strip() for ll in f[_LL:]]
        if any(b" " in ll for ll in lls):
            raise _Unusual
        lls = [ll or b"0" for ll in lls]  # blank reads as 0: no line list
    if (f[_BLANK] != b" " or f[_AFLAG][0] not in _FLAGS_OK[1] or f[_TFLAG][0] not in _FLAGS_OK[2]
            or f[_BFLAG][0] not in _FLAGS_OK[3]):
        raise _Unusual
    species = int(f[_SPECIES])
    ritz, ritz_v = _decimal_bytes(f[_RITZ], 5)
    measured, measured_v = _decimal_bytes(f[_MEAS], 5)
    wave, wave_v = (measured, measured_v) if measured_v else (ritz, ritz_v)
    loggf, loggf_v = _decimal_bytes(f[_LOGGF], 3)
    e_lo = _decimal_bytes(f[_ELO], 4)[0]
    e_up = _decimal_bytes(f[_EUP], 4)[0]
    if species <= 0 or wave is None or e_lo is None or e_up is None:
        raise _Unusual
    j_lo, j_up = f[_JLO].strip(), f[_JUP].strip()
    j_lo = None if j_lo in (b"", b"X") else _decimal_bytes(j_lo, 1)[0]
    j_up = None if j_up in (b"", b"X") else _decimal_bytes(j_up, 1)[0]
    energy_lo, energy_up = int(e_lo.replace(b".", b"")), int(e_up.replace(b".", b""))
    jj_lo = int(j_lo.replace(b".", b"")) if j_lo else UNKNOWN_J
    jj_up = int(j_up.replace(b".", b"")) if j_up else UNKNOWN_J
    if j_lo and jj_lo < 0 or j_up and jj_up < 0 or species >= 1 << 20:
        raise _Unusual  # a negative J
    lande_lo, lande_lo_v = _decimal_bytes(f[_LANDE_LO], 2)
    lande_up, lande_up_v = _decimal_bytes(f[_LANDE_UP], 2)
    _decimal_bytes(f[_LANDE_MEAN], 2)
    grad, grad_v = _decimal_bytes(f[_GRAD], 3)
    gstark, gstark_v = _decimal_bytes(f[_GSTARK], 3)
    gwaals, gwaals_v = _decimal_bytes(f[_GWAALS], 3)
    key_lo, key_up = level_key(species, energy_lo, jj_lo), level_key(species, energy_up, jj_up)
    if config.rows is None and (key_lo in shipped or key_lo in levels) and (
            key_up in shipped or key_up in levels):
        refs = _checked_reference(ref)  # pass 1, levels already sent: the keys are not needed
    else:
        refs, ritz_refs, ref_text, ritz_text = _reference_fields(ref)
    einsteina = None
    if loggf is not None and jj_up != UNKNOWN_J and not config.skip_calc and wave_v:
        einsteina = EINSTEIN_A_CONSTANT * 10.0 ** loggf_v / ((jj_up / 5 + 1) * wave_v * wave_v)
        if not einsteina < math.inf:
            raise _Unusual
    # every check passed: from here on the line is imported
    if key_lo not in levels and key_lo not in shipped:
        levels[key_lo] = _state_row((species, energy_lo, jj_lo), e_lo, j_lo, lande_lo_v, lande_lo,
                                    f[_CLO], f[_TLO], lls[2], refs[2], refs, methods)
    if key_up not in levels and key_up not in shipped:
        levels[key_up] = _state_row((species, energy_up, jj_up), e_up, j_up, lande_up_v, lande_up,
                                    f[_CUP], f[_TUP], lls[3], refs[3], refs, methods)
    if config.rows is None:
        return key_lo, key_up, None
    if grad_v == 0:
        grad = grad_v = None
    if gstark_v == 0:
        gstark = gstark_v = None
    sigma = alpha = None
    if gwaals_v == 0:
        gwaals = gwaals_v = None
    elif gwaals_v is not None and gwaals_v > 0:
        whole, _, frac = gwaals.lstrip(b"+").partition(b".")
        sigma, alpha, gwaals = int(whole or b"0"), b"0." + frac, None
    flag = f[_TFLAG]
    autoionized = flag == b"A" and energy_lo > energy_up
    ttype = None if autoionized else _TYPE_BYTES[flag]
    aflag, accur, err, aflag_b, accur_b, err_b = _accuracy(f[_AFLAG], f[_ACCUR])
    comment = f[_COMMENT].strip()
    method = methods.get(int(lls[0])) if methods else None
    if config.rows == TUPLES:
        return key_lo, key_up, (
            species, wave_v, ritz_v, loggf_v, einsteina, grad_v, gstark_v,
            None if gwaals is None else gwaals_v, sigma, None if alpha is None else float(alpha),
            aflag, accur, err, None if ttype is None else ttype.decode(), autoionized, method,
            comment.decode() or None, refs[0], ritz_refs, refs[1], refs[5], refs[6], refs[7],
            *[int(ll) or None for ll in lls])
    return key_lo, key_up, b"\t".join((
        f[_SPECIES].strip(), wave, ritz or NULL, loggf or NULL,
        NULL if einsteina is None else repr(einsteina).encode(), grad or NULL, gstark or NULL,
        gwaals or NULL, NULL if sigma is None else str(sigma).encode(), alpha or NULL,
        aflag_b, accur_b, err_b, ttype or NULL, b"1" if autoionized else b"0",
        NULL if method is None else str(method).encode(),
        _copy_bytes(comment) if comment else NULL, ref_text[0], ritz_text, ref_text[1],
        ref_text[5], ref_text[6], ref_text[7], *[NULL if ll == b"0" else ll for ll in lls]))


_TYPE_BYTES = {flag.encode(): name.encode() for flag, name in TRANSITION_TYPES.items()}


def _float(text: bytes | None) -> float | None:
    return None if text is None else float(text)


def _state_row(key, energy, j, lande_value, lande, coupling, term, ll, energy_ref, refs,
               methods) -> tuple:
    """STATE_COLUMNS values (without run_id) of a level, from the bytes of its data line."""
    lande = None if lande is None or lande_value == 99 else lande.decode()
    description = term.rstrip(b" ").decode() or None
    coupling = coupling.strip().decode() or None
    ll = int(ll) or None
    return (key[0], energy.decode(), key[1], None if j is None else j.decode(), key[2], lande,
            description, coupling, ll, methods.get(ll), energy_ref, refs[4], refs[8],
            *decode_level(coupling, description, is_molecule(key[0], coupling)))


def _text_value(value) -> bytes:
    """A Python value as COPY / LOAD DATA text."""
    if value is None:
        return NULL
    if value is True or value is False:
        return b"1" if value else b"0"
    if isinstance(value, str):
        return value.encode().replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(
            b"\n", b"\\n").replace(b"\r", b"\\r")
    return repr(value).encode() if isinstance(value, float) else str(value).encode()


_TUPLE_DECIMALS = tuple(TRANSITION_COLUMNS.index(c) - 2 for c in (
    "wave", "waveritz", "loggf", "gammarad", "gammastark", "gammawaals", "alphawaals"))


def transition_output(row: tuple, rows: str | None):
    """A parse_record transition row in the form ``rows`` asks for (see _fast_record)."""
    if rows is None:
        return None
    if rows == TEXT:
        return b"\t".join([_text_value(v) for v in row])
    values = list(row)
    for i in _TUPLE_DECIMALS:
        if values[i] is not None:
            values[i] = float(values[i])
    return tuple(values)


def line_kind(raw: bytes) -> str:
    """How a physical line is handled: "data", "reference", "blank", "comment" or "unknown"."""
    stripped = raw.strip()
    if not stripped:
        return "blank"
    if raw[:1] == b"#":
        return "comment"
    if b"Unknown" in raw:
        return "unknown"
    if 97 <= raw[0] <= 122:  # a lowercase ASCII letter
        return "reference"
    return "data"


def decoded_line(raw: bytes) -> str:
    """The text of a line without its line ending; rejects what is not printable UTF-8."""
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise RejectedLine("not UTF-8 text (binary garbage?)") from None
    if not text.isprintable():
        raise RejectedLine("control characters in the line (binary garbage?)")
    if not text.isascii():
        # Columns count bytes, so a multi-byte character shifts the fields after it.
        if len(text.encode("utf-8")) != len(text):
            raise RejectedLine("non-ASCII characters shift the fixed-width columns")
    return text


@dataclass
class ParsedBatch:
    """What the parser made of one batch of lines."""

    keys: list = field(default_factory=list)  # distinct level keys of the batch's records
    levels: dict = field(default_factory=dict)  # key -> state row, unless already shipped
    transitions: list = field(default_factory=list)  # (line_number, lower_key, upper_key, row)
    rejects: list = field(default_factory=list)  # (line_number, reason, raw_text)
    skipped: Counter = field(default_factory=Counter)  # reason -> lines
    records: int = 0
    seconds: float = 0.0  # CPU time the parse took, wherever it ran

    @property
    def species(self) -> set:
        return {key & 0xFFFFF for key in self.keys}  # key_parts(key)[0]


def parse_batch(lines: list[bytes], first_line: int, config: ParseConfig = ParseConfig(),
                shipped=frozenset()) -> ParsedBatch:
    """Parse a batch of physical lines; ``first_line`` is the 1-based number of lines[0].

    State rows are left out for keys in ``shipped`` (levels this process sent
    before); transition rows take the form ``config.rows`` asks for.
    """
    started = time.process_time()
    out, methods, keys = ParsedBatch(), dict(config.methods), {}
    for number, data_raw, ref_raw in _records(lines, first_line, config.skip_header, out):
        try:
            lower, upper, row = _fast_record(data_raw.rstrip(b"\r\n"), ref_raw and ref_raw.rstrip(b"\r\n"),
                                             config, methods, shipped, out.levels)
        except (_Unusual, ValueError, OverflowError):
            try:
                record = parse_record(decoded_line(data_raw),
                                      decoded_line(ref_raw) if ref_raw is not None else None,
                                      config.skip_calc, methods)
            except RejectedLine as reason:
                out.rejects.append((number, str(reason), _raw_text(data_raw)))
                continue
            lower, upper = record.lower_key, record.upper_key
            row = transition_output(record.transition, config.rows)
            for key, state in ((lower, record.lower), (upper, record.upper)):
                if key not in shipped:
                    out.levels.setdefault(key, state)
        out.records += 1
        keys[lower] = keys[upper] = None
        out.transitions.append((number, lower, upper, row))
    out.keys = list(keys)
    out.seconds = time.process_time() - started
    return out


def _records(lines, first_line, skip_header, out):
    """(line number, data line, reference line or None) per record; counts skipped lines."""
    pending = None
    for number, raw in enumerate(lines, first_line):
        if number <= skip_header:
            out.skipped["header"] += 1
            continue
        first = raw[0]
        kind = "data" if (first == 32 or 48 <= first <= 57) and b"Unknown" not in raw \
            and not raw.isspace() else line_kind(raw)
        if kind == "reference":
            if pending is not None and pending[2] is None and pending[0] == number - 1:
                pending = (pending[0], pending[1], raw)
                out.skipped["reference"] += 1
            else:
                out.rejects.append((number, "reference line without a data line before it",
                                    _raw_text(raw)))
            continue
        if pending is not None:
            yield pending
            pending = None
        if kind == "data":
            pending = (number, raw, None)
        else:
            out.skipped[kind] += 1
    if pending is not None:
        yield pending


def _raw_text(raw: bytes) -> str:
    return raw.rstrip(b"\r\n").decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------- stream ----

HEAD_BYTES = 1 << 16
_MAGIC = ((b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f), "gzip"),
          (b"BZh", bz2.BZ2File, "bzip2"), (b"\xfd7zXZ\x00", lzma.LZMAFile, "xz"))


class _CountingReader(io.RawIOBase):
    """A raw reader that replays ``prefix`` and then reads ``source``, counting bytes."""

    def __init__(self, source, prefix=b""):
        self.source, self.prefix, self.count = source, prefix, 0

    def readable(self):
        return True

    def readinto(self, buffer):
        if self.prefix:
            n = min(len(buffer), len(self.prefix))
            buffer[:n], self.prefix = self.prefix[:n], self.prefix[n:]
        else:
            data = self.source.read(len(buffer))
            n = len(data)
            buffer[:n] = data
        self.count += n
        return n


class Input:
    """A dump opened for streaming: plain, gzip, bzip2 or xz (by magic bytes), file or stdin."""

    def __init__(self, path: str = "-"):
        self.path = path
        self.name = "-" if path in ("-", None) else str(path)
        self.size = None
        self.compression = None
        self._open()

    def _open(self):
        if self.name == "-":
            source = sys.stdin.buffer
        else:
            try:
                source = open(self.name, "rb")
                self.size = os.fstat(source.fileno()).st_size
            except OSError as error:
                raise UsageError(f"cannot read {self.name}: {error.strerror}") from None
        magic = source.read(6)
        self._raw = _CountingReader(source, magic)
        stream = io.BufferedReader(self._raw, 1 << 20)
        for prefix, opener, label in _MAGIC:
            if magic.startswith(prefix):
                self.compression = label
                stream = io.BufferedReader(opener(stream), 1 << 20)
                break
        try:
            head = stream.read(HEAD_BYTES)
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as error:
            raise UsageError(f"cannot decompress {self.name} ({self.compression}): {error}") from None
        self.head = head
        self.head_sha256 = hashlib.sha256(head).hexdigest()
        self._stream = io.BufferedReader(_CountingReader(stream, head), 1 << 20)

    def head_matches(self, length: int, sha256: str) -> bool:
        """Whether the input starts with the ``length`` bytes whose digest is ``sha256``."""
        return len(self.head) >= length and hashlib.sha256(self.head[:length]).hexdigest() == sha256

    @property
    def reopenable(self) -> bool:
        return self.name != "-"

    def reopen(self):
        self._open()

    def position(self) -> int:
        """Bytes read from the file or stdin so far (compressed bytes for compressed input)."""
        return self._raw.count

    def lines(self):
        """The physical lines, as bytes with their line endings."""
        try:
            yield from self._stream
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as error:
            raise UsageError(
                f"cannot read {self.name} ({self.compression or 'plain'}): {error}; the input "
                "is damaged or truncated: fix it, then rerun to resume") from None


@dataclass
class Batch:
    """Consecutive physical lines, ending at a record boundary."""

    first_line: int
    lines: list
    end_offset: int  # bytes of the (decompressed) input up to the end of this batch
    sha256: str  # digest of the input up to end_offset

    @property
    def last_line(self) -> int:
        return self.first_line + len(self.lines) - 1


def read_batches(lines, batch_size: int, stop_at: int | None = None):
    """Batches of ``batch_size`` data lines, never separating a data line from its reference line.

    With ``stop_at``, a batch also ends exactly at that byte offset; a line
    crossing it raises PrefixMismatch.
    """
    digest = hashlib.sha256()
    offset, number, batch, data_lines = 0, 1, [], 0
    for raw in lines:
        if not 97 <= raw[0] <= 122:  # not a reference line: a record may start here
            if data_lines >= batch_size:
                yield _batch(digest, number, batch, offset)
                number += len(batch)
                batch, data_lines = [], 0
            data_lines += 1
        batch.append(raw)
        offset += len(raw)
        if stop_at is not None and offset >= stop_at:
            if offset > stop_at:
                raise PrefixMismatch(number + len(batch) - 1)
            yield _batch(digest, number, batch, offset)
            number += len(batch)
            batch, data_lines, stop_at = [], 0, None
    if batch:
        yield _batch(digest, number, batch, offset)
    if stop_at is not None:
        raise PrefixMismatch(number)


def _batch(digest, number, lines, offset):
    digest.update(b"".join(lines))
    return Batch(number, lines, offset, digest.hexdigest())


class PrefixMismatch(Exception):
    """The input does not continue the way the run being compared with did."""

    def __init__(self, line):
        super().__init__(line)
        self.line = line


# ----------------------------------------------------------------- write ----

STAGE_TABLE = "valdimport_stage_levels"
KEYS_TABLE = "valdimport_stage_keys"
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


class Writer:
    """Bulk writes through one Django connection (raw DB-API cursors, no query logging).

    Subclasses provide the fastest correct row insertion of their engine; the
    level staging (insert the levels not yet stored, read back every id) is
    portable SQL over a temporary table.
    """

    vendor = None
    placeholder = "%s"
    rows = TUPLES  # the form of transition rows insert_transitions takes

    def __init__(self, alias: str = DEFAULT_DB_ALIAS):
        self.alias = alias
        self.connection = connections[alias]
        self._species = None
        self._prepared_for = None

    @staticmethod
    def for_alias(alias: str = DEFAULT_DB_ALIAS) -> "Writer":
        """The writer class of the engine behind ``alias``."""
        vendor = connections[alias].vendor
        for cls in (SQLiteWriter, PostgresWriter, MySQLWriter):
            if cls.vendor == vendor:
                return cls(alias)
        raise UsageError(f"unsupported database engine {vendor!r}: use SQLite, PostgreSQL or MySQL")

    def q(self, name: str) -> str:
        return self.connection.ops.quote_name(name)

    def cols(self, columns, prefix="") -> str:
        return ", ".join(prefix + self.q(c) for c in columns)

    def cursor(self):
        """A raw cursor; it takes part in the current Django transaction."""
        self.connection.ensure_connection()
        if self._prepared_for is not self.connection.connection:
            self._prepare_connection()
            self._prepared_for = self.connection.connection
        return self.connection.connection.cursor()

    def _prepare_connection(self):
        """Per-connection setup: the temporary tables used to stage levels and their keys."""
        self.create_stage_tables()

    def create_stage_tables(self):
        """Create the stage tables, also again after a rollback, which drops them."""
        cursor = self.connection.connection.cursor()
        for table, columns in ((STAGE_TABLE, STATE_COLUMNS), (KEYS_TABLE, STATE_KEY_COLUMNS)):
            cursor.execute(f"DROP {self.temporary} TABLE IF EXISTS {self.q(table)}")
            cursor.execute(f"CREATE TEMPORARY TABLE {self.q(table)} AS "
                           f"SELECT {self.cols(columns)} FROM {self.q('states')} WHERE 1 = 0")

    temporary = ""

    def insert_rows(self, cursor, table: str, columns, rows):
        """Insert ``rows`` (tuples in ``columns`` order): one multi-row statement per chunk."""
        marks = ", ".join([self.placeholder] * len(columns))
        cursor.executemany(f"INSERT INTO {self.q(table)} ({self.cols(columns)}) VALUES ({marks})", rows)

    def missing_species(self, cursor, ids) -> list[int]:
        """Species indexes of ``ids`` absent from the species table (they get placeholder rows)."""
        if self._species is None:
            cursor.execute(f"SELECT id FROM {self.q('species')}")
            self._species = {row[0] for row in cursor.fetchall()}
        return sorted(set(ids) - self._species)

    def create_species(self, cursor, ids):
        """Placeholder species rows (name NULL) for ``ids``; remembered once committed."""
        self.insert_rows(cursor, "species", ("id",), [(i,) for i in ids])
        transaction.on_commit(lambda: self._species.update(ids), using=self.alias)

    def probe_by_key(self, cursor):
        """Before joining staged keys with states: make that a lookup in its unique index."""

    def store_levels(self, cursor, rows) -> tuple[int, dict]:
        """Insert the levels of ``rows`` not yet stored; (number inserted, key -> id for every row)."""
        self.probe_by_key(cursor)
        stage, states = self.q(STAGE_TABLE), self.q("states")
        key_match = " AND ".join(f"s.{self.q(c)} = t.{self.q(c)}" for c in STATE_KEY_COLUMNS)
        self.insert_rows(cursor, STAGE_TABLE, STATE_COLUMNS, rows)
        cursor.execute(
            f"INSERT INTO {states} ({self.cols(STATE_COLUMNS)}) "
            f"SELECT {self.cols(STATE_COLUMNS, 't.')} FROM {stage} t WHERE NOT EXISTS "
            f"(SELECT 1 FROM {states} s WHERE {key_match}) "
            f"ORDER BY {self.cols(STATE_KEY_COLUMNS, 't.')}")
        inserted = cursor.rowcount
        cursor.execute(f"SELECT {self.cols(STATE_KEY_COLUMNS, 't.')}, s.id FROM {stage} t "
                       f"JOIN {states} s ON {key_match}")
        ids = {level_key(sp, energy, j): state_id for sp, energy, j, state_id in cursor.fetchall()}
        cursor.execute(f"DELETE FROM {stage}")
        return inserted, ids

    def lookup_levels(self, cursor, keys) -> dict:
        """key -> id of the stored levels among ``keys``."""
        self.probe_by_key(cursor)
        stage = self.q(KEYS_TABLE)
        key_match = " AND ".join(f"s.{self.q(c)} = t.{self.q(c)}" for c in STATE_KEY_COLUMNS)
        self.insert_rows(cursor, KEYS_TABLE, STATE_KEY_COLUMNS, [key_parts(k) for k in keys])
        cursor.execute(f"SELECT {self.cols(STATE_KEY_COLUMNS, 't.')}, s.id FROM {stage} t "
                       f"JOIN {self.q('states')} s ON {key_match}")
        ids = {level_key(sp, energy, j): state_id for sp, energy, j, state_id in cursor.fetchall()}
        cursor.execute(f"DELETE FROM {stage}")
        return ids

    def insert_transitions(self, cursor, records, ids: dict, run_id: int):
        """Insert parsed records (line, lower key, upper key, row) with their level ids."""
        self.insert_rows(cursor, "transitions", TRANSITION_COLUMNS,
                         [(ids[lo], ids[up], *row, run_id) for _, lo, up, row in records])

    def update_from_linelists_sql(self, table, target, source) -> str:
        """UPDATE ``table`` SET ``target`` = linelists.method joined on ``source``, where it differs."""
        t, l, q = self.q(table), self.q("linelists"), self.q
        return (f"UPDATE {t} SET {q(target)} = l.method FROM {l} l "
                f"WHERE l.id = {t}.{q(source)} AND {t}.{q(target)} IS DISTINCT FROM l.method")

    def start_import(self):
        """Engine settings for the duration of an import (outside any transaction)."""

    def end_import(self):
        """Undo start_import."""

    def clear_table(self, table: str):
        with self.connection.cursor() as cursor:
            cursor.execute(f"{self.truncate} {self.q(table)}")

    truncate = "TRUNCATE TABLE"

    def start_fast(self, tables):
        """--fast: skip what only protects against crashes while ``tables`` are loaded."""

    def end_fast(self, tables):
        """Undo start_fast: the tables are crash-safe again."""

    float_type = "double precision"  # CAST target for arithmetic on decimal columns

    def analyze_sql(self, tables) -> list[str]:
        return [f"ANALYZE {self.cols(tables)}"]

    def unused_level(self, alias: str) -> str:
        """SQL: level ``alias`` is used by no transition (an anti-join, not a per-row scan:
        transitions.upstate and lostate have no index)."""
        return (f"{alias}.id NOT IN (SELECT upstate FROM transitions) "
                f"AND {alias}.id NOT IN (SELECT lostate FROM transitions)")


TRANSIENT, REFUSED, FATAL = "transient", "refused", "fatal"
MYSQL_TRANSIENT = {1040, 1053, 1205, 1213, 1927, 2002, 2003, 2006, 2013, 2055, 4031}


def error_kind(error: BaseException) -> str:
    """How to handle a database error: TRANSIENT (retry the batch on a fresh connection),
    REFUSED (the rows: isolate and reject them) or FATAL (stop the run)."""
    while getattr(error, "__cause__", None) is not None and type(error).__module__.startswith("django"):
        error = error.__cause__  # Django wraps the driver's exception
    if isinstance(error, RowsRefused):
        return REFUSED
    names = {cls.__name__ for cls in type(error).__mro__}
    module = type(error).__module__
    if "InterfaceError" in names:
        return TRANSIENT
    if module.startswith("MySQLdb"):
        code = error.args[0] if error.args and isinstance(error.args[0], int) else None
        if code in MYSQL_TRANSIENT:
            return TRANSIENT
        if names & {"IntegrityError", "DataError", "OperationalError"}:
            return REFUSED  # e.g. 1406 too long, 1366 bad string, 4025 CHECK constraint
        return FATAL
    if module.startswith("sqlite3"):
        if "OperationalError" in names:
            return TRANSIENT if "locked" in str(error) or "busy" in str(error) else FATAL
    elif "OperationalError" in names:  # PostgreSQL: lost connection, shutdown, deadlock
        return TRANSIENT
    if names & {"IntegrityError", "DataError"}:
        return REFUSED
    return FATAL


def reconnect(using: str):
    """Drop the connection of ``using``; the next query opens a fresh one."""
    connection = connections[using]
    try:
        connection.close()
    except Exception:  # the connection is already gone
        connection.connection = None


class SQLiteWriter(Writer):
    vendor = "sqlite"
    placeholder = "?"
    temporary = ""
    truncate = "DELETE FROM"  # SQLite empties a table without a WHERE quickly
    float_type = "REAL"

    def analyze_sql(self, tables):
        # a sample of each index, as PostgreSQL and MySQL take: a full ANALYZE of
        # 255 million rows would read every index to the end
        return ["PRAGMA analysis_limit=10000", "ANALYZE"]

    def update_from_linelists_sql(self, table, target, source):
        return super().update_from_linelists_sql(table, target, source).replace(
            "IS DISTINCT FROM", "IS NOT")

    def start_import(self):
        # WAL: each batch commit is atomic and survives a crash of the process
        # (synchronous=NORMAL, set per connection); only a power cut can lose the
        # last commits. The journal mode stays WAL after the import.
        self.cursor().execute("PRAGMA journal_mode=WAL")

    def _prepare_connection(self):
        raw = self.connection.connection
        self._synchronous = raw.execute("PRAGMA synchronous").fetchone()[0]
        raw.execute("PRAGMA synchronous=NORMAL")
        raw.execute("PRAGMA cache_size=-16384")  # 16 MB of pages
        # Before the stage table exists: changing temp_store drops every temporary table.
        raw.execute("PRAGMA temp_store=MEMORY")
        super()._prepare_connection()

    def end_import(self):
        if self.connection.connection is not None:
            self.connection.connection.execute(f"PRAGMA synchronous={int(self._synchronous)}")

    def start_fast(self, tables):
        # No journal: a crash in the middle can corrupt the database file.
        self.cursor().execute("PRAGMA journal_mode=OFF")
        self.connection.connection.execute("PRAGMA synchronous=OFF")

    def end_fast(self, tables):
        self.cursor().execute("PRAGMA journal_mode=WAL")
        self.connection.connection.execute("PRAGMA synchronous=NORMAL")


def text_rows(records, ids: dict, run_id: int) -> bytes:
    """COPY / LOAD DATA text of parsed records (rows in TEXT form) with their level ids."""
    suffix = b"\t%d\n" % run_id
    return b"".join([b"%d\t%d\t%b%b" % (ids[lo], ids[up], row, suffix) for _, lo, up, row in records])


class PostgresWriter(Writer):
    vendor = "postgresql"
    rows = TEXT

    def unused_level(self, alias):
        # a hashed anti-join; NOT IN (subquery) would rescan when it outgrows work_mem
        return (f"NOT EXISTS (SELECT 1 FROM transitions t WHERE t.upstate = {alias}.id) "
                f"AND NOT EXISTS (SELECT 1 FROM transitions t WHERE t.lostate = {alias}.id)")

    def insert_rows(self, cursor, table, columns, rows):
        """COPY in text format: NULL as \\N, backslash, tab and line ends escaped."""
        if rows:
            text = "".join(["\t".join([_copy_value(v) for v in row]) + "\n" for row in rows])
            self._copy(cursor, table, columns, text.encode())

    def insert_transitions(self, cursor, records, ids, run_id):
        if records:
            self._copy(cursor, "transitions", TRANSITION_COLUMNS, text_rows(records, ids, run_id))

    def probe_by_key(self, cursor):
        # While states grows, its statistics lag: the planner would hash-join a few
        # thousand keys against a full scan of the table, each batch.
        cursor.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")

    def start_fast(self, tables):
        cursor = self.cursor()
        for table in tables:  # not written to the WAL: emptied by crash recovery
            cursor.execute(f"ALTER TABLE {self.q(table)} SET UNLOGGED")
        cursor.execute("SET synchronous_commit TO off")

    def end_fast(self, tables):
        cursor = self.cursor()
        for table in tables:
            cursor.execute(f"ALTER TABLE {self.q(table)} SET LOGGED")
        cursor.execute("SET synchronous_commit TO DEFAULT")

    def _copy(self, cursor, table, columns, data: bytes):
        sql = f"COPY {self.q(table)} ({self.cols(columns)}) FROM STDIN"
        if hasattr(cursor, "copy_expert"):  # psycopg2
            cursor.copy_expert(sql, io.BytesIO(data))
        else:  # psycopg 3
            with cursor.copy(sql) as copy:
                copy.write(data)


def _copy_value(value) -> str:
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    return str(value)


class MySQLWriter(Writer):
    """Transitions with LOAD DATA LOCAL INFILE from a file per batch, when the server and the
    connection allow it; else, like other rows, with executemany, which mysqlclient turns
    into multi-row INSERTs."""

    vendor = "mysql"
    temporary = "TEMPORARY"
    rows = TEXT
    LOCAL_REFUSED = {1148, 2068, 3948}  # LOAD DATA LOCAL disabled on the server or the client
    float_type = "DOUBLE"

    def analyze_sql(self, tables):
        return [f"ANALYZE TABLE {self.cols(tables)}"]

    def __init__(self, alias=DEFAULT_DB_ALIAS):
        super().__init__(alias)
        self.load_data = True

    def insert_transitions(self, cursor, records, ids, run_id):
        if not records:
            return
        if self.load_data:
            try:
                return self._load_data(cursor, text_rows(records, ids, run_id))
            except Exception as error:
                if not (error.args and error.args[0] in self.LOCAL_REFUSED):
                    raise
                self.load_data = False  # not allowed here: INSERT from now on
        self.insert_rows(cursor, "transitions", TRANSITION_COLUMNS,
                         [(ids[lo], ids[up], *_text_values(row), run_id) for _, lo, up, row in records])

    def _load_data(self, cursor, data: bytes):
        import tempfile
        with tempfile.NamedTemporaryFile(prefix="valdimport-", suffix=".tsv") as f:
            f.write(data)
            f.flush()
            # LOCAL turns bad values into warnings: any warning is a refusal of the rows
            cursor.execute(f"LOAD DATA LOCAL INFILE %s INTO TABLE {self.q('transitions')} "
                           f"CHARACTER SET utf8mb4 ({self.cols(TRANSITION_COLUMNS)})", (f.name,))
        if cursor.connection.warning_count():
            cursor.execute("SHOW WARNINGS LIMIT 1")
            raise RowsRefused(" ".join(map(str, cursor.fetchone()[1:])))

    def update_from_linelists_sql(self, table, target, source):
        t, q = self.q(table), self.q
        return (f"UPDATE {t} JOIN {q('linelists')} l ON l.id = {t}.{q(source)} "
                f"SET {t}.{q(target)} = l.method WHERE NOT ({t}.{q(target)} <=> l.method)")

    def start_fast(self, tables):
        # InnoDB may then skip uniqueness checks of secondary indexes: verified after the load
        self.cursor().execute("SET SESSION unique_checks = 0, foreign_key_checks = 0")

    def end_fast(self, tables):
        self.cursor().execute("SET SESSION unique_checks = 1, foreign_key_checks = 1")


def _text_values(row: bytes) -> list:
    """The values of a TEXT row, for an INSERT."""
    return [None if v == NULL else v.replace(b"\\\\", b"\\").decode() for v in row.split(b"\t")]


class RowsRefused(Exception):
    """The database accepted a bulk load only with warnings: the rows are refused."""


# ----------------------------------------------------------------- cache ----

class StateCache:
    """Level key -> state id, bounded to ``size`` entries.

    Two generations approximate LRU cheaply: lookups hit the young dict or
    promote from the old one; when the young dict is full it becomes the old
    one and the previous old generation is dropped.
    """

    def __init__(self, size: int = 500_000):
        self.half = max(1, size // 2)
        self._young, self._old = {}, {}
        self.hits = self.misses = 0

    def __len__(self):
        return len(self._young) + len(self._old)

    def __contains__(self, key):
        return self.get(key) is not None

    def get(self, key):
        value = self._young.get(key)
        if value is None:
            value = self._old.get(key)
            if value is None:
                self.misses += 1
                return None
            self._put(key, value)
        self.hits += 1
        return value

    def _put(self, key, value):
        if len(self._young) >= self.half:
            self._old, self._young = self._young, {}
        self._young[key] = value

    def update(self, mapping: dict):
        for key, value in mapping.items():
            self._put(key, value)

    @property
    def hit_rate(self) -> float:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0


class KeySet:
    """A set of keys bounded to ``size`` entries, with the same two generations."""

    def __init__(self, size: int = 500_000):
        self.half = max(1, size // 2)
        self._young, self._old = set(), set()

    def __contains__(self, key):
        return key in self._young or key in self._old

    def update(self, keys):
        for key in keys:
            if len(self._young) >= self.half:
                self._old, self._young = self._young, set()
            self._young.add(key)


# ---------------------------------------------------------------- passes ----

COMMANDS = {
    "import-states": "pass 1: store every distinct level of the dump once",
    "import-transitions": "pass 2: store every transition, linked to its levels",
    "import": "both passes per batch in a single read of the input (for pipes)",
}
WRITES_TRANSITIONS = {"import-transitions", "import"}


@dataclass
class ImportOptions:
    batch_size: int = 10_000
    skip_header: int = 2
    skip_calc: bool = False
    cache_size: int = 500_000
    restart: bool = False
    reject_file: str | None = None
    max_errors: int | None = None
    retries: int = 5
    workers: int | None = None  # parser processes; None: default_workers()
    fast: bool = False
    clear: bool = False
    yes: bool = False
    dry_run: bool = False
    skip_housekeeping: bool = False
    verify: bool = False
    summary_json: str | None = None
    quiet: bool = False
    progress: bool | None = None  # None: when stderr is a terminal and not quiet

    CONTENT_OPTIONS = ("skip_header",)  # options a run must share to continue another

    @classmethod
    def from_mapping(cls, values: dict) -> "ImportOptions":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})


@dataclass
class Tally:
    """The counts of a run; lines_read = imported + skipped + rejected."""

    lines_read: int = 0
    imported: int = 0
    rejected: int = 0
    skipped: Counter = field(default_factory=Counter)
    states_new: int = 0
    states_existing: int = 0
    transitions: int = 0
    species_created: list = field(default_factory=list)
    undecoded: int = 0

    def add(self, lines: int, parsed: ParsedBatch, refused: int = 0):
        """Count a batch; ``refused`` records were parsed but refused by the database."""
        self.lines_read += lines
        self.imported += parsed.records - refused
        self.rejected += len(parsed.rejects) + refused
        self.skipped.update(parsed.skipped)

    def copy(self) -> "Tally":
        return replace(self, skipped=Counter(self.skipped), species_created=list(self.species_created))

    def as_row(self) -> dict:
        return dict(lines_read=self.lines_read, imported=self.imported, rejected=self.rejected,
                    skipped=sum(self.skipped.values()),
                    counts=dict(skipped=dict(self.skipped), states_new=self.states_new,
                                states_existing=self.states_existing,
                                transitions=self.transitions,
                                species_created=self.species_created,
                                undecoded=self.undecoded))

    @classmethod
    def from_run(cls, run) -> "Tally":
        counts = run.counts or {}
        return cls(run.lines_read, run.imported, run.rejected, Counter(counts.get("skipped", {})),
                   counts.get("states_new", 0), counts.get("states_existing", 0),
                   counts.get("transitions", 0), list(counts.get("species_created", [])),
                   counts.get("undecoded", 0))


class RunLedger:
    """The import_runs row of this run: which input, how far it is committed.

    A rerun on the same input finds the earlier run (same first bytes, up to
    64 KiB, same family of command), re-reads the committed prefix and checks its SHA-256,
    then resumes that run or starts one that continues after it; nothing that
    is committed is written twice. No row is touched before that check passes.
    """

    COVERS = {"import-states": {"states"}, "import-transitions": {"states", "transitions"},
              "import": {"states", "transitions"}}

    def __init__(self, using, command, inp: Input, options: ImportOptions):
        from node_common.models import ImportRun
        self.model, self.using, self.command = ImportRun, using, command
        self.input, self.options = inp, options
        self.run, self.candidate, self.resumed = None, None, False
        self.retried = []  # the transient database errors this run retried

    def candidates(self) -> list:
        """Earlier runs whose committed rows cover what this command writes, for this input."""
        if self.options.restart:
            return []
        wanted = self.COVERS[self.command]
        families = [c for c, covers in self.COVERS.items() if wanted <= covers]
        runs = self.model.objects.using(self.using).filter(
            command__in=families, committed_bytes__gt=0, head_bytes__lte=len(self.input.head)
        ).exclude(status=self.model.ROLLED_BACK)
        content = {k: getattr(self.options, k) for k in ImportOptions.CONTENT_OPTIONS}
        return sorted((r for r in runs if self.input.head_matches(r.head_bytes, r.input_head)
                       and all(r.options.get(k) == v for k, v in content.items())
                       # what an unfinished --fast run wrote may be gone after a crash
                       and not (r.options.get("fast") and r.status != self.model.COMPLETED)),
                      key=lambda r: (-r.committed_bytes, -r.id))

    def begin(self, candidate=None):
        """Start a new run, or get ready to check the input against ``candidate``."""
        self.candidate, self.run, self.resumed = candidate, None, False
        if candidate is None:
            self.run = self._create(start_line=1)
        elif self._resumable(candidate):
            _refuse_if_alive(candidate)

    def _resumable(self, run) -> bool:
        return run.command == self.command and run.status != self.model.COMPLETED

    def _create(self, **values):
        now = _now()
        return self.model.objects.using(self.using).create(
            command=self.command, input_name=self.input.name, input_size=self.input.size,
            input_head=self.input.head_sha256, head_bytes=len(self.input.head),
            options=dict(_json_options(self.options), reject_file=self.reject_path()),
            host=_host(), pid=os.getpid(), started_at=now, updated_at=now, **values)

    @property
    def skip_to(self):
        return self.candidate.committed_bytes if self.candidate else None

    def reject_path(self) -> str:
        """--reject-file, else the file of the run being resumed, else next to the input."""
        resumed = self.candidate if self.candidate and self._resumable(self.candidate) else None
        path = self.options.reject_file or (resumed.options.get("reject_file") if resumed else None)
        return os.path.abspath(path or default_reject_path(self.input.name))

    def reload(self):
        return self.model.objects.using(self.using).get(pk=self.run.pk)

    def prefix_verified(self, batch: Batch, prefix_lines: int, tally: Tally) -> Tally:
        """The input matches the candidate up to its committed position: resume or continue it.

        Returns the run's tally: the candidate's own when it is resumed, else
        ``tally`` with the prefix counted as already imported.
        """
        candidate = self.candidate
        if self._resumable(candidate):
            self.run, self.resumed = candidate, True
            tally = Tally.from_run(candidate)
            self.model.objects.using(self.using).filter(pk=candidate.pk).update(
                status=self.model.RUNNING, pid=os.getpid(), host=_host(), message="",
                resumed_from_line=batch.last_line + 1)
            candidate.resumed_from_line = batch.last_line + 1
        else:
            self.run = self._create(continues_run=candidate, start_line=batch.last_line + 1)
            tally.lines_read += prefix_lines
            tally.skipped["already imported"] += prefix_lines
        self.record_batch(batch, tally)
        return tally

    def record_batch(self, batch: Batch, tally: Tally):
        """Save the committed position and the counts; call inside the batch's transaction."""
        self.model.objects.using(self.using).filter(pk=self.run.pk).update(
            committed_line=batch.last_line, committed_bytes=batch.end_offset,
            committed_sha256=batch.sha256, updated_at=_now(), **tally.as_row())

    def finish(self, status: str, tally: Tally | None = None, message: str = ""):
        if self.run is None:
            return
        values = dict(status=status, finished_at=_now(), updated_at=_now(), message=message)
        if tally is not None:
            values.update(tally.as_row())
        self.model.objects.using(self.using).filter(pk=self.run.pk).update(**values)

    def finish_quietly(self, status: str, tally: Tally | None, message: str):
        """finish(), unless the database is gone: the run then stays "running", which a
        rerun treats as interrupted (its process is dead) and resumes."""
        try:
            reconnect(self.using)
            self.finish(status, tally, message)
        except Exception:
            pass


def _now():
    from django.utils import timezone
    return timezone.now()


def _host():
    return socket.gethostname()[:255]


def _json_options(options: ImportOptions) -> dict:
    return {k: getattr(options, k) for k in ("batch_size", "skip_header", "skip_calc", "cache_size",
                                             "fast")}


def _process_alive(run) -> bool:
    """Whether another process of this host that wrote ``run`` is still there."""
    if run.host != _host() or not run.pid or run.pid == os.getpid():
        return False
    try:
        os.kill(run.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    return True


def _refuse_if_alive(run):
    if _process_alive(run):
        raise UsageError(f"run {run.id} on this input is still running (pid {run.pid}); "
                         "wait for it to finish or stop it first")


class RejectFile:
    """``LINE_NUMBER<TAB>REASON<TAB>RAW_LINE`` per rejected line.

    A batch's rejects are written (and synced) before the batch commits; a rerun
    that resumes first drops the lines after the committed position, so a crash
    at any moment leaves each rejected line in the file exactly once.
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        directory = os.path.dirname(self.path)
        if not os.access(directory, os.W_OK) or (
                os.path.exists(self.path) and not os.access(self.path, os.W_OK)):
            raise UsageError(f"cannot write the reject file {self.path}: permission denied; "
                             "choose another with --reject-file")
        self._file, self.written = None, 0

    def open(self, keep_through_line: int | None = None):
        """Start the file, keeping the rejects of lines up to ``keep_through_line`` if given."""
        kept = []
        if keep_through_line is not None and os.path.exists(self.path):
            with open(self.path, encoding="utf-8", newline="\n") as old:
                kept = [r for r in old if r.partition("\t")[0].isdigit()
                        and int(r.partition("\t")[0]) <= keep_through_line]
        self._file = open(self.path, "w", encoding="utf-8", newline="\n")
        self._file.writelines(kept)
        self._sync()

    def write(self, rejects):
        if rejects:
            self._file.writelines(f"{n}\t{reason}\t{raw}\n" for n, reason, raw in rejects)
            self._sync()
            self.written += len(rejects)

    def mark(self) -> int:
        return self._file.tell()

    def truncate(self, mark: int):
        """Forget what was written after ``mark`` (a batch that did not commit)."""
        self._file.seek(mark)
        self._file.truncate()

    def _sync(self):
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self):
        if self._file is not None:
            empty = self._file.tell() == 0
            self._file.close()
            if empty:
                os.remove(self.path)


def default_reject_path(input_name: str) -> str:
    """Next to the input, or in the working directory for standard input."""
    return "stdin.rejects" if input_name == "-" else input_name + ".rejects"


@dataclass
class Summary:
    """What a run did, for people (``table()``) and scripts (``as_dict()``)."""

    command: str
    input_name: str
    database: str
    run_id: int | None = None
    tally: Tally = field(default_factory=Tally)
    elapsed: float = 0.0
    resumed_from_line: int | None = None
    continues_run: int | None = None
    reject_file: str | None = None
    cache_hit_rate: float | None = None
    message: str = "completed"
    details: list = field(default_factory=list)  # (label, value) rows of a companion import
    read_label: str = "lines read"
    dry_run: bool = False
    retried: list = field(default_factory=list)  # transient database errors that were retried
    records_now: int | None = None  # records this invocation read and checked (not the run's)
    phases: list = field(default_factory=list)  # (name, rows or None, seconds)
    verified: "Report | None" = None  # --verify

    def __post_init__(self):
        if self.records_now is None:
            self.records_now = self.tally.imported + self.tally.rejected

    @property
    def rate(self) -> float:
        """Records per second of this invocation (a resumed run counts what it added)."""
        return self.records_now / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("tally", "phases", "verified")}
        row = self.tally.as_row()
        counts = row.pop("counts")
        out.update(row, skipped_by_reason=counts.pop("skipped"), **counts)
        out["rate"] = round(self.rate, 1)
        out["phases"] = [dict(phase=name, rows=rows, seconds=round(seconds, 3))
                         for name, rows, seconds in self.phases]
        if self.verified is not None:
            out["verify"] = self.verified.as_dict()
        return out

    def write_json(self, path: str):
        """--summary-json: the summary for monitoring."""
        try:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(self.as_dict(), f, indent=2, default=str)
        except OSError as error:
            raise UsageError(f"cannot write the summary to {path}: {error.strerror}; "
                             "give a writable --summary-json path") from None

    def table(self) -> str:
        t = self.tally
        skipped = ", ".join(f"{reason} {n:,}" for reason, n in sorted(t.skipped.items()))
        rows = [
            ("input", self.input_name),
            ("database", self.database),
            (self.read_label, f"{t.lines_read:,}"),
            ("  valid" if self.dry_run else "  imported", f"{t.imported:,} records"),
            ("  skipped", f"{sum(t.skipped.values()):,}" + (f"  ({skipped})" if skipped else "")),
            ("  rejected", f"{t.rejected:,}" + (f"  -> {self.reject_file}" if t.rejected else "")),
        ]
        rows += self.details
        if self.command in COMMANDS and not self.dry_run:
            rows.append(("levels", f"{t.states_new:,} new, {t.states_existing:,} already stored"))
            if t.undecoded:
                rows.append(("undecoded levels", f"{t.undecoded:,} (description kept, no quantum numbers)"))
        if self.command in WRITES_TRANSITIONS and not self.dry_run:
            rows.append(("transitions", f"{t.transitions:,}"))
        if t.species_created:
            shown = ", ".join(map(str, t.species_created[:10]))
            more = f" and {len(t.species_created) - 10} more" if len(t.species_created) > 10 else ""
            rows.append(("placeholder species", f"{len(t.species_created)} ({shown}{more})"))
        if self.resumed_from_line:
            rows.append(("resumed", f"from line {self.resumed_from_line:,}"))
        if self.continues_run:
            rows.append(("continues", f"run {self.continues_run}"))
        if self.retried:
            rows.append(("retries", f"{len(self.retried)} (last: {self.retried[-1][:60]})"))
        if self.cache_hit_rate is not None:
            rows.append(("level cache", f"{self.cache_hit_rate:.1%} hits"))
        rows.append(("elapsed", f"{self.elapsed:.2f} s  ({self.rate:,.0f} records/s)"))
        width = max(19, *(len(name) for name, _ in rows))
        head = f"{self.command}: " + (f"run {self.run_id} " if self.run_id else "") + self.message
        lines = [head] + [f"  {name:<{width}}  {value}" for name, value in rows]
        if self.phases:
            lines += ["", phase_table(self.phases, self.records_now, self.elapsed)]
        if self.verified is not None:
            lines += ["", self.verified.table()]
        return "\n".join(lines)

    @property
    def exit_code(self) -> int:
        if self.verified is not None and not self.verified.ok:
            return EXIT_FAILED
        return EXIT_REJECTED if self.tally.rejected else EXIT_OK


PHASE_COLUMNS = ("phase", "rows", "time", "rate")


def timed_phase(name: str, work) -> tuple:
    """(name, rows, seconds) of ``work()``, which returns the rows it handled."""
    started = time.monotonic()
    rows = work()
    return name, rows, time.monotonic() - started


def phase_rows(phases) -> list:
    return [(name, _count(n), f"{seconds:.2f} s", _rate(n, seconds)) for name, n, seconds in phases]


def phase_table(phases, total_rows=None, total_seconds=None) -> str:
    """pgloader-style: one row per phase with its rows, time and rate, then the total."""
    total = [("total", total_rows, total_seconds)] if total_seconds is not None else []
    return format_table(PHASE_COLUMNS, phase_rows(list(phases) + total))


def _count(n) -> str:
    return "-" if n is None else f"{n:,}"


def _rate(n, seconds) -> str:
    return f"{n / seconds:,.0f}/s" if n and seconds and seconds >= 0.01 else ""


def format_table(columns, rows, indent="  ") -> str:
    """A plain text table; columns whose values look numeric are right-aligned."""
    cells = [list(map(str, columns))] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    numeric = [all(_looks_numeric(row[i]) for row in cells[1:]) and len(cells) > 1
               for i in range(len(columns))]
    lines = []
    for row in cells:
        parts = [v.rjust(w) if right else v.ljust(w) for v, w, right in zip(row, widths, numeric)]
        lines.append((indent + "  ".join(parts)).rstrip())
    return "\n".join(lines)


_NUMERIC_CELL = re.compile(r"-?|[\d,.]+( s|/s| min \d\d s)?")


def _looks_numeric(text: str) -> bool:
    return _NUMERIC_CELL.fullmatch(text) is not None


RETRY_DELAY = 0.5  # seconds before the first retry; doubled for each further one


class RunStopped(ValdImportError):
    """--max-errors was reached; what was good is committed."""


def run_import(command: str, source: str = "-", *, using: str = DEFAULT_DB_ALIAS,
               options: ImportOptions | None = None) -> Summary:
    """Run one import command over ``source`` (a path or "-" for stdin) into database ``using``."""
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}")
    options = options or ImportOptions()
    started = time.monotonic()
    if options.dry_run:
        summary = _dry_run(command, Input(source), using, options)
    else:
        if options.fast:
            summary = FastLoad(command, source, using, options).run()
        else:
            if options.clear:
                confirm_clear(command, options)
            prepare_database(using)
            if options.clear:
                clear_tables(command, using)
            summary = _import_input(command, Input(source), using, options)
        if not options.skip_housekeeping:
            summary.phases += with_retries(using, options.retries, lambda: housekeeping(
                using, skip_calc=options.skip_calc, batch_size=options.batch_size))
        if options.verify:
            checked = time.monotonic()
            summary.verified = verify(using, dump=None if source in ("-", None) else source,
                                      skip_header=options.skip_header, workers=options.workers)
            summary.phases.append(("verify", len(summary.verified.rows), time.monotonic() - checked))
    summary.elapsed = time.monotonic() - started
    return summary


CLEARS = {"import-states": ("Transition", "State"), "import-transitions": ("Transition",),
          "import": ("Transition", "State")}  # the tables a command fills, and all that hangs on them


def confirm_clear(command: str, options: "ImportOptions", warning: str = ""):
    """Ask on the terminal before emptying tables, unless --yes; refuse when there is none."""
    tables = ", ".join(CLEARS[command]).lower().replace("transition", "transitions").replace(
        "state", "states")
    if warning:
        print(warning, file=sys.stderr)
    confirm(f"Empty {tables} and import? [y/N] ", options.yes,
            f"--clear empties {tables} and asks for confirmation on a terminal, "
            "and there is none: add --yes to run it unattended")


def clear_tables(command: str, using: str):
    """Empty the tables ``command`` fills, and forget the runs that filled them."""
    from django.apps import apps
    from node_common.models import ImportRun, Species
    writer = Writer.for_alias(using)
    models = [apps.get_model("node_atom", m) for m in CLEARS[command]]
    with transaction.atomic(using=using):
        for model in models:
            writer.clear_table(model._meta.db_table)
        emptied = {m._meta.db_table for m in models}
        runs = [c for c, covers in RunLedger.COVERS.items() if covers & emptied]
        ImportRun.objects.using(using).filter(command__in=runs).delete()
        if "states" in emptied:
            Species.objects.using(using).update(ground_state=None)


class FastLoad:
    """--fast: a first load into emptied tables, the fastest way each engine allows.

    Secondary indexes are dropped and built again after the load; PostgreSQL
    tables are UNLOGGED meanwhile, SQLite runs without a journal, MySQL without
    uniqueness checks. The unique constraint of the levels stays in place (the
    importer deduplicates with it) and is verified at the end. A crash in the
    middle can lose everything loaded (and, on SQLite, corrupt the file).
    """

    RISKS = ("--fast: the tables are emptied first; until the run ends, a crash or a killed "
             "process can lose everything loaded (on SQLite, corrupt the database file), and "
             "queries on these tables are slow: their indexes are only built at the end.")

    def __init__(self, command, source, using, options):
        from django.apps import apps
        self.command, self.source, self.using, self.options = command, source, using, options
        self.models = [apps.get_model("node_atom", m) for m in CLEARS[command]]
        self.phases = []

    def run(self) -> Summary:
        if not self.options.clear:
            raise UsageError("--fast needs --clear: it loads into emptied tables; add --clear "
                             "(it deletes what these tables hold) or leave out --fast")
        confirm_clear(self.command, self.options, self.RISKS)
        prepare_database(self.using)
        writer = Writer.for_alias(self.using)
        tables = [m._meta.db_table for m in self.models]
        self._phase("clear", lambda: clear_tables(self.command, self.using))
        self._phase("drop indexes", lambda: self._indexes(drop=True))
        writer.start_fast(tables)
        try:
            summary = _import_input(self.command, Input(self.source), self.using, self.options)
        finally:
            self._phase("crash safety back", lambda: writer.end_fast(tables))
        self._phase("indexes", lambda: self._indexes(drop=False))
        self._phase("verify", self._verify_unique)
        summary.phases = self.phases[:2] + summary.phases + self.phases[2:]
        return summary

    def _phase(self, name, work):
        self.phases.append(timed_phase(name, work))

    def _indexes(self, drop: bool) -> int:
        """Drop or build the models' secondary indexes (not the unique constraints)."""
        with connections[self.using].schema_editor() as editor:
            for model in self.models:
                for index in model._meta.indexes:
                    # the index's own SQL: editor.remove_index would add an index on
                    # MySQL for a foreign key these tables do not enforce
                    editor.execute((index.remove_sql if drop else index.create_sql)(model, editor))
        return sum(len(model._meta.indexes) for model in self.models)

    def _verify_unique(self) -> int:
        """Levels checked: none may be stored twice."""
        duplicates = duplicate_levels(self.using)
        if duplicates:
            raise ValdImportError(f"{duplicates:,} levels are stored twice after the "
                                  "--fast load: rerun it with --fast --clear, or without --fast")
        from node_atom.models import State
        return State.objects.using(self.using).count()


def _import_input(command, inp, using, options) -> Summary:
    """Import ``inp`` after what earlier runs on the same input committed."""
    writer = Writer.for_alias(using)
    ledger = RunLedger(using, command, inp, options)
    candidates = ledger.candidates()
    while True:
        candidate = candidates.pop(0) if candidates else None
        with_retries(using, options.retries, lambda: ledger.begin(candidate),
                     on_retry=lambda error: ledger.retried.append(_first_line(error)))
        run = BatchImport(command, inp, writer, ledger, options)
        try:
            return run.run()
        except PrefixMismatch as mismatch:
            if not inp.reopenable:
                raise UsageError(
                    f"standard input differs from the input of run {ledger.candidate.id} (same "
                    f"first 64 KiB, different before line {mismatch.line:,}); give the file with "
                    "--file so that it can be compared with every earlier run, or use --restart "
                    "to import all of it as a new run") from None
            inp.reopen()
        except RunStopped:
            ledger.finish_quietly(ledger.model.STOPPED, run.tally, "stopped by --max-errors")
            raise
        except BaseException as error:
            ledger.finish_quietly(ledger.model.FAILED, None, _one_line(error))
            raise


def with_retries(using: str, retries: int, work, already_done=None, on_retry=None):
    """``work()``; after a transient database error, reconnect, wait and try again.

    ``already_done()``, asked before each new try, returns a result when the
    work committed although the connection broke (the commit's answer was lost).
    ``on_retry(error)`` is told about each retry.
    """
    attempt = 0
    while True:
        try:
            if attempt and already_done is not None:
                done = already_done()
                if done is not None:
                    return done
            return work()
        except Exception as error:
            if error_kind(error) != TRANSIENT:
                raise
            if attempt >= retries:
                raise DatabaseUnavailable(
                    f"the database failed {attempt + 1} times ({_first_line(error)}); it "
                    "may be down: rerun the same command to resume") from error
            attempt += 1
            if on_retry is not None:
                on_retry(error)
            reconnect(using)
            time.sleep(min(30.0, RETRY_DELAY * 2 ** (attempt - 1)))


class DatabaseUnavailable(ValdImportError):
    """Transient faults outlasted --retries."""


class BatchImport:
    """One run of a pass over an input.

    Re-reads and checks what an earlier run committed, then parses, writes and
    commits one batch at a time: the batch's rows, its rejects and the run's
    position together. A transient fault retries the batch on a fresh
    connection; rows the database refuses are isolated by halving the batch
    under savepoints and rejected, and the rest is committed.
    """

    def __init__(self, command, inp, writer, ledger, options):
        self.command, self.inp, self.writer, self.ledger = command, inp, writer, ledger
        self.options, self.using = options, writer.alias
        self.cache = StateCache(options.cache_size)
        self.config = ParseConfig(options.skip_header, options.skip_calc,
                                  tuple(linelist_methods(self.using).items()),
                                  writer.rows if command in WRITES_TRANSITIONS else None)
        self.rejects = RejectFile(ledger.reject_path())
        self.tally = Tally()
        self.resumed_with = 0  # records the run had when this invocation took it over
        self.seconds, self.rows = Counter(), Counter()  # per phase, this invocation
        self.started = time.monotonic()

    def run(self) -> Summary:
        prefix_lines, stop_at = 0, self.ledger.skip_to
        progress = _progress_bar(self.inp, self.options)
        self._retrying(self.writer.start_import)
        try:
            batches = read_batches(self.inp.lines(), self.options.batch_size, stop_at)
            if stop_at is None:
                self.rejects.open()
            else:
                for batch in batches:  # re-reading what an earlier run committed
                    prefix_lines += len(batch.lines)
                    _advance(progress, self.inp)
                    if batch.end_offset == stop_at:
                        self._continue_after(batch, prefix_lines)
                        break
            for batch, parsed in parsed_batches(batches, self.config, self.options):
                self._import(batch, parsed)
                _advance(progress, self.inp, parsed.records, self._progress_note)
        finally:
            progress.close()
            self.rejects.close()
            self.writer.end_import()
        if self.ledger.run is None:  # the input ended inside an earlier run's committed prefix
            raise PrefixMismatch(self.ledger.candidate.committed_line)
        return self._finish()

    def _progress_note(self) -> str:
        records = self.tally.imported + self.tally.rejected - self.resumed_with
        rate = records / max(time.monotonic() - self.started, 1e-9)
        hits = self.cache.hits + self.cache.misses
        return (f"{rate:,.0f} records/s, {self.rows['levels']:,} new levels"
                + (f", cache {self.cache.hit_rate:.0%} hits" if hits else ""))

    def _retrying(self, work, already_done=None):
        return with_retries(self.using, self.options.retries, work, already_done,
                            on_retry=lambda error: self.ledger.retried.append(_first_line(error)))

    def _continue_after(self, batch, prefix_lines):
        if batch.sha256 != self.ledger.candidate.committed_sha256:
            raise PrefixMismatch(batch.last_line)

        def work():
            with transaction.atomic(using=self.using):
                return self.ledger.prefix_verified(batch, prefix_lines, Tally())
        self.tally = self._retrying(work)
        self.resumed_with = self.tally.imported + self.tally.rejected
        self.rejects.open(keep_through_line=batch.last_line)

    def _import(self, batch, parsed):
        mark = self.rejects.mark()

        def work(isolate=False):
            self.rejects.truncate(mark)  # what a failed try wrote
            with transaction.atomic(using=self.using):
                tally, refused = self._write(batch, parsed, isolate)
                self.rejects.write(sorted(parsed.rejects + refused))
                self.ledger.record_batch(batch, tally)
            return tally

        def refusals_isolated():
            # Savepoints only when the database refuses a row: on SQLite each one keeps
            # a journal of every page the batch changes (in memory: temp_store=MEMORY).
            try:
                return work()
            except Exception as error:
                if error_kind(error) != REFUSED:
                    raise
                self.writer.create_stage_tables()
                return work(isolate=True)

        def already_done():
            run = self.ledger.reload()
            return Tally.from_run(run) if run.committed_bytes >= batch.end_offset else None

        before = self.tally
        self.tally = self._retrying(refusals_isolated, already_done)
        self.seconds["parse"] += parsed.seconds
        self.rows.update(parse=parsed.records + len(parsed.rejects),
                         levels=self.tally.states_new - before.states_new,
                         transitions=self.tally.transitions - before.transitions)
        limit = self.options.max_errors
        if limit and self.tally.rejected >= limit and self.tally.rejected > before.rejected:
            raise RunStopped(f"stopped after {self.tally.rejected:,} rejected lines (--max-errors "
                             f"{limit}); lines up to {batch.last_line:,} are committed, the "
                             f"rejects are in {self.rejects.path}")

    def _write(self, batch, parsed, isolate: bool) -> tuple[Tally, list]:
        """Write one batch in the open transaction; (the run's new tally, refused rejects).

        A row the database refuses makes it raise, unless ``isolate``: then the
        refused rows are found and returned, the others written."""
        tally = self.tally.copy()
        cursor = self.writer.cursor()
        missing = self.writer.missing_species(cursor, parsed.species)
        if missing:
            self.writer.create_species(cursor, missing)
            tally.species_created.extend(missing)
        refused = []
        if parsed.records and isolate:
            refused = self._store(batch, parsed, parsed.transitions, parsed.keys, tally)
        elif parsed.records:
            self._count_stored(tally, *self._store_records(batch, parsed, parsed.transitions, parsed.keys))
        if refused and len(refused) == parsed.records > 1:
            raise ValdImportError(f"the database refused every record of lines {batch.first_line:,}"
                                  f"-{batch.last_line:,}; first: {refused[0][1]}")
        tally.add(len(batch.lines), parsed, len(refused))
        return tally, refused

    def _store(self, batch, parsed, records, keys, tally) -> list:
        """Store ``records`` under a savepoint; on refusal, halve until the bad ones are alone."""
        try:
            with transaction.atomic(using=self.using):
                new, existing, transitions = self._store_records(batch, parsed, records, keys)
        except Exception as error:
            if error_kind(error) != REFUSED:
                raise
            if len(records) == 1:
                number = records[0][0]
                return [(number, f"refused by the database: {_first_line(error)}",
                         _raw_text(batch.lines[number - batch.first_line]))]
            half = len(records) // 2
            return [reject for part in (records[:half], records[half:])
                    for reject in self._store(batch, parsed, part, _keys_of(part), tally)]
        self._count_stored(tally, new, existing, transitions)
        return []

    @staticmethod
    def _count_stored(tally, new, existing, transitions):
        tally.states_new += new
        tally.states_existing += existing
        tally.transitions += transitions

    def _store_records(self, batch, parsed, records, keys) -> tuple[int, int, int]:
        """Levels not in the cache, then (pass 2) the transitions; (new, existing, transitions).

        Levels the cache does not know are looked up by key; those not stored yet
        are inserted from the rows the parser sent (it sends a level's row only
        the first time it meets it, so a row missing here is parsed again).
        """
        cursor = self.writer.cursor()
        run_id = self.ledger.run.id
        started = time.monotonic()
        ids, unknown = {}, []
        for key in keys:
            state_id = self.cache.get(key)
            if state_id is None:
                unknown.append(key)
            else:
                ids[key] = state_id
        new = existing = 0
        if unknown:
            found = self.writer.lookup_levels(cursor, unknown)
            ids.update(found)
            existing = len(found)
            missing = [k for k in unknown if k not in found]
            if missing:
                rowless = [k for k in missing if k not in parsed.levels]
                levels = parse_batch(batch.lines, batch.first_line, self.config).levels \
                    if rowless else parsed.levels
                new, fetched = self.writer.store_levels(cursor, [levels[k] + (run_id,) for k in missing])
                existing += len(missing) - new
                ids.update(fetched)
            learned = {k: ids[k] for k in unknown}
            transaction.on_commit(lambda: self.cache.update(learned), using=self.using)
        levels_done = time.monotonic()
        self.seconds["levels"] += levels_done - started
        if self.command not in WRITES_TRANSITIONS:
            return new, existing, 0
        self.writer.insert_transitions(cursor, records, ids, run_id)
        self.seconds["transitions"] += time.monotonic() - levels_done
        return new, existing, len(records)

    def _finish(self) -> Summary:
        ledger, tally = self.ledger, self.tally
        message = "completed"
        if ledger.candidate is not None and not ledger.resumed and tally.imported + tally.rejected == 0:
            message = f"found nothing new: run {ledger.candidate.id} imported this input already"

        def work():
            tally.undecoded = undecoded_levels(self.using, ledger.run.id)
            ledger.finish(ledger.model.COMPLETED, tally, "" if message == "completed" else message)
        self._retrying(work)
        return Summary(self.command, self.inp.name, describe_database(self.using), ledger.run.id,
                       tally, message=message,
                       resumed_from_line=ledger.run.resumed_from_line if ledger.resumed else None,
                       continues_run=ledger.candidate.id if ledger.candidate and not ledger.resumed else None,
                       reject_file=self.rejects.path if tally.rejected else None,
                       cache_hit_rate=self.cache.hit_rate if self.cache.hits + self.cache.misses else None,
                       retried=self.ledger.retried,
                       records_now=tally.imported + tally.rejected - self.resumed_with,
                       phases=[(name, self.rows[name], self.seconds[name]) for name in
                               ("parse", "levels", "transitions")[:3 if self.command in
                                                                   WRITES_TRANSITIONS else 2]])


def _keys_of(records) -> list:
    return list(dict.fromkeys(key for _, lower, upper, _ in records for key in (lower, upper)))


def parsed_batches(batches, config: ParseConfig, options: "ImportOptions"):
    """(batch, parsed batch) in input order.

    The first batch is parsed here; from the second on, ``options.workers``
    processes parse (0: here) while the caller writes, with a bounded number
    of batches in flight, so memory stays constant.
    """
    shipped = KeySet(options.cache_size)
    workers = default_workers() if options.workers is None else options.workers
    for batch in batches:
        parsed = parse_batch(batch.lines, batch.first_line, config, shipped)
        shipped.update(parsed.levels)
        yield batch, parsed
        break
    if workers == 0:
        for batch in batches:
            parsed = parse_batch(batch.lines, batch.first_line, config, shipped)
            shipped.update(parsed.levels)
            yield batch, parsed
        return
    import multiprocessing
    pool = multiprocessing.get_context("spawn").Pool(
        workers, initializer=_start_worker, initargs=(config, options.cache_size))
    try:
        in_flight = deque()
        for batch in batches:
            in_flight.append((batch, pool.apply_async(_parse_in_worker, (batch.lines, batch.first_line))))
            if len(in_flight) > workers:  # each worker busy, one batch waiting
                done, result = in_flight.popleft()
                yield done, result.get()
        while in_flight:
            done, result = in_flight.popleft()
            yield done, result.get()
        pool.close()
    finally:
        pool.terminate()


def default_workers() -> int:
    """One less than the cores, at least 1: the main process writes while they parse."""
    return max(1, (os.cpu_count() or 2) - 1)


_worker = None  # (ParseConfig, KeySet) of a worker process


def _start_worker(config, shipped_size):
    global _worker
    _worker = (config, KeySet(shipped_size))


def _parse_in_worker(lines, first_line):
    config, shipped = _worker
    parsed = parse_batch(lines, first_line, config, shipped)
    shipped.update(parsed.levels)
    return parsed


def _dry_run(command, inp, using, options) -> Summary:
    """Parse and check the whole input, write the reject file; touch no table."""
    tally = Tally()
    rejects = RejectFile(options.reject_file or default_reject_path(inp.name))
    rejects.open()
    progress = _progress_bar(inp, options)
    config = ParseConfig(options.skip_header, options.skip_calc, rows=TUPLES)
    try:
        for batch, parsed in parsed_batches(read_batches(inp.lines(), options.batch_size), config, options):
            rejects.write(parsed.rejects)
            tally.add(len(batch.lines), parsed)
            _advance(progress, inp, parsed.records)
    finally:
        progress.close()
        rejects.close()
    return Summary(command, inp.name, describe_database(using), None, tally, dry_run=True,
                   message="checked (dry run: nothing was written)",
                   reject_file=rejects.path if tally.rejected else None)


def _progress_bar(inp, options):
    from tqdm import tqdm
    enabled = options.progress if options.progress is not None else (
        not options.quiet and sys.stderr.isatty())
    if inp.size:
        return tqdm(total=inp.size, unit="B", unit_scale=True, disable=not enabled,
                    file=sys.stderr, desc=os.path.basename(inp.name))
    return tqdm(unit=" records", unit_scale=True, disable=not enabled, file=sys.stderr, desc="stdin")


def _advance(progress, inp, records: int = 0, note=None):
    """Move the bar: bytes of a file as read from disk (compressed: so the ETA holds),
    records of standard input; ``note()`` gives the text after it."""
    if progress.disable:
        return
    if note is not None:
        progress.set_postfix_str(note(), refresh=False)
    progress.update(inp.position() - progress.n if inp.size else records)


def _one_line(error) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def import_states(source="-", *, using=DEFAULT_DB_ALIAS, **options) -> Summary:
    """Pass 1: store every distinct level of the dump once."""
    return run_import("import-states", source, using=using, options=ImportOptions(**options))


def import_transitions(source="-", *, using=DEFAULT_DB_ALIAS, **options) -> Summary:
    """Pass 2: store every transition with its level ids (levels missing from pass 1 are added)."""
    return run_import("import-transitions", source, using=using, options=ImportOptions(**options))


def import_dump(source="-", *, using=DEFAULT_DB_ALIAS, **options) -> Summary:
    """Both passes per batch in one read of the input."""
    return run_import("import", source, using=using, options=ImportOptions(**options))


# Companion files: species list, line lists, references ----------------------

ELEMENTS = ("H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu "
            "Zn Ga Ge As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba "
            "La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi "
            "Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr").split()
SPECIES_HEADER = ("Use", "Index", "Name", "Charge", "InChI", "InChIkey", "Mass", "Ion. en.",
                  "Fract.", "Num. comp.", "N1", "N2", "N3", "N4", "Dummy")
_ATOM_NAME = re.compile(r"(\d*)([A-Z][a-z]?)\b")
COMPANIONS = {
    "import-species": "import the VALD species list (VALD_list_of_species.csv)",
    "import-linelists": "import the line lists (linelists.dat) and apply their methods",
    "import-references": "import the BibTeX references (VALD3_ref.bib)",
}


def run_companion(command: str, source: str = "-", *, using: str = DEFAULT_DB_ALIAS,
                  options: ImportOptions | None = None) -> Summary:
    """Import one companion file in one transaction; returns its summary."""
    options = options or ImportOptions()
    prepare_database(using)
    started = time.monotonic()
    inp = Input(source)
    ledger = RunLedger(using, command, inp, options)
    ledger.begin(None)
    tally, rejects = Tally(), RejectFile(ledger.reject_path())
    rejects.open()
    importer = {"import-species": _species_rows, "import-linelists": _linelist_rows,
                "import-references": _reference_rows}[command]
    try:
        text = b"".join(inp.lines()).decode("utf-8", "replace")
        with transaction.atomic(using=using):
            details = importer(text, using, tally, rejects.write)
            ledger.finish(ledger.model.COMPLETED, tally)
    except BaseException as error:
        ledger.finish(ledger.model.FAILED, None, _one_line(error))
        raise
    finally:
        rejects.close()
    update_ground_states(using)
    return Summary(command, inp.name, describe_database(using), ledger.run.id, tally,
                   elapsed=time.monotonic() - started, details=details,
                   reject_file=rejects.path if tally.rejected else None,
                   read_label="entries read" if command == "import-references" else "lines read")


def _upsert(model, using, objects, fields, unique=("pk",)) -> tuple[int, int]:
    """Insert or update ``objects`` on their unique key; (new, already present) for pk keys."""
    present = set()
    if unique == ("pk",):
        present = set(model.objects.using(using).filter(pk__in=[o.pk for o in objects])
                      .values_list("pk", flat=True))
    targeted = connections[using].features.supports_update_conflicts_with_target
    model.objects.using(using).bulk_create(
        objects, update_conflicts=True, unique_fields=list(unique) if targeted else None,
        update_fields=fields, batch_size=1000)
    return len({o.pk for o in objects} - present), len(present)


def _species_rows(text, using, tally, reject):
    """Species (upsert, so placeholders get their names) and molecules' components."""
    import csv
    from node_common.models import Species, SpeciesComponent
    species, components, bad = {}, {}, []
    rows = csv.reader(io.StringIO(text))
    for row in rows:
        number = rows.line_num
        tally.lines_read += 1
        if not row or not "".join(row).strip():
            tally.skipped["blank"] += 1
        elif row[0].startswith("#"):
            tally.skipped["comment"] += 1
        elif row[0].strip() == "Use":
            tally.skipped["header"] += 1
        else:
            try:
                record, parts = _species_record(row)
            except (ValueError, IndexError) as error:
                bad.append((number, f"bad species row: {error}", ",".join(row)))
                continue
            species[record.id] = record
            if parts:
                components[record.id] = parts
            tally.imported += 1
    tally.rejected += len(bad)
    reject(bad)
    fields = [f.name for f in Species._meta.concrete_fields if f.name not in ("id", "ground_state")]
    new, updated = _upsert(Species, using, list(species.values()), fields)
    atoms = {a for parts in components.values() for a in parts}
    placeholders = sorted(atoms - set(Species.objects.using(using).filter(pk__in=atoms)
                                      .values_list("pk", flat=True)))
    Species.objects.using(using).bulk_create([Species(id=a) for a in placeholders])
    wanted = [SpeciesComponent(molecule_id=m, atom_id=a, position=p)
              for m, parts in components.items() for p, a in enumerate(parts, 1)]
    _upsert(SpeciesComponent, using, wanted, ["atom"], unique=("molecule", "position"))
    keep = {(c.molecule_id, c.position) for c in wanted}
    stale = [pk for pk, m, p in SpeciesComponent.objects.using(using).filter(
        molecule_id__in=list(components)).values_list("pk", "molecule_id", "position")
        if (m, p) not in keep]
    SpeciesComponent.objects.using(using).filter(pk__in=stale).delete()
    tally.species_created = placeholders
    details = [("species", f"{new:,} new, {updated:,} already present"),
               ("components", f"{len(wanted):,} of {len(components):,} molecules")]
    if placeholders:
        details.append(("placeholder atoms", ", ".join(map(str, placeholders))))
    return details


def _species_record(row):
    """A Species and its component atom indexes from one row of the species list."""
    from node_common.models import Species
    values = dict(zip(SPECIES_HEADER, (v.strip() for v in row)))
    if len(row) < 10:
        raise ValueError(f"{len(row)} columns, {len(SPECIES_HEADER)} expected")

    def number(name, kind=float):
        return kind(values[name]) if values.get(name) else None

    index, mass, name = int(values["Index"]), number("Mass"), values["Name"] or None
    atomic = isotope = None
    match = _ATOM_NAME.match(name or "")
    if index < 10000 and match and match[2] in ELEMENTS:
        atomic, isotope = ELEMENTS.index(match[2]) + 1, int(match[1]) if match[1] else None
    species = Species(id=index, name=name, ion=number("Charge", int), inchi=values["InChI"] or None,
                      inchikey=values.get("InChIkey") or None, mass=mass,
                      massno=isotope or (round(mass) if mass is not None else None),
                      ionen=number("Ion. en."), solariso=number("Fract."),
                      ncomp=number("Num. comp.", int), atomic=atomic, isotope=isotope)
    parts = [int(values[f"N{i}"]) for i in range(1, 5) if values.get(f"N{i}", "0") not in ("", "0")]
    return species, parts if index >= 10000 else []


def _linelist_rows(text, using, tally, reject):
    """Line lists (upsert), then their methods on the transitions and levels already stored."""
    from node_common.models import LineList
    lists, bad = {}, []
    for number, line in enumerate(text.splitlines(), 1):
        tally.lines_read += 1
        fields = line.split("\t")
        if not line.strip():
            tally.skipped["blank"] += 1
        elif line.startswith("#"):
            tally.skipped["comment"] += 1
        elif number == 1 and len(fields) > 1 and not fields[1].strip().lstrip("-").isdigit():
            tally.skipped["header"] += 1
        elif len(fields) != 4:
            bad.append((number, f"{len(fields)} tab-separated fields, 4 expected", line))
        else:
            srcfile, ident, listtype, method = (f.strip() for f in fields)
            try:
                lists[int(ident)] = LineList(id=int(ident), srcfile=srcfile or None,
                                             listtype=listtype or None,
                                             method=int(method) if method else None)
                tally.imported += 1
            except ValueError:
                bad.append((number, "line-list id and method must be integers", line))
    tally.rejected += len(bad)
    reject(bad)
    new, updated = _upsert(LineList, using, list(lists.values()), ["srcfile", "listtype", "method"])
    transitions, states = apply_linelist_methods(using)
    return [("line lists", f"{new:,} new, {updated:,} already present"),
            ("methods applied", f"{transitions:,} transitions, {states:,} levels")]


def _reference_rows(text, using, tally, reject):
    """BibTeX entries, keyed case-sensitively, with their raw text kept byte-exact."""
    import logging
    import bibtexparser
    from node_common.models import Reference
    logging.getLogger("bibtexparser").setLevel(logging.ERROR)
    library = bibtexparser.parse_string(text)
    model = bibtexparser.model
    longest = Reference._meta.get_field("id").max_length
    kinds = {model.ImplicitComment: "comment", model.ExplicitComment: "comment",
             model.String: "@string", model.Preamble: "@preamble"}
    bad, refs = [], []
    for block in library.blocks:
        tally.lines_read += 1
        if isinstance(block, model.Entry) and len(block.key) > longest:
            bad.append((block.start_line + 1, f"key longer than {longest} characters",
                        block.raw.replace("\n", " ")))
        elif isinstance(block, model.Entry):
            refs.append(Reference(id=block.key, bibtex=block.raw))
            tally.imported += 1
        elif isinstance(block, model.DuplicateBlockKeyBlock):
            bad.append((block.start_line + 1, f"duplicate key {block.key!r}; the first entry is kept",
                        block.raw.replace("\n", " ")))
        elif isinstance(block, bibtexparser.model.ParsingFailedBlock):
            reason = getattr(block.error, "abort_reason", "") or _first_line(block.error)
            bad.append((block.start_line + 1, f"not a BibTeX entry: {reason.strip()}",
                        block.raw.replace("\n", " ")))
        else:
            tally.skipped[kinds.get(type(block), "other")] += 1
    tally.rejected += len(bad)
    reject(bad)
    new, updated = _upsert(Reference, using, refs, ["bibtex"])
    return [("references", f"{new:,} new, {updated:,} already present")]


def import_species(source="-", *, using=DEFAULT_DB_ALIAS, **options) -> Summary:
    """Species list: upsert species (placeholders get their names) and components."""
    return run_companion("import-species", source, using=using, options=ImportOptions(**options))


def import_linelists(source="-", *, using=DEFAULT_DB_ALIAS, **options) -> Summary:
    """Line lists, and their methods on what is already stored."""
    return run_companion("import-linelists", source, using=using, options=ImportOptions(**options))


def import_references(source="-", *, using=DEFAULT_DB_ALIAS, **options) -> Summary:
    """BibTeX references."""
    return run_companion("import-references", source, using=using, options=ImportOptions(**options))


# ------------------------------------------------------------ operations ----

def describe_database(using: str = DEFAULT_DB_ALIAS) -> str:
    """Engine and location of a database, without its password."""
    settings = connections[using].settings_dict
    vendor = connections[using].vendor
    if vendor == "sqlite":
        return f"sqlite {settings['NAME']}"
    host = settings.get("HOST") or "localhost"
    port = f":{settings['PORT']}" if settings.get("PORT") else ""
    user = f"{settings['USER']}@" if settings.get("USER") else ""
    return f"{vendor} {user}{host}{port}/{settings['NAME']}"


def prepare_database(using: str = DEFAULT_DB_ALIAS):
    """Check that the database answers and create or migrate the schema when needed."""
    from django.core.exceptions import ImproperlyConfigured
    try:
        connection = connections[using]
        connection.ensure_connection()
    except ImproperlyConfigured as error:
        reason = " ".join(str(error).split())  # Django's hint is on a second line
        raise UsageError(f"cannot use the database: {reason}") from None
    except Exception as error:
        raise UsageError(f"cannot connect to {describe_database(using)}: {_first_line(error)}; "
                         "is the server running, and are --database-url / DATABASE_URL right?") from None
    from django.db.migrations.executor import MigrationExecutor
    executor = MigrationExecutor(connection)
    if executor.migration_plan(executor.loader.graph.leaf_nodes()):
        from django.core.management import call_command
        call_command("migrate", database=using, interactive=False, verbosity=0)


def _first_line(error) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def linelist_methods(using: str = DEFAULT_DB_ALIAS) -> dict:
    """Line-list id -> method, from the linelists table."""
    from node_common.models import LineList
    return dict(LineList.objects.using(using).exclude(method=None).values_list("id", "method"))


def undecoded_levels(using: str, run_id: int) -> int:
    """Levels stored by a run whose description gave no quantum number."""
    from node_atom.models import State
    return State.objects.using(using).filter(
        run_id=run_id, term_desc__isnull=False,
        **{f"{column}__isnull": True for column in DECODED_QN_COLUMNS}).count()


def apply_linelist_methods(using: str = DEFAULT_DB_ALIAS) -> tuple[int, int]:
    """Set wave_method (from ll1) and energy_method (from the level's energy line list) of
    rows already stored: one UPDATE per table, touching only rows whose method changes."""
    writer = Writer.for_alias(using)
    counts = []
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        for table, target, source in (("transitions", "wave_method", "ll1"),
                                      ("states", "energy_method", "energy_linelist_id")):
            cursor.execute(writer.update_from_linelists_sql(table, target, source))
            counts.append(cursor.rowcount)
    return tuple(counts)


def update_ground_states(using: str = DEFAULT_DB_ALIAS) -> int:
    """Set species.ground_state_id to the lowest-energy level of each species with levels."""
    q = connections[using].ops.quote_name
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(
            f"UPDATE {q('species')} SET {q('ground_state_id')} = "
            f"(SELECT s.id FROM {q('states')} s WHERE s.{q('species_id')} = {q('species')}.id "
            f"ORDER BY s.{q('energy_scaled')}, s.id LIMIT 1) "
            f"WHERE {q('ground_state_id')} IS NOT NULL "
            f"OR EXISTS (SELECT 1 FROM {q('states')} s WHERE s.{q('species_id')} = {q('species')}.id)")
        return cursor.rowcount


def housekeeping(using: str = DEFAULT_DB_ALIAS, *, skip_calc: bool = False,
                 batch_size: int = 10_000) -> list:
    """After an import: ground states, Einstein A still missing, planner statistics.

    Returns the phases (name, rows, seconds).
    """
    return [timed_phase("ground states", lambda: update_ground_states(using)),
            timed_phase("derived values", lambda: 0 if skip_calc else fill_einstein_a(using, batch_size)),
            timed_phase("statistics", lambda: analyze_tables(using))]


def fill_einstein_a(using: str = DEFAULT_DB_ALIAS, batch_size: int = 10_000) -> int:
    """Compute Einstein A where it is missing and computable, a batch of rows at a time."""
    q = connections[using].ops.quote_name
    select = (f"SELECT t.id, t.loggf, u.{q('J_scaled')}, t.wave FROM transitions t "
              f"JOIN states u ON u.id = t.upstate WHERE {missing_einstein_a(q)} AND t.id > %s "
              "ORDER BY t.id LIMIT %s")
    filled, last = 0, 0
    while True:
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            cursor.execute(select, [last, batch_size])
            rows = cursor.fetchall()
            if not rows:
                return filled
            last = rows[-1][0]
            values = []
            for row_id, loggf, j_scaled, wave in rows:
                try:
                    values.append((einstein_a(str(loggf), j_scaled, str(wave)), row_id))
                except RejectedLine:  # overflows: left empty
                    pass
            cursor.executemany("UPDATE transitions SET einsteina = %s WHERE id = %s", values)
            filled += len(values)


def missing_einstein_a(q) -> str:
    """SQL: transition t (upper level u) has no Einstein A though einstein_a() would give one."""
    return f"t.einsteina IS NULL AND t.loggf IS NOT NULL AND u.{q('J_scaled')} >= 0 AND t.wave <> 0"


def analyze_tables(using: str = DEFAULT_DB_ALIAS) -> int:
    """Refresh the query planner's statistics of the VALD tables; returns the tables analysed."""
    tables = ("species", "states", "transitions")
    with connections[using].cursor() as cursor:
        for statement in Writer.for_alias(using).analyze_sql(tables):
            cursor.execute(statement)
            if cursor.description:
                cursor.fetchall()
    return len(tables)


def duplicate_levels(using: str = DEFAULT_DB_ALIAS) -> int:
    """Level rows beyond the first for one (species, energy, J)."""
    q = connections[using].ops.quote_name
    return _scalar(using, "SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM states "
                          f"GROUP BY species_id, energy, {q('J')} HAVING COUNT(*) > 1) d")


def _scalar(using, sql, params=()):
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.fetchone()[0] or 0)


# Verify ----------------------------------------------------------------------

@dataclass
class Check:
    name: str
    count: int
    fix: str = ""  # what to do about it, shown when the check fails
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.count == 0


@dataclass
class Report:
    """What an operation found or did: ``table()`` for people, ``as_dict()`` for scripts."""

    title: str
    columns: tuple
    rows: list
    verdict: str = ""
    ok: bool = True
    data: object = None  # the JSON form of the rows, when not just rows by column

    def table(self) -> str:
        body = format_table(self.columns, self.rows) if self.rows else "  (none)"
        return "\n".join(part for part in (self.title, body, self.verdict) if part)

    def as_dict(self) -> dict:
        rows = self.data if self.data is not None else [dict(zip(self.columns, r)) for r in self.rows]
        return {"title": self.title, "ok": self.ok, "verdict": self.verdict, "rows": rows}


def verify(using: str = DEFAULT_DB_ALIAS, *, dump: str | None = None, skip_header: int = 2,
           workers: int | None = None, progress: bool | None = None) -> Report:
    """Check the database: links, uniqueness, derived values, indexes, and the dump's counts."""
    checks = database_checks(using)
    checks.append(index_check(using))
    if dump is not None:
        checks.append(dump_check(using, dump, skip_header, workers, progress))
    failed = [c for c in checks if not c.ok]
    rows = [(c.name, f"{c.count:,}", "ok" if c.ok else "FAILED" + (f": {c.detail}" if c.detail else "")
             + (f" ({c.fix})" if c.fix else "")) for c in checks]
    verdict = (f"all {len(checks)} checks passed" if not failed
               else f"{len(failed)} of {len(checks)} checks failed: "
                    + ", ".join(c.name for c in failed))
    data = [dict(check=c.name, count=c.count, ok=c.ok, detail=c.detail, fix=c.fix) for c in checks]
    return Report(f"verify: {describe_database(using)}", ("check", "count", "verdict"), rows,
                  verdict, not failed, data)


def database_checks(using: str) -> list[Check]:
    """The checks that need only the database, each one SQL count."""
    writer = Writer.for_alias(using)
    q, real = writer.q, writer.float_type
    j, j_scaled = q("J"), q("J_scaled")

    def num(column):
        return f"CAST({column} AS {real})"
    ritz_off = (f"ABS({num('t.waveritz')} - 100000000.0 / ABS({num('u.energy')} - {num('l.energy')})) "
                f"> {num('t.waveritz')} * {num('t.waveritz')} * 1e-12 + 1e-5")
    queries = [
        ("transitions whose upper level is missing", "rollback the run that stored them, or reimport",
         "SELECT COUNT(*) FROM transitions t WHERE NOT EXISTS "
         "(SELECT 1 FROM states s WHERE s.id = t.upstate)", ()),
        ("transitions whose lower level is missing", "rollback the run that stored them, or reimport",
         "SELECT COUNT(*) FROM transitions t WHERE NOT EXISTS "
         "(SELECT 1 FROM states s WHERE s.id = t.lostate)", ()),
        ("transitions whose species is missing", "import-species",
         "SELECT COUNT(*) FROM transitions t WHERE NOT EXISTS "
         "(SELECT 1 FROM species sp WHERE sp.id = t.species_id)", ()),
        ("levels whose species is missing", "import-species",
         "SELECT COUNT(*) FROM states s WHERE NOT EXISTS "
         "(SELECT 1 FROM species sp WHERE sp.id = s.species_id)", ()),
        ("levels stored twice (species, energy, J)", "check-indexes --fix after removing the copies",
         None, ()),
        ("levels whose key disagrees with energy or J", "reimport these levels",
         f"SELECT COUNT(*) FROM states WHERE energy_scaled <> ROUND(energy * 10000) OR "
         f"{j_scaled} <> CASE WHEN {j} IS NULL THEN -1 ELSE ROUND({j} * 10) END", ()),
        ("levels used by no transition", "import-transitions, or rollback the run that stored them",
         f"SELECT COUNT(*) FROM states s WHERE {writer.unused_level('s')}", ()),
        ("Einstein A missing where computable", "housekeeping",
         "SELECT COUNT(*) FROM transitions t JOIN states u ON u.id = t.upstate WHERE "
         + missing_einstein_a(q), ()),
        ("species whose ground state is not their lowest level", "housekeeping",
         "SELECT COUNT(*) FROM species sp WHERE EXISTS "
         "(SELECT 1 FROM states s WHERE s.species_id = sp.id) AND NOT EXISTS "
         "(SELECT 1 FROM states g WHERE g.id = sp.ground_state_id AND g.species_id = sp.id "
         "AND g.energy_scaled = (SELECT MIN(m.energy_scaled) FROM states m WHERE m.species_id = sp.id))",
         ()),
        ("Ritz wavelengths that disagree with level energies", "",
         "SELECT COUNT(*) FROM transitions t JOIN states u ON u.id = t.upstate "
         "JOIN states l ON l.id = t.lostate WHERE t.autoionized = %s AND t.waveritz IS NOT NULL "
         f"AND u.energy_scaled <> l.energy_scaled AND {ritz_off}", (False,)),
    ]
    return [Check(name, duplicate_levels(using) if sql is None else _scalar(using, sql, params), fix)
            for name, fix, sql, params in queries]


# Indexes ---------------------------------------------------------------------

@dataclass
class DeclaredIndex:
    """An index or unique constraint the models declare, and how to create it."""

    model: type
    name: str
    columns: tuple
    unique: bool
    create: object  # editor -> None
    implicit: bool = False  # a field's own index: any index starting with its column serves

    def served_by(self, columns: tuple, unique: bool) -> bool:
        if self.unique and not unique:
            return False
        return columns[:len(self.columns)] == self.columns if self.implicit else columns == self.columns

    @property
    def table(self) -> str:
        return self.model._meta.db_table


def declared_indexes() -> list[DeclaredIndex]:
    """Every secondary index and unique constraint of the node_common and node_atom models."""
    from django.apps import apps
    from django.db.models import UniqueConstraint
    declared = []
    for label in ("node_common", "node_atom"):
        for model in apps.get_app_config(label).get_models():
            meta = model._meta

            def columns(names, meta=meta):
                return tuple(meta.get_field(n.lstrip("-")).column for n in names)
            for index in meta.indexes:
                declared.append(DeclaredIndex(model, index.name, columns(index.fields), False,
                                              lambda e, i=index, m=model: e.add_index(m, i)))
            for constraint in meta.constraints:
                if isinstance(constraint, UniqueConstraint) and constraint.fields:
                    declared.append(DeclaredIndex(model, constraint.name, columns(constraint.fields), True,
                                                  lambda e, c=constraint, m=model: e.add_constraint(m, c)))
            for f in meta.local_concrete_fields:
                if f.primary_key or not (f.db_index or f.unique):
                    continue
                declared.append(DeclaredIndex(
                    model, f"{meta.db_table}.{f.column}", (f.column,), f.unique,
                    lambda e, f=f, m=model: e.execute(
                        e._create_unique_sql(m, [f]) if f.unique else e._create_index_sql(m, fields=[f])),
                    implicit=not f.unique))
    return declared


def missing_indexes(using: str = DEFAULT_DB_ALIAS, declared=None) -> list[DeclaredIndex]:
    """Declared indexes with no live index (or unique constraint) on the same columns."""
    declared = declared_indexes() if declared is None else declared
    connection = connections[using]
    live = {}
    with connection.cursor() as cursor:
        for table in {d.table for d in declared}:
            live[table] = [(tuple(c["columns"]), c["unique"])
                           for c in connection.introspection.get_constraints(cursor, table).values()
                           if c["index"] or c["unique"]]
    return [d for d in declared
            if not any(d.served_by(columns, unique) for columns, unique in live[d.table])]


def index_check(using: str) -> Check:
    missing = missing_indexes(using)
    return Check("declared indexes and constraints missing", len(missing), "check-indexes --fix",
                 ", ".join(d.name for d in missing))


def check_indexes(using: str = DEFAULT_DB_ALIAS, *, fix: bool = False) -> Report:
    """The declared indexes and whether they exist; with ``fix``, create the missing ones."""
    declared = declared_indexes()
    missing = {d.name for d in missing_indexes(using, declared)}
    if fix and missing:
        with connections[using].schema_editor() as editor:
            for d in declared:
                if d.name in missing:
                    d.create(editor)
    status = "created" if fix else "MISSING"
    rows = [(d.table, d.name, ", ".join(d.columns), "unique" if d.unique else "",
             status if d.name in missing else "present") for d in declared]
    if not missing:
        verdict = f"all {len(declared)} declared indexes and constraints are present"
    elif fix:
        verdict = f"created {len(missing)} missing: " + ", ".join(sorted(missing))
    else:
        verdict = (f"{len(missing)} of {len(declared)} missing: " + ", ".join(sorted(missing))
                   + "; run check-indexes --fix to create them")
    return Report(f"check-indexes: {describe_database(using)}",
                  ("table", "index", "columns", "kind", "status"), rows, verdict, fix or not missing)


# Verify against the dump -----------------------------------------------------

def dump_check(using: str, dump: str, skip_header: int = 2, workers: int | None = None,
               progress: bool | None = None) -> Check:
    """Per species: the dump's data lines (less those the database refused) = transitions stored."""
    inp = Input(dump)
    runs = _runs_of_input(using, inp)
    skip_calc = bool(runs and runs[-1].options.get("skip_calc"))
    expected = dump_species_counts(inp, skip_header, skip_calc, ImportOptions(workers=workers,
                                                                                 progress=progress))
    expected.subtract(refused_species_counts(runs))
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT species_id, COUNT(*) FROM transitions GROUP BY species_id")
        stored = dict(cursor.fetchall())
    differ = [(sp, n, stored.get(sp, 0)) for sp, n in sorted(expected.items()) if stored.get(sp, 0) != n]
    shown = "; ".join(f"species {sp}: dump {n:,}, stored {m:,}" for sp, n, m in differ[:5])
    more = f" and {len(differ) - 5} more" if len(differ) > 5 else ""
    return Check(f"species whose transitions differ from {os.path.basename(inp.name)}", len(differ),
                 "import it (again), or rollback the runs that doubled it", shown + more)


def _runs_of_input(using, inp) -> list:
    """The transition runs (not rolled back) whose input starts like ``inp``, oldest first."""
    from node_common.models import ImportRun
    runs = (ImportRun.objects.using(using).filter(command__in=WRITES_TRANSITIONS)
            .exclude(status=ImportRun.ROLLED_BACK).order_by("id"))
    return [r for r in runs if inp.head_matches(r.head_bytes, r.input_head)]


def dump_species_counts(inp: Input, skip_header: int, skip_calc: bool, options: ImportOptions) -> Counter:
    """Records the importer would store, per species."""
    counts = Counter()
    config = ParseConfig(skip_header, skip_calc, rows=None)
    progress = _progress_bar(inp, options)
    try:
        for _, parsed in parsed_batches(read_batches(inp.lines(), options.batch_size), config, options):
            counts.update(key_parts(lower)[0] for _, lower, _, _ in parsed.transitions)
            _advance(progress, inp, parsed.records)
    finally:
        progress.close()
    return counts


def refused_species_counts(runs) -> Counter:
    """Per species, the lines these runs' reject files say the database refused."""
    counts, seen = Counter(), set()
    field_def = DATA_FIELDS[F["species_id"]]
    for run in runs:
        path = run.options.get("reject_file")
        if not path or not os.path.exists(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                number, reason, raw = (line.rstrip("\n").split("\t", 2) + ["", ""])[:3]
                if reason.startswith("refused by the database") and number not in seen:
                    seen.add(number)
                    counts[int(raw[field_def.start:field_def.end])] += 1
    return counts


# Runs and rollback -----------------------------------------------------------

def list_runs(using: str = DEFAULT_DB_ALIAS, *, limit: int | None = None) -> Report:
    """The import runs, newest last."""
    from node_common.models import ImportRun
    runs = list(ImportRun.objects.using(using).order_by("-id")[:limit] if limit
                else ImportRun.objects.using(using).order_by("-id"))[::-1]
    rows = [(r.id, r.command, r.input_name, r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
             _duration(r), run_status(r), f"{r.lines_read:,}", f"{r.imported:,}", f"{r.rejected:,}",
             f"{r.skipped:,}", f"{r.resumed_from_line:,}" if r.resumed_from_line else "")
            for r in runs]
    data = [dict(id=r.id, command=r.command, input=r.input_name, started=r.started_at.isoformat(),
                 seconds=_seconds(r), status=run_status(r), lines_read=r.lines_read,
                 imported=r.imported, rejected=r.rejected, skipped=r.skipped,
                 resumed_from_line=r.resumed_from_line, continues_run=r.continues_run_id,
                 message=r.message) for r in runs]
    return Report(f"runs: {describe_database(using)}",
                  ("id", "command", "input", "started (UTC)", "duration", "status", "read",
                   "imported", "rejected", "skipped", "resumed from"), rows, data=data)


def run_status(run) -> str:
    """The run's status, "interrupted" for a running run whose process is gone."""
    if (run.status == run.RUNNING and run.host == _host() and run.pid != os.getpid()
            and not _process_alive(run)):
        return "interrupted"
    return run.status


def _seconds(run) -> float:
    return round(((run.finished_at or run.updated_at) - run.started_at).total_seconds(), 3)


def _duration(run) -> str:
    seconds = _seconds(run)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min {seconds:02d} s"


def rollback_run(using: str = DEFAULT_DB_ALIAS, run_id: int = 0, *, yes: bool = False) -> Report:
    """Remove the transitions of a run and the levels it stored that no transition uses."""
    from node_common.models import ImportRun
    run = _run_to_roll_back(using, run_id)
    confirm(f"Delete the transitions and unused levels of run {run.id} ({run.command} "
            f"{run.input_name}, {run.imported:,} records)? [y/N] ", yes,
            "rollback asks for confirmation on a terminal, and there is none: add --yes")
    writer = Writer.for_alias(using)
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute("DELETE FROM transitions WHERE run_id = %s", [run.id])
        transitions = cursor.rowcount
        ImportRun.objects.using(using).filter(pk=run.id).update(
            status=ImportRun.ROLLED_BACK, updated_at=_now(), message=f"rolled back at {_now():%Y-%m-%d %H:%M:%S}")
        # levels of this run, and those left behind by earlier rollbacks, that nothing uses now
        gone = list(ImportRun.objects.using(using).filter(status=ImportRun.ROLLED_BACK)
                    .values_list("id", flat=True))
        marks = ", ".join(["%s"] * len(gone))
        cursor.execute(f"DELETE FROM states WHERE run_id IN ({marks}) AND "
                       f"{writer.unused_level('states')}", gone)
        levels = cursor.rowcount
        species = _delete_placeholder_species(using, cursor, (run.counts or {}).get("species_created", []))
        update_ground_states(using)
    rows = [("transitions deleted", f"{transitions:,}"), ("levels deleted", f"{levels:,}"),
            ("placeholder species deleted", f"{species:,}")]
    return Report(f"rollback: run {run.id} rolled back ({run.command} {run.input_name})",
                  ("removed", "rows"), rows)


def _run_to_roll_back(using, run_id):
    from node_common.models import ImportRun
    run = ImportRun.objects.using(using).filter(pk=run_id).first()
    if run is None:
        raise UsageError(f"there is no run {run_id}: see the list of runs (runs)")
    if run.command not in COMMANDS:
        raise UsageError(f"run {run.id} is {run.command}: only import runs can be rolled back "
                         "(species, line lists and references are upserted; import them again)")
    if run.status == ImportRun.ROLLED_BACK:
        raise UsageError(f"run {run.id} is already rolled back")
    if run.status == ImportRun.RUNNING:
        _refuse_if_alive(run)
        if run.host != _host():
            raise UsageError(f"run {run.id} is running on {run.host} (pid {run.pid}); "
                             "stop it there first, or let it finish")
    later = (ImportRun.objects.using(using).filter(continues_run=run.id)
             .exclude(status=ImportRun.ROLLED_BACK).values_list("id", flat=True))
    if later:
        raise UsageError(f"run {later[0]} continues run {run.id} (it imported the rest of the same "
                         f"input): roll back run {later[0]} first")
    return run


def _delete_placeholder_species(using, cursor, ids) -> int:
    """Placeholder species (no name) among ``ids`` that no level or transition refers to."""
    if not ids:
        return 0
    marks = ", ".join(["%s"] * len(ids))
    cursor.execute(f"DELETE FROM species WHERE id IN ({marks}) AND name IS NULL "
                   "AND NOT EXISTS (SELECT 1 FROM states s WHERE s.species_id = species.id) "
                   "AND NOT EXISTS (SELECT 1 FROM transitions t WHERE t.species_id = species.id) "
                   "AND NOT EXISTS (SELECT 1 FROM species_components c "
                   "WHERE c.atom_id = species.id OR c.molecule_id = species.id)", list(ids))
    return cursor.rowcount


def confirm(question: str, yes: bool, refusal: str):
    """Ask on the terminal (stdin may be the dump), unless ``yes``; refuse without one."""
    if yes:
        return
    try:
        with open("/dev/tty", "r+") as tty:
            tty.write(question)
            tty.flush()
            answer = tty.readline().strip().lower()
    except OSError:
        raise UsageError(refusal) from None
    if answer not in ("y", "yes"):
        raise UsageError("not confirmed: nothing was changed")


# ------------------------------------------------------------------- CLI ----

SUPPORTED_ENGINES = {"django.db.backends.sqlite3", "django.db.backends.postgresql",
                     "django.db.backends.mysql"}


def database_settings(url: str) -> dict:
    """Django DATABASES entry for a sqlite://, postgres:// or mysql:// URL."""
    import dj_database_url
    try:
        config = dj_database_url.parse(url)
    except Exception:
        config = {}
    if config.get("ENGINE") not in SUPPORTED_ENGINES:
        scheme = url.partition(":")[0] or url
        raise UsageError(f"unsupported database URL scheme {scheme!r}: use sqlite:///PATH, "
                         "postgres://USER@HOST:PORT/NAME or mysql://USER@HOST:PORT/NAME")
    if config["ENGINE"].endswith("mysql"):
        options = config.setdefault("OPTIONS", {})
        options.setdefault("charset", "utf8mb4")
        options.setdefault("local_infile", True)  # LOAD DATA LOCAL INFILE, the fast path
        # Strict mode: MySQL refuses bad values instead of silently truncating them.
        options.setdefault("init_command", "SET sql_mode='STRICT_TRANS_TABLES'")
    return config


def configure_django(database_url: str | None = None):
    """Set up Django for the standalone CLI (settings_dev unless DJANGO_SETTINGS_MODULE is set)."""
    import django
    from django.conf import settings
    if database_url:
        config = database_settings(database_url)
        os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings_dev")
    try:
        settings.DATABASES
    except ValdImportError:
        raise
    except Exception as error:
        raise UsageError(f"cannot load the settings {os.environ['DJANGO_SETTINGS_MODULE']}: "
                         f"{_first_line(error)}") from None
    if database_url:
        settings.DATABASES[DEFAULT_DB_ALIAS] = config
    django.setup()


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def run_command(command: str, source: str = "-", *, using: str = DEFAULT_DB_ALIAS,
                options: ImportOptions | None = None) -> Summary:
    """Run any import command by its CLI name."""
    run = run_companion if command in COMPANIONS else run_import
    if options is not None and options.summary_json:
        folder = os.path.dirname(os.path.abspath(options.summary_json))
        if not os.access(folder, os.W_OK):
            raise UsageError(f"cannot write the summary to {options.summary_json}: no writable "
                             f"folder {folder}; give a writable --summary-json path")
    summary = run(command, source, using=using, options=options)
    if options is not None and options.summary_json:
        summary.write_json(options.summary_json)
    return summary


def add_import_arguments(parser, companion: bool = False):
    """The options of the import commands, in the CLI and in Django."""
    parser.add_argument("--file", "-f", default="-", metavar="PATH",
                        help="the input: plain, gzip, bzip2 or xz (default: standard input)")
    parser.add_argument("--reject-file", metavar="PATH",
                        help="where rejected lines go (default: INPUT.rejects, or "
                             "stdin.rejects in the working directory)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--summary-json", metavar="PATH",
                        help="also write the summary, with its phases, as JSON to PATH")
    if companion:
        return
    parser.add_argument("--batch-size", type=positive_int, default=10_000, metavar="N",
                        help="records per transaction (default: 10000)")
    parser.add_argument("--skip-header", type=non_negative_int, default=2, metavar="N",
                        help="header lines at the top of the dump (default: 2)")
    parser.add_argument("--skip-calc", action="store_true",
                        help="do not compute Einstein A (leave it empty)")
    parser.add_argument("--cache-size", type=positive_int, default=500_000, metavar="N",
                        help="levels kept in memory (default: 500000)")
    parser.add_argument("--restart", action="store_true",
                        help="import the whole input as a new run, ignoring earlier runs on it")
    parser.add_argument("--max-errors", type=positive_int, metavar="N",
                        help="stop (after committing what is good) once N lines were rejected")
    parser.add_argument("--retries", type=non_negative_int, default=5, metavar="N",
                        help="retries of a batch after a lost connection, deadlock or lock "
                             "(default: 5, with exponential backoff)")
    parser.add_argument("--workers", type=non_negative_int, metavar="N",
                        help="processes that parse while the main one writes (default: one "
                             "less than the cores, at least 1; 0: parse in the main process)")
    parser.add_argument("--dry-run", action="store_true",
                        help="parse and check everything, write the reject file; touch no table")
    parser.add_argument("--fast", action="store_true",
                        help="first load into emptied tables: indexes built after, no crash "
                             "safety until the end (needs --clear)")
    parser.add_argument("--clear", action="store_true",
                        help="empty the tables this command fills (and their runs) first")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--verify", action="store_true",
                        help="run verify at the end (with the dump's counts when it is a file); "
                             "exit 1 when a check fails")
    parser.add_argument("--skip-housekeeping", action="store_true",
                        help="leave out the housekeeping after the import (ground states, missing "
                             "Einstein A, statistics); run the housekeeping command later")


OPERATIONS = {
    "verify": "check the database: links, duplicates, derived values, indexes; --file: the dump's counts",
    "check-indexes": "list the declared indexes and constraints missing from the database; --fix creates them",
    "runs": "list the import runs",
    "rollback": "remove the transitions of a run and the levels no other transition uses",
    "housekeeping": "ground states, missing Einstein A and planner statistics, after imports",
}


def add_operation_arguments(parser, command: str):
    """The options of the operations, in the CLI and in Django."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    if command == "verify":
        parser.add_argument("--file", "-f", metavar="DUMP",
                            help="also compare the transitions per species with this dump")
        parser.add_argument("--skip-header", type=non_negative_int, default=2, metavar="N",
                            help="header lines at the top of the dump (default: 2)")
        parser.add_argument("--workers", type=non_negative_int, metavar="N",
                            help="processes that parse the dump (default: cores - 1)")
        parser.add_argument("--quiet", "-q", action="store_true",
                            help="no progress bar while reading the dump")
    elif command == "check-indexes":
        parser.add_argument("--fix", action="store_true", help="create the missing ones")
    elif command == "runs":
        parser.add_argument("--limit", type=positive_int, metavar="N", help="only the last N runs")
    elif command == "rollback":
        parser.add_argument("--run", type=positive_int, required=True, metavar="ID",
                            help="the run to roll back (see the runs command)")
        parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    elif command == "housekeeping":
        parser.add_argument("--skip-calc", action="store_true", help="do not compute missing Einstein A")
        parser.add_argument("--batch-size", type=positive_int, default=10_000, metavar="N",
                            help="rows per transaction when computing Einstein A (default: 10000)")


def run_operation(command: str, using: str = DEFAULT_DB_ALIAS, options: dict | None = None) -> Report:
    """Run an operation by its CLI name with its options (as parsed); returns its report."""
    options = options or {}
    prepare_database(using)
    if command == "verify":
        return verify(using, dump=options.get("file"), skip_header=options.get("skip_header", 2),
                      workers=options.get("workers"), progress=False if options.get("quiet") else None)
    if command == "check-indexes":
        return check_indexes(using, fix=options.get("fix", False))
    if command == "runs":
        return list_runs(using, limit=options.get("limit"))
    if command == "rollback":
        return rollback_run(using, options["run"], yes=options.get("yes", False))
    if command == "housekeeping":
        started = time.monotonic()
        phases = housekeeping(using, skip_calc=options.get("skip_calc", False),
                              batch_size=options.get("batch_size", 10_000))
        return Report(f"housekeeping: {describe_database(using)}", PHASE_COLUMNS,
                      phase_rows(phases), f"done in {time.monotonic() - started:.2f} s",
                      data=[dict(phase=n, rows=r, seconds=round(t, 3)) for n, r, t in phases])
    raise UsageError(f"unknown command {command!r}")


def report_text(report: Report, as_json: bool) -> str:
    return json.dumps(report.as_dict(), indent=2, default=str) if as_json else report.table()


class ImportCommand(BaseCommand):
    """Base of the Django management commands: parse options, delegate, report."""

    command = None

    @property
    def help(self):
        return {**COMMANDS, **COMPANIONS}[self.command]

    def add_arguments(self, parser):
        add_import_arguments(parser, companion=self.command in COMPANIONS)
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS,
                            help="the database alias to import into (default: default)")

    def handle(self, *args, **options):
        options["quiet"] = options["quiet"] or options["verbosity"] == 0
        try:
            summary = run_command(self.command, options["file"], using=options["database"],
                                  options=ImportOptions.from_mapping(options))
        except ValdImportError as error:
            raise CommandError(str(error), returncode=error.exit_code) from error
        self.stdout.write(summary.table())
        if summary.exit_code == EXIT_FAILED:
            raise CommandError(summary.verified.verdict, returncode=EXIT_FAILED)
        if summary.tally.rejected:
            raise CommandError(f"{summary.tally.rejected:,} lines rejected: see {summary.reject_file}",
                               returncode=EXIT_REJECTED)


class OperationCommand(BaseCommand):
    """Base of the Django commands verify, check_indexes, runs, rollback, housekeeping."""

    command = None

    @property
    def help(self):
        return OPERATIONS[self.command]

    def add_arguments(self, parser):
        add_operation_arguments(parser, self.command)
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS,
                            help="the database alias (default: default)")

    def handle(self, *args, **options):
        try:
            report = run_operation(self.command, options["database"], options)
        except ValdImportError as error:
            raise CommandError(str(error), returncode=error.exit_code) from error
        self.stdout.write(report_text(report, options["json"]))
        if not report.ok:
            raise CommandError(report.verdict, returncode=EXIT_FAILED)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="valdimport.py", description="Load a VALD line dump into a VAMDC node database.",
        epilog="Example: gunzip -c vald3.dat.gz | python valdimport.py import-states")
    parser.add_argument("--database-url", metavar="URL",
                        help="sqlite:///PATH, postgres://USER@HOST:PORT/NAME or "
                             "mysql://USER@HOST:PORT/NAME (default: $DATABASE_URL, "
                             "else sqlite:///vald.sqlite3)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in {**COMMANDS, **COMPANIONS}.items():
        add_import_arguments(commands.add_parser(name, help=help_text, description=help_text),
                             companion=name in COMPANIONS)
    for name, help_text in OPERATIONS.items():
        add_operation_arguments(commands.add_parser(name, help=help_text, description=help_text), name)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if DJANGO_MISSING is not None:
        print(f"valdimport: error: {DJANGO_MISSING}: install valdimport and its dependencies first "
              "(python3 -m venv .venv && .venv/bin/pip install -e .) and run it with .venv/bin/python",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        configure_django(args.database_url)
        if args.command in OPERATIONS:
            report = run_operation(args.command, DEFAULT_DB_ALIAS, vars(args))
            print(report_text(report, args.json))
            return EXIT_OK if report.ok else EXIT_FAILED
        summary = run_command(args.command, args.file, options=ImportOptions.from_mapping(vars(args)))
    except ValdImportError as error:
        return _fail(args, error, error.exit_code)
    except KeyboardInterrupt:
        print("valdimport: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as error:
        return _fail(args, error, EXIT_FAILED, hint=" (run with -v for the traceback)")
    print(summary.table())
    return summary.exit_code


def _fail(args, error, code, hint=""):
    if args.verbose:
        import traceback
        traceback.print_exc()
    print(f"valdimport: error: {_first_line(error) if hint else error}{'' if args.verbose else hint}",
          file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
