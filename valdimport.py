#!/usr/bin/env python3
"""valdimport: load a VALD line dump into a VAMDC node database.

The dump is one fixed-width text file: a data line per transition, each
usually followed by a reference line, both levels of the transition inline.
``import`` stores the levels and transitions of a dump in one read (or
``import-states`` then ``import-transitions`` in two); the same code writes
SQLite, PostgreSQL and MySQL through Django's connections.

    valdimport import --file vald3_atoms_all.dat.gz
    gunzip -c vald3_atoms_all.dat.gz | valdimport import

Then ``verify``, ``check-indexes``, ``runs``, ``rollback`` and ``housekeeping``
look after what was imported. The byte layout is described in docs/format.md,
the Python API in docs/api.md; run ``valdimport --help``.
"""
from __future__ import annotations

import argparse
import bz2
import contextlib
import functools
import gzip
import hashlib
import io
import itertools
import json
import logging
import lzma
import math
import os
import re
import socket
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

try:
    from django.core.management.base import BaseCommand, CommandError
    from django.db import DEFAULT_DB_ALIAS, connections, transaction
    from django.db.backends.signals import connection_created
    import numpy as np
    DJANGO_MISSING = None
except ImportError as error:  # --help still answers; any command then says what to install
    DJANGO_MISSING = error
    BaseCommand, CommandError, DEFAULT_DB_ALIAS = object, Exception, "default"
    connections = transaction = np = None

log = logging.getLogger("valdimport")  # notices (waiting for a lock, risks); the front ends show them
log.addHandler(logging.NullHandler())  # a Python caller sees them only when it configures logging

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
INTERRUPTED = "interrupted; rerun the same command to resume"


def option(name: str) -> str:
    """A placeholder for option ``name`` (an ImportOptions field, or ``file``, ``yes``,
    ``database_url``) in a message: each front end renders it its own way, ``--skip-header``
    on the command line, ``skip_header=N`` in Python (see ValdImportError.render)."""
    return f"\x00{name}\x00"


_OPTION = re.compile("\x00([a-z_]+)\x00")


def render_options(text: str, form) -> str:
    """``text`` with each option placeholder replaced by ``form(name)``."""
    return _OPTION.sub(lambda match: form(match[1]), text)


class ValdImportError(Exception):
    """An error the user can fix; printed as one line, with ``exit_code``.

    Its message names options through placeholders (see option()): ``str(error)`` gives
    them as Python keyword arguments, ``render(form)`` as a front end spells them."""

    exit_code = EXIT_FAILED

    def render(self, form) -> str:
        return render_options(super().__str__(), form)

    def __str__(self):
        return self.render(python_option)


class UsageError(ValdImportError):
    """Bad usage or configuration: missing file, bad URL, unreachable database."""

    exit_code = EXIT_USAGE


class MissingDriver(UsageError):
    """The database engine chosen needs a driver that is not installed."""


class NoInput(UsageError):
    """Standard input is a terminal: nothing is piped in, and no file was given."""


class ConfirmationRequired(UsageError):
    """A step that deletes data needs a confirmation, and none was given (see confirmed())."""


class NotConfirmed(UsageError):
    """The confirmation was asked for and refused: nothing was changed."""


class Locked(UsageError):
    """Another valdimport command is writing to the database."""


class AnotherInput(UsageError):
    """The transitions hold another input's: adding this one could store lines twice."""


class NotADump(ValdImportError):
    """The input is empty, or does not look like a VALD dump."""


class RunStopped(ValdImportError):
    """The most rejected lines allowed were reached; what was good is committed."""


class DatabaseUnavailable(ValdImportError):
    """Transient faults outlasted the retries."""


class RejectedLine(ValueError):
    """A data line that cannot be imported; the message is the reason."""


# ---------------------------------------------------------------- format ----

@dataclass(frozen=True)
class FieldDef:
    """One fixed-width field of the data line, columns [start, end) 0-based, and what it feeds.

    ``fmt`` is its Fortran edit descriptor (``F15.5``, ``I6``, ``A86``, ``A1``, ``1X``);
    ``null`` the value that means "unknown"; ``level`` "lower"/"upper" for a level's field
    (None: the transition's); ``column`` the database column it fills; ``refs`` the fields of
    the reference line (0-based: field i names the source, line list ll(i+1)) whose keys are
    stored in ``ref_column``; ``allowed`` the characters a one-character field may hold.
    """

    name: str
    start: int
    end: int
    fmt: str
    label: str = ""
    null: float | str | None = None
    required: bool = False
    level: str | None = None
    column: str | None = None
    refs: tuple = ()
    ref_column: str | None = None
    allowed: str | None = None

    @property
    def width(self) -> int:
        return self.end - self.start

    @property
    def kind(self) -> str:
        """"decimal" (F), "int" (I), "text" (A) or "blank" (X)."""
        return {"F": "decimal", "I": "int", "A": "text"}.get(self.fmt[0], "blank")

    @property
    def places(self) -> int:
        """Decimals of an F field: its column keeps exactly these."""
        return int(self.fmt.partition(".")[2] or 0)

    @property
    def text(self) -> str:
        """How messages name the field."""
        return self.label or self.name

    @property
    def null_scaled(self) -> int | None:
        """The numeric null sentinel x 10**places (None: no numeric sentinel)."""
        return None if not isinstance(self.null, (int, float)) else round(self.null * 10 ** self.places)


# Fortran: 2F15.5,I6,F8.3,2(F14.4,F6.1),3F7.2,2F7.3,F8.3,A2,A86,A2,A86,1X,A1,A7,1X,A16,9I4
DATA_FIELDS = (
    FieldDef("wave_ritz", 0, 15, "F15.5", "Ritz wavelength", column="waveritz",
             refs=(2, 3), ref_column="waveritz_ref_id"),  # computed from the two energies
    FieldDef("wave_measured", 15, 30, "F15.5", "measured wavelength", null=0.0,
             refs=(0,), ref_column="wave_ref_id"),
    FieldDef("species_id", 30, 36, "I6", "species index", required=True, column="species_id"),
    FieldDef("loggf", 36, 44, "F8.3", "log gf", column="loggf", refs=(1,), ref_column="loggf_ref_id"),
    FieldDef("lower_energy", 44, 58, "F14.4", "lower energy", required=True, level="lower",
             column="energy", refs=(2,), ref_column="energy_ref_id"),
    FieldDef("lower_j", 58, 64, "F6.1", "lower J", null="X", level="lower", column="J"),
    FieldDef("upper_energy", 64, 78, "F14.4", "upper energy", required=True, level="upper",
             column="energy", refs=(3,), ref_column="energy_ref_id"),
    FieldDef("upper_j", 78, 84, "F6.1", "upper J", null="X", level="upper", column="J"),
    FieldDef("lower_lande", 84, 91, "F7.2", null=99.0, level="lower", column="lande",
             refs=(4,), ref_column="lande_ref_id"),
    FieldDef("upper_lande", 91, 98, "F7.2", null=99.0, level="upper", column="lande",
             refs=(4,), ref_column="lande_ref_id"),
    FieldDef("mean_lande", 98, 105, "F7.2", null=99.0),  # checked; the node has no column for it
    FieldDef("gammarad", 105, 112, "F7.3", null=0.0, column="gammarad",
             refs=(5,), ref_column="gammarad_ref_id"),
    FieldDef("gammastark", 112, 119, "F7.3", null=0.0, column="gammastark",
             refs=(6,), ref_column="gammastark_ref_id"),
    FieldDef("gammawaals", 119, 127, "F8.3", null=0.0, column="gammawaals",  # > 0: sigma.alpha
             refs=(7,), ref_column="waals_ref_id"),
    FieldDef("lower_coupling", 127, 129, "A2", level="lower", column="coupling_case"),
    FieldDef("lower_term", 129, 215, "A86", level="lower", column="term_desc",
             refs=(8,), ref_column="level_ref_id"),
    FieldDef("upper_coupling", 215, 217, "A2", level="upper", column="coupling_case"),
    FieldDef("upper_term", 217, 303, "A86", level="upper", column="term_desc",
             refs=(8,), ref_column="level_ref_id"),
    FieldDef("blank", 303, 304, "1X", allowed=" "),
    FieldDef("accurflag", 304, 305, "A1", allowed="NECP_ ", column="accurflag"),
    FieldDef("accur", 305, 311, "A6", column="accur"),
    FieldDef("transition_flag", 311, 312, "A1", "transition flag", allowed=" ABCDEF"),
    FieldDef("broadening_flag", 312, 313, "A1", "broadening flag", allowed=" 01234567"),  # checked
    FieldDef("comment", 313, 329, "A16", column="comment"),
    *(FieldDef(f"ll{i}", 325 + 4 * i, 329 + 4 * i, "I4", f"line list {i}", null=0, column=f"ll{i}")
      for i in range(1, 10)),
)
LINE_WIDTH = DATA_FIELDS[-1].end  # 365
HEADER_LINES = 2  # at the top of a VALD dump, before its first data line
FIELD = {f.name: f for f in DATA_FIELDS}
TERM_WIDTH = FIELD["lower_term"].end - FIELD["lower_term"].start  # a level description's bytes
LINE_LISTS = tuple(f for f in DATA_FIELDS if f.name.startswith("ll"))  # LINE_LISTS[i]: reference field i


def _reference_quantity(slot: int) -> str:
    """What reference field ``slot`` is the source of, for messages ("loggf", "lower energy")."""
    fields = [f for f in DATA_FIELDS if f.refs == (slot,)]
    prefix = f"{fields[0].level} " if len(fields) == 1 and fields[0].level else ""
    return prefix + fields[0].ref_column.removesuffix("_ref_id")


REFERENCE_QUANTITIES = tuple(_reference_quantity(slot) for slot in range(len(LINE_LISTS)))
"""What each whitespace-separated field of a reference line is the source of (ll1..ll9)."""

TRANSITION_TYPES = {" ": "E1", "A": "E1", "B": "E2", "C": "M1", "D": "M2", "E": "E3", "F": "M3"}
NIST_CLASS_ERRORS = (  # longest prefixes first, so "AA" is not read as "A"
    ("AAA", 0.0013), ("AA", 0.0043), ("A+", 0.0087), ("A", 0.013), ("B+", 0.030),
    ("B", 0.043), ("C+", 0.079), ("C", 0.11), ("D+", 0.18), ("D", 0.22), ("E", 0.5),
)
EINSTEIN_A_CONSTANT = 0.667025e16
REF_KEY_LENGTH = 64  # node_common.models.REF_KEY_LENGTH: the *_ref_id columns
UNKNOWN_J = -1  # J_scaled of a level with unknown J (J is NULL)
L_LETTERS = "SPDFGHIKLMNOQRTUV"  # orbital angular momentum L = 0, 1, 2, ...
LEVEL_QN_COLUMNS = ("config", "term", "S", "L", "P", "J1", "J2", "K", "S2", "Jc", "Sn", "n",
                    "v", "Lambda", "Omega", "rotN", "elecstate", "kronig_parity",
                    "elec_inversion", "asSym")
DECODED_QN_COLUMNS = LEVEL_QN_COLUMNS[2:]


def _field_columns(level):
    return tuple(dict.fromkeys(f.column for f in DATA_FIELDS if f.level == level and f.column))


def _ref_columns(level):
    return tuple(dict.fromkeys(f.ref_column for f in DATA_FIELDS if f.level == level and f.ref_column))


# Column orders of the rows the parser produces and the writers store, derived from the
# layout; the writer fills the first ones (the slots: ids and run).
STATE_SLOTS = ("id", "run_id")
STATE_COLUMNS = (*STATE_SLOTS, "species_id", *_field_columns("lower"), "energy_scaled", "J_scaled",
                 "energy_linelist_id", "energy_method", *_ref_columns("lower"), *LEVEL_QN_COLUMNS)
TRANSITION_SLOTS = ("lostate", "upstate", "run_id")
TRANSITION_DERIVED = ("wave", "einsteina", "sigmawaals", "alphawaals", "loggf_err",
                      "transition_type", "autoionized", "wave_method")
TRANSITION_COLUMNS = (*TRANSITION_SLOTS, *_field_columns(None), *TRANSITION_DERIVED,
                      *_ref_columns(None))
SLOT_WIDTH = 10  # digits of an id slot in COPY text: zero-padded, so rows are built before ids exist


def level_key(species_id: int, energy_scaled: int, j_scaled: int) -> complex:
    """A level's identity (species, energy x 10^4, J x 10) as one exact, sortable number.

    Real part species x 2^17 + J x 10 + 1, imaginary part energy x 10^4: both below 2^53
    for anything the I6, F6.1 and F14.4 fields can print, so float64 holds them exactly;
    NumPy sorts and searches complex128 arrays by real, then imaginary part.
    """
    return complex(species_id * 131072 + j_scaled + 1, energy_scaled)


# ----------------------------------------------------------------- parse ----
# parse_record is the reference parser: one line at a time, in plain Python, with a
# reason for every rejection. The columnar parser (parse_batch, below) does the same
# for whole batches with NumPy and hands every line it does not accept to parse_record,
# so that both always agree (tests/test_columnar.py).

_NUMERIC_CHARS = frozenset(" 0123456789.+-")


def decimal_text(text: str, name: str, field: FieldDef | None = None) -> str | None:
    """The stripped digits of a decimal field, or None when blank.

    Rejects what is not a number and, given its ``field``, what is not a complete
    Fortran F field: the format always prints the point and exactly ``places``
    decimals, so a value without them was cut off (an interrupted download stores
    ``53`` for ``53991.8552``) or does not come from the format (more decimals
    would be rounded away by the column).
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
        raise RejectedLine(_incomplete_field(text, name, field))
    return text


def _incomplete_field(text, name, field) -> str:
    fortran = f"F{field.width}.{field.places}"
    if "." not in text:
        return f"{name} has no decimal point ({fortran}; cut off?): {text!r}"
    if len(text.partition(".")[2]) > field.places:
        return f"{name} has more than {field.places} decimals ({fortran}): {text!r}"
    return f"{name} has fewer than {field.places} decimals ({fortran}; cut off?): {text!r}"


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
    """The log gf uncertainty in dex from the accuracy flag and text (docs/format.md)."""
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


_KEY_SEPARATORS = re.compile(r"[,+]")


def field_keys(text: str) -> str | None:
    """The keys of one reference field, comma-joined: ``wl:K14,iso:BWL`` -> ``K14,BWL``,
    ``SR+Sm`` -> ``SR,Sm`` (``+`` joins two keys as ``,`` does); type prefixes dropped."""
    return ",".join(part.rpartition(":")[2] for part in _KEY_SEPARATORS.split(text) if part) or None


def reference_keys(line: str) -> tuple[str | None, ...]:
    """The reference keys per quantity (REFERENCE_QUANTITIES) of a reference line (field_keys)."""
    fields = line.split()
    if len(fields) > len(REFERENCE_QUANTITIES):
        raise RejectedLine(f"reference line has {len(fields)} fields, at most "
                           f"{len(REFERENCE_QUANTITIES)} expected")
    keys = [field_keys(f) for f in fields]
    for quantity, key in zip(REFERENCE_QUANTITIES, keys):
        if key is not None and len(key) > REF_KEY_LENGTH:
            raise RejectedLine(f"{quantity} reference {key[:20]!r}... is longer than its column "
                               f"({REF_KEY_LENGTH} characters)")
    return tuple(keys) + (None,) * (len(REFERENCE_QUANTITIES) - len(keys))


NO_REFERENCES = (None,) * len(REFERENCE_QUANTITIES)


def joined_keys(keys) -> str | None:
    """Reference keys of several fields as one comma-joined value, each key once."""
    joined = []
    for key in keys:
        for part in (key or "").split(","):
            if part and part not in joined:
                joined.append(part)
    return ",".join(joined) or None


def reference_columns(keys: tuple, level: str | None) -> dict:
    """The *_ref_id values of the transition (``level`` None) or of a level, from the keys."""
    values = {}
    for f in DATA_FIELDS:
        if f.ref_column and f.level == level and f.ref_column not in values:
            values[f.ref_column] = keys[f.refs[0]] if len(f.refs) == 1 else joined_keys(
                keys[slot] for slot in f.refs)
    return values


def slice_data_line(line: str) -> dict:
    """The raw text of every field, by name; a short line is padded with blanks."""
    if len(line) > LINE_WIDTH and line[LINE_WIDTH:].strip():
        raise RejectedLine(f"text after column {LINE_WIDTH}: {line[LINE_WIDTH:].strip()[:20]!r}")
    line = line.ljust(LINE_WIDTH)
    return {f.name: line[f.start:f.end] for f in DATA_FIELDS}


def field_value(f: FieldDef, text: str):
    """A field's value as the importer keeps it: decimal digits (str), int, or the raw text.

    None for blank and for the field's null sentinel; raises RejectedLine for what
    cannot be read or kept.
    """
    if f.kind == "decimal":
        if f.null == "X":
            return j_value(text, f.text, f)[0]
        value = decimal_text(text, f.text, f)
        if value is not None and f.null_scaled is not None and \
                scaled_int(value, f.places, f.text) == f.null_scaled:
            return None
        return value
    if f.kind == "int":
        value = int_field(text, f.text)
        return None if value == f.null else value
    if f.allowed is not None and text not in f.allowed:
        raise RejectedLine(f"unknown {f.text.replace('_', ' ')} {text!r}")
    return text


# Level descriptions ---------------------------------------------------------

ODD, EVEN = "1", "2"  # atomic parity as the VAMDC node stores it

_UNESCAPED_BLANK = re.compile(r"(?<!\\) ")
_LS_TERM = re.compile(rf"(?P<label>.*?)(?P<mult>\d+)(?P<L>[{L_LETTERS}])(?P<sn>\d*)\Z")
_JJ_TERM = re.compile(r"\((?P<j1>[\d/.]+),(?P<j2>[\d/.]+)\)\Z")
_JK_TERM = re.compile(r"(?:(?P<mult>\d+)|\((?P<s2>[\d/.]+)\))\[(?P<k>[\d/.]+)\]\Z")
_KURUCZ_JK_TERM = re.compile(r"(?P<jc>\d+)\+\[(?P<k>\d+)\+\]\Z")  # Jc[K], "n+" is n + 1/2
_HYPERFINE_LABEL = re.compile(r"\s+F=[\d/.]+\Z")  # "a2D F=3/2": F of a hyperfine level
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
        config, term = split_description(description)
        if not molecule:
            qn["config"], qn["term"] = config, term
            _decode_atom(coupling, qn)
        elif term is None:  # no configuration: the whole description is the term
            qn["term"] = description
            _decode_molecule(coupling, description, qn)
        else:
            qn["config"], qn["term"] = config, term
            _decode_molecule(coupling, term, qn)
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
    term = _HYPERFINE_LABEL.sub("", term)  # F is kept in term/term_desc; no column holds it
    odd = term.endswith("*")
    term = term.rstrip("*")
    kurucz = _KURUCZ_JK_TERM.match(term) if coupling == "JK" else None
    if kurucz:  # Kurucz's label: the core's Jc and K, each "n+" = n + 1/2; no S2
        qn.update(Jc=int(kurucz["jc"]) + 0.5, K=int(kurucz["k"]) + 0.5)
    elif coupling == "LS":
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

    lower_key: complex  # level_key
    upper_key: complex
    lower: dict  # STATE_COLUMNS without the slots -> value
    upper: dict
    transition: dict  # TRANSITION_COLUMNS without the slots -> value


def parse_record(line: str, ref_line: str | None, skip_calc: bool = False,
                 methods: dict | None = None) -> Record:
    """Parse one data line and its reference line (or None) into rows.

    ``methods`` maps line-list ids to their method (``linelists.method``).
    """
    methods = methods or {}
    raw = slice_data_line(line)
    value = {}
    for f in CHECK_ORDER:  # the first problem found is the reason given
        value[f.name] = field_value(f, raw[f.name])
        if f.required and value[f.name] is None:
            raise RejectedLine(f"no {f.text}")
        if f.name == "species_id" and value[f.name] <= 0:
            raise RejectedLine(f"bad species index {value[f.name]}")
        if f.name == "wave_measured" and value["wave_ritz"] is None and value[f.name] is None:
            raise RejectedLine("no wavelength")
    wave = value["wave_measured"] or value["wave_ritz"]
    keys = reference_keys(ref_line) if ref_line is not None else NO_REFERENCES
    lower, upper = (_level_row(side, raw, value, keys, methods) for side in ("lower", "upper"))
    flag = raw["transition_flag"]
    autoionized = flag == "A" and lower["energy_scaled"] > upper["energy_scaled"]
    gammawaals, sigma, alpha = waals_values(value["gammawaals"])
    accur = raw["accur"].strip() or None
    transition = {f.column: _stripped(value[f.name]) for f in DATA_FIELDS if f.level is None and f.column}
    transition.update(
        gammawaals=gammawaals, wave=wave,
        einsteina=None if skip_calc else einstein_a(value["loggf"], upper["J_scaled"], wave),
        sigmawaals=sigma, alphawaals=alpha, loggf_err=loggf_error(raw["accurflag"], accur),
        transition_type=None if autoionized else TRANSITION_TYPES[flag], autoionized=autoionized,
        wave_method=methods.get(value[LINE_LISTS[FIELD["wave_measured"].refs[0]].name]),
        **reference_columns(keys, None))
    species_id = value["species_id"]
    return Record(level_key(species_id, lower["energy_scaled"], lower["J_scaled"]),
                  level_key(species_id, upper["energy_scaled"], upper["J_scaled"]),
                  lower, upper, {c: transition[c] for c in TRANSITION_COLUMNS[len(TRANSITION_SLOTS):]})


CHECK_ORDER = (FIELD["species_id"], *(f for f in DATA_FIELDS if f.name != "species_id"))


def _stripped(value):
    return (value.strip() or None) if isinstance(value, str) else value


def _level_row(side, raw, value, keys, methods) -> dict:
    """The STATE_COLUMNS values (without the slots) of the ``side`` level of a line."""
    fields = {f.column: f for f in DATA_FIELDS if f.level == side and f.column}
    energy = fields["energy"]
    species_id = value["species_id"]
    linelist = value[LINE_LISTS[energy.refs[0]].name]
    row = dict(species_id=species_id, energy=value[energy.name],
               energy_scaled=scaled_int(value[energy.name], energy.places, energy.text),
               J=value[fields["J"].name], lande=value[fields["lande"].name],
               J_scaled=UNKNOWN_J if value[fields["J"].name] is None
               else scaled_int(value[fields["J"].name], fields["J"].places, fields["J"].text),
               coupling_case=raw[fields["coupling_case"].name].strip() or None,
               term_desc=raw[fields["term_desc"].name].rstrip(" ") or None,
               energy_linelist_id=linelist, energy_method=methods.get(linelist),
               **reference_columns(keys, side))
    qn = decode_level(row["coupling_case"], row["term_desc"],
                      is_molecule(species_id, row["coupling_case"]))
    row.update(zip(LEVEL_QN_COLUMNS, qn))
    return {c: row[c] for c in STATE_COLUMNS[len(STATE_SLOTS):]}


def canonical_line(line: str) -> str:
    """``line`` (one parse_record accepts) with every number printed the way the Fortran
    format prints it: exactly its decimals, no plus sign, right-justified.

    The columnar parser takes a line parse_record had to decide on in this form: same
    values, one code path for all the rows of a batch.
    """
    raw = slice_data_line(line)
    out = []
    for f in DATA_FIELDS:
        text = raw[f.name]
        stripped = text.strip()
        if f.kind == "decimal" and stripped and stripped != "X":
            scaled = scaled_int(stripped.lstrip("+"), f.places, f.text)
            digits = str(abs(scaled)).rjust(f.places + 1, "0")
            sign = "-" if stripped.startswith("-") else ""
            text = f"{sign}{digits[:len(digits) - f.places]}.{digits[len(digits) - f.places:]}"
        elif f.kind == "int" and stripped:
            text = str(int(stripped))
        out.append(text.rjust(f.width) if f.kind in ("decimal", "int") else text)
    return "".join(out)


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


def check_complete(data: bytes, ref: bytes | None):
    """Reject the record the input ends in, without an end of line, when it may be cut
    off (an interrupted download): a data line that stops before the end of its last
    field (the line-list ids, column 365), or a reference line (nothing tells where it
    ends). Only the input's last line can lack its end of line."""
    last = ref if ref is not None else data
    if last.endswith(b"\n"):
        return
    if ref is not None:
        raise RejectedLine("truncated input: it ends inside this record's reference line, "
                           "without an end of line")
    width = len(data.rstrip(b"\r"))
    if width < LINE_WIDTH:
        raise RejectedLine(f"truncated input: the last line stops at column {width}, without "
                           f"an end of line, before the end of its last field (column {LINE_WIDTH})")


def oracle_record(data: bytes, ref: bytes | None, config: "ParseConfig") -> Record:
    """parse_record on raw bytes, as the columnar parser hands a line over."""
    return parse_record(decoded_line(data), None if ref is None else decoded_line(ref),
                        config.skip_calc, dict(config.methods))


# Columnar parser ------------------------------------------------------------
# A batch travels as arrays: the data lines become one byte matrix (a row per line,
# LINE_WIDTH columns), every field is checked and converted for all rows at once, and
# only the lines that fail a check go to parse_record, one by one, which rejects them
# with a reason or accepts them (they then join the matrix printed canonically).

TEXT, TUPLES = "text", "tuples"  # the writer's row form: COPY / LOAD DATA text, or columns
NULL = b"\\N"
NAN = float("nan")  # NULL for sqlite3 (ColumnRows.flat)


@dataclass(frozen=True)
class ParseConfig:
    """How a batch is parsed; picklable, for the parser processes."""

    skip_header: int = HEADER_LINES
    skip_calc: bool = False
    methods: tuple = ()  # (line-list id, method) pairs
    rows: str = TUPLES  # TEXT or TUPLES: the form the writer takes
    transitions: bool = True  # False: pass 1 needs only the levels


class TextRows:
    """Rows as COPY / LOAD DATA text, back to back in ``data`` (uint8): row i is
    ``data[offsets[i]:offsets[i + 1]]``. Each row starts with ``slots`` fields of
    SLOT_WIDTH zero digits that the writer fills (ids are known only once the levels
    are stored), so the text is built where the batch is parsed."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray, slots: int):
        self.data, self.offsets, self.slots = data, offsets, slots

    def __len__(self):
        return len(self.offsets) - 1

    def take(self, index: np.ndarray) -> "TextRows":
        """The rows ``index``, in that order."""
        starts, lengths = self.offsets[:-1][index], np.diff(self.offsets)[index]
        offsets = np.zeros(len(index) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return TextRows(self.data[ragged_arange(starts, lengths)], offsets, self.slots)

    def fill(self, slot: int, values):
        """Write ``values`` (ints, or one int for every row) into slot ``slot`` of each row."""
        digits = zero_padded(np.broadcast_to(np.asarray(values, np.int64), (len(self),)), SLOT_WIDTH)
        at = self.offsets[:-1, None] + slot * (SLOT_WIDTH + 1) + np.arange(SLOT_WIDTH)
        self.data[at] = digits

    def tobytes(self) -> bytes:
        return self.data.tobytes()

    def values(self) -> list[tuple]:
        """The rows as tuples of Python values (str or None): for an INSERT, and for tests."""
        lines = self.tobytes().decode().split("\n")[:-1]
        return [tuple(None if v == "\\N" else _copy_unescaped(v) for v in line.split("\t"))
                for line in lines]


def _copy_unescaped(text: str) -> str:
    return text.replace("\\\\", "\\") if "\\" in text else text


class ColumnRows:
    """Rows as columns, for executemany: each column a float64 array (NaN is NULL: SQLite
    stores it so, and makes 5.0 the integer 5 in an integer column) or a Strings."""

    def __init__(self, columns: list, slots: int):
        self.columns, self.slots = columns, slots

    def __len__(self):
        return len(self.columns[0])

    def take(self, index) -> "ColumnRows":
        """The rows ``index`` (an index array, or a slice)."""
        return ColumnRows([c.take(index) if isinstance(c, Strings) else c[index] for c in self.columns],
                          self.slots)

    def tuples(self, *slots) -> list[tuple]:
        """The rows, led by the ``slots`` values (arrays or one value for every row)."""
        return list(zip(*self._lists(slots)))

    def flat(self, *slots) -> list:
        """The values of tuples(), row after row in one list, NULL as NaN: sqlite3 binds
        None ten times slower than a float (it looks for an adapter), and SQLite stores
        a NaN it is given as NULL, in any column."""
        lists = self._lists(slots, NAN)
        flat = [None] * (len(self) * len(lists))
        for j, values in enumerate(lists):
            flat[j::len(lists)] = values
        return flat

    def _lists(self, slots, null=None) -> list[list]:
        n = len(self)
        return [np.broadcast_to(np.asarray(s), (n,)).tolist() for s in slots] + \
            [c.tolist(null) if isinstance(c, Strings) else c.tolist() for c in self.columns]


@dataclass
class Strings:
    """A text column as codes into a small table (None where the table says so)."""

    codes: np.ndarray  # int32
    table: list
    # the table as objects, with its NULL: made once for the parts a writer takes of a batch
    _objects: list = field(default_factory=lambda: [None, None], repr=False, compare=False)

    def take(self, index) -> "Strings":
        return Strings(self.codes[index], self.table, self._objects)

    def tolist(self, null=None) -> list:
        made_for, objects = self._objects
        if objects is None or made_for is not null:
            objects = np.empty(len(self.table) + 1, object)
            objects[:] = [null if t is None else t for t in self.table] + [null]
            self._objects[:] = [null, objects]
        return objects[self.codes].tolist()

    def __len__(self):
        return len(self.codes)


def ragged_arange(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ranges [starts[i], starts[i] + lengths[i])."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum(lengths)
    return np.arange(total, dtype=np.int64) + np.repeat(starts - (ends - lengths), lengths)


_POWERS = 10 ** np.arange(19, dtype=np.int64) if np else None  # up to 10**18, within int64


def zero_padded(values: np.ndarray, width: int) -> np.ndarray:
    """ASCII digits of non-negative ints, ``width`` per row, zero-padded (uint8 matrix)."""
    return ((values[:, None] // _POWERS[width - 1::-1]) % 10 + 48).astype(np.uint8)


@dataclass
class ParsedBatch:
    """What the parser made of one batch of lines, as arrays.

    ``keys`` are the distinct level keys the batch's records name (sorted); ``lower`` and
    ``upper`` index them per record. The batch carries the rows (``levels``, in the order
    of ``keys[carried]``) of the keys this parser had not met before: the parser-to-writer
    contract of LevelKeys.
    """

    records: int = 0
    line_numbers: np.ndarray = None  # int64 [records]: line number of each data line
    species: np.ndarray = None  # int64 [records]
    keys: np.ndarray = None  # complex128 [k]
    lower: np.ndarray = None  # int64 [records], into keys
    upper: np.ndarray = None
    carried: np.ndarray = None  # bool [k]
    levels: TextRows | ColumnRows | None = None
    transitions: "TextRows | ColumnRows | Unrendered | None" = None
    rejects: list = field(default_factory=list)  # (line_number, reason, raw_text)
    skipped: Counter = field(default_factory=Counter)  # reason -> lines
    oracle: int = 0  # lines parse_record decided on
    seconds: float = 0.0  # CPU time of the parse, wherever it ran

    @property
    def species_ids(self) -> set:
        return set(np.unique(self.species).tolist()) if self.records else set()

    def rendered(self) -> "ParsedBatch":
        """This batch with the transition rows its parser left unrendered rendered here
        (the time counts as the parse's)."""
        if isinstance(self.transitions, Unrendered):
            started = time.process_time()
            self.transitions = self.transitions.rendered()
            self.seconds += time.process_time() - started
        return self


def parse_batch(data: bytes, first_line: int = 1, config: ParseConfig = ParseConfig(),
                shipped: "SentLevels | None" = None, render_transitions: bool = True) -> ParsedBatch:
    """Parse a batch of whole physical lines; ``first_line`` is the number of its first line.

    Rows of levels whose keys are in ``shipped`` are left out, and the others are added
    to it. Only the input's last line may lack its end of line (a download cut off?):
    its record goes to parse_record, after check_complete. ``render_transitions=False``
    leaves the transition rows as columns (Unrendered), for the process that reads the result.
    """
    started = time.process_time()
    lines = LineTable(data, first_line, config.skip_header)
    out = ParsedBatch(rejects=lines.rejects, skipped=lines.skipped)
    matrix = lines.data_matrix()
    values, ok = field_columns(matrix, config.skip_calc)
    records = np.arange(len(matrix))
    for row in np.flatnonzero(~ok):  # the exception path: parse_record decides
        out.oracle += 1
        try:
            check_complete(*lines.with_line_ends(row))
            oracle_record(lines.text(row), lines.reference(row), config)
            matrix[row] = np.frombuffer(canonical_line(lines.text(row).decode()).encode(), np.uint8)
        except RejectedLine as reason:
            lines.reject(row, str(reason))
            records[row] = -1
    unusual = np.flatnonzero(~ok & (records >= 0))
    if len(unusual):
        fixed, fixed_ok = field_columns(matrix[unusual], config.skip_calc)
        assert fixed_ok.all(), "canonical_line gave a line the columnar parser refuses"
        for name, column in values.items():
            column[unusual] = fixed[name]
    refs = lines.references(records >= 0)
    records = np.flatnonzero(refs.codes[:, 0] >= 0)
    out.records = len(records)
    out.line_numbers = lines.data_numbers[records]
    values = {name: column[records] for name, column in values.items()}
    matrix, refs.codes = matrix[records], refs.codes[records]
    out.species = values["species_id"]
    _level_keys(out, values, shipped)
    if out.records and config.transitions:
        out.transitions = transition_rows(matrix, values, refs, config, render_transitions)
    if out.records:
        out.levels = level_rows(out, matrix, values, refs, config)
    out.rejects.sort()
    out.seconds = time.process_time() - started
    return out


def _level_keys(out: ParsedBatch, values: dict, shipped):
    n = out.records
    both = np.empty(2 * n, np.complex128)  # lower, upper of each record: the first line wins
    for side, at in (("lower", 0), ("upper", 1)):
        both[at::2] = level_keys(values["species_id"], values[f"{side}_energy"], values[f"{side}_j"])
    out.keys, first, inverse = np.unique(both, return_index=True, return_inverse=True)
    out.lower, out.upper = inverse[0::2], inverse[1::2]
    out.carried = np.ones(len(out.keys), bool) if shipped is None else shipped.carry(out.keys)
    out._first = first[out.carried]  # where each carried level is first named: 2 * record + side


def level_keys(species: np.ndarray, energy_scaled: np.ndarray, j_scaled: np.ndarray) -> np.ndarray:
    """level_key of arrays."""
    return (species * 131072 + j_scaled + 1).astype(np.float64) + 1j * energy_scaled.astype(np.float64)


# The lines of a batch ------------------------------------------------------------

_LOWERCASE = np.arange(256).__ge__(97) & np.arange(256).__le__(122) if np else None


class LineTable:
    """The physical lines of a batch: where each starts and ends, what kind it is, and
    the matrix of its data lines (each record's reference line attached)."""

    def __init__(self, data: bytes, first_line: int, skip_header: int):
        self.data = bytes(data)
        buf = self.buf = np.frombuffer(self.data, np.uint8)
        ends = np.flatnonzero(buf == 10)
        self.unterminated = bool(len(buf)) and buf[-1] != 10  # the input's last line has no end
        if self.unterminated:
            ends = np.append(ends, len(buf))
        starts = np.zeros(len(ends), np.int64)
        starts[1:] = ends[:-1] + 1
        stops = ends.copy()
        cr = (stops > starts) & (buf[np.maximum(stops - 1, 0)] == 13) if len(buf) else stops > starts
        stops[cr] -= 1
        self.starts, self.stops = starts, stops
        self.numbers = first_line + np.arange(len(starts))
        self.rejects, self.skipped = [], Counter()
        self._classify(skip_header)

    def _classify(self, skip_header):
        n, buf = len(self.starts), self.buf
        first = buf[np.minimum(self.starts, max(len(buf) - 1, 0))] if len(buf) else np.zeros(0, np.uint8)
        first = np.where(self.stops > self.starts, first, 32)
        header = self.numbers <= skip_header
        comment = ~header & (first == 35)
        unknown = np.zeros(n, bool)
        at = self.data.find(b"Unknown")
        while at >= 0:
            unknown[np.searchsorted(self.starts, at, "right") - 1] = True
            at = self.data.find(b"Unknown", at + 1)
        unknown &= ~header & ~comment
        reference = ~header & ~comment & ~unknown & _LOWERCASE[first]
        candidate = np.flatnonzero(~header & ~comment & ~unknown & ~reference)
        matrix = self._matrix(candidate)
        blank = ~(matrix > 32).any(1)  # only blanks and control characters: look closer
        for row in np.flatnonzero(blank):
            line = self.data[self.starts[candidate[row]]:self.stops[candidate[row]]]
            blank[row] = not line.strip()
        data = candidate[~blank]
        self.matrix = matrix[~blank]
        is_data = np.zeros(n + 1, bool)
        is_data[data] = True
        attached = reference & is_data[np.arange(n) - 1] & (np.arange(n) > 0)
        self.ref_line = np.full(len(data), -1, np.int64)
        self.ref_line[np.searchsorted(data, np.flatnonzero(attached) - 1)] = np.flatnonzero(attached)
        for line in np.flatnonzero(reference & ~attached):
            self.rejects.append((int(self.numbers[line]), "reference line without a data line before it",
                                 self.raw_text(line)))
        self.data_lines, self.data_numbers = data, self.numbers[data]
        self.skipped.update({kind: int(count) for kind, count in (
            ("header", header.sum()), ("comment", comment.sum()), ("unknown", unknown.sum()),
            ("blank", blank.sum()), ("reference", attached.sum())) if count})

    def _matrix(self, lines: np.ndarray) -> np.ndarray:
        """The first LINE_WIDTH bytes of ``lines``, blank-padded, one row each."""
        padded = np.concatenate([self.buf, np.full(LINE_WIDTH, 32, np.uint8)])
        windows = np.lib.stride_tricks.sliding_window_view(padded, LINE_WIDTH)
        matrix = windows[self.starts[lines]]
        lengths = self.stops[lines] - self.starts[lines]
        short = np.flatnonzero(lengths < LINE_WIDTH)
        if len(short):
            rows = matrix[short]
            rows[np.arange(LINE_WIDTH) >= lengths[short, None]] = 32
            matrix[short] = rows
        return matrix

    def data_matrix(self) -> np.ndarray:
        """The data lines' matrix; a line the matrix cannot show as it is (longer than
        LINE_WIDTH, or in the input's unfinished last record) gets a byte that fails the
        checks, so that parse_record decides."""
        lengths = self.stops[self.data_lines] - self.starts[self.data_lines]
        odd = lengths > LINE_WIDTH
        if self.unterminated and len(self.data_lines):  # the input's last record may be cut off
            last = len(self.starts) - 1
            odd[-1] |= self.data_lines[-1] == last or self.ref_line[-1] == last
        self.matrix[odd, 0] = 0
        return self.matrix

    def text(self, row: int) -> bytes:
        """The bytes of data line ``row`` (without its line end)."""
        line = self.data_lines[row]
        return self.data[self.starts[line]:self.stops[line]]

    def with_line_ends(self, row: int) -> tuple:
        """(data line, reference line or None) of a record as read, line ends included."""
        def ended(line):
            text = self.data[self.starts[line]:self.stops[line]]
            return text if self.unterminated and line == len(self.starts) - 1 else text + b"\n"
        ref = self.ref_line[row]
        return ended(self.data_lines[row]), None if ref < 0 else ended(ref)

    def reference(self, row: int) -> bytes | None:
        line = self.ref_line[row]
        return None if line < 0 else self.data[self.starts[line]:self.stops[line]]

    def raw_text(self, line: int) -> str:
        return self.data[self.starts[line]:self.stops[line]].decode("utf-8", "backslashreplace")

    def reject(self, row: int, reason: str):
        self.rejects.append((int(self.data_numbers[row]), reason, self.raw_text(self.data_lines[row])))

    def references(self, valid: np.ndarray) -> "ReferenceKeys":
        """The reference keys of the ``valid`` records; a record whose reference line is
        refused is rejected here. Lines are cut into fields for all rows at once, and each
        distinct field is read once: a batch has few distinct keys, however many lines."""
        keys = ReferenceKeys(np.zeros((len(self.data_lines), len(REFERENCE_QUANTITIES)), np.int64))
        rows = np.flatnonzero(valid & (self.ref_line >= 0))
        lines = self.ref_line[rows]
        matrix, lengths = self._rows(self.starts[lines], self.stops[lines])
        plain = ((matrix >= 32) & (matrix <= 126)).all(1) & (lengths <= 4 * LINE_WIDTH)
        for row, line in zip(rows[~plain], lines[~plain]):  # control characters, odd lengths
            parsed = parsed_reference(self.data[self.starts[line]:self.stops[line]])
            if isinstance(parsed, str):
                self.reject(row, parsed)
                keys.codes[row] = -1
            else:
                keys.codes[row] = [keys.code(k) for k in parsed]
        rows, matrix = rows[plain], matrix[plain]
        fields = matrix != 32
        starts = fields.copy()
        starts[:, 1:] &= ~fields[:, :-1]
        counts = starts.sum(1)
        for row, count in zip(rows[counts > len(REFERENCE_QUANTITIES)], counts[counts > len(REFERENCE_QUANTITIES)]):
            self.reject(row, f"reference line has {count} fields, at most {len(REFERENCE_QUANTITIES)} expected")
            keys.codes[row] = -1
        fine = counts <= len(REFERENCE_QUANTITIES)
        stops = fields.copy()
        stops[:, :-1] &= ~fields[:, 1:]
        row_of, start = np.nonzero(starts & fine[:, None])
        stop = np.nonzero(stops & fine[:, None])[1] + 1
        slot = np.arange(len(row_of)) - np.searchsorted(row_of, row_of)  # its place in its line
        token = _KNOWN_FIELDS.identify(matrix, row_of, start, stop)
        present = np.zeros(len(_KNOWN_FIELDS.keys), bool)
        present[token] = True
        used = np.flatnonzero(present)
        local = np.zeros(len(present), np.int64)
        local[used] = [keys.code(_KNOWN_FIELDS.keys[i]) for i in used.tolist()]
        keys.codes[rows[row_of], slot] = local[token]
        keys.check(self, rows)
        keys.codes[~valid] = -1
        return keys

    def _rows(self, starts, stops):
        """(matrix, lengths) of the lines [starts, stops), blank-padded."""
        return _rows_of(self.buf, starts, stops - starts, fill=32)


def _rows_of(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, fill: int = 0):
    """(matrix, lengths): buf[starts[i]:starts[i] + lengths[i]] as rows, ``fill`` after."""
    width = max(1, int(lengths.max()) if len(lengths) else 1)
    padded = np.concatenate([buf, np.full(width, fill, np.uint8)])
    matrix = np.lib.stride_tricks.sliding_window_view(padded, width)[starts]
    matrix[np.arange(width) >= lengths[:, None]] = fill
    return matrix, lengths


class KnownFields:
    """The distinct fields of reference lines met so far, each with its keys (field_keys):
    a batch's ~100 000 fields are a few hundred distinct ones, so each is identified
    exactly by its first 32 bytes and its length, looked up in sorted arrays, and only a
    field never met before (or longer than 32 bytes) is read in Python."""

    WIDTH = 32

    def __init__(self):
        self.hashes = np.zeros(0, np.uint64)
        self.words = np.zeros((0, self.WIDTH // 8), np.uint64)
        self.lengths, self.ids = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self.keys, self._by_text = [], {}

    def identify(self, matrix, row, start, stop) -> np.ndarray:
        """The id (into ``keys``) of each field [start, stop) of ``matrix``'s rows ``row``."""
        width, length = matrix.shape[1], stop - start
        padded = np.concatenate([matrix.ravel(), np.zeros(self.WIDTH, np.uint8)])
        text = np.lib.stride_tricks.sliding_window_view(padded, self.WIDTH)[row * width + start]
        text *= np.arange(self.WIDTH) < length[:, None]
        words = text.view(np.uint64)
        with np.errstate(over="ignore"):
            hashes = (words * _FIELD_HASH[:words.shape[1]]).sum(1, dtype=np.uint64) \
                ^ length.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        ids = self._lookup(hashes, words, length)
        new = np.flatnonzero(ids < 0)
        for i in new[np.unique(hashes[new], return_index=True)[1]] if len(new) else ():
            self._add(hashes[i], words[i], length[i], bytes(text[i][:min(length[i], self.WIDTH)]),
                      matrix, row[i], start[i], stop[i])
        ids[new] = self._lookup(hashes[new], words[new], length[new])
        for i in np.flatnonzero(ids < 0):  # longer than WIDTH, or a hash two fields share
            raw = bytes(matrix[row[i], start[i]:stop[i]])
            ids[i] = self._by_text.setdefault(raw, len(self.keys))
            if ids[i] == len(self.keys):
                self.keys.append(field_keys(raw.decode()))
        return ids

    def _lookup(self, hashes, words, length) -> np.ndarray:
        ids = np.full(len(hashes), -1, np.int64)
        if len(self.hashes):
            at = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
            same = (self.hashes[at] == hashes) & (self.words[at] == words).all(1) & (self.lengths[at] == length)
            ids[same] = self.ids[at[same]]
        return ids

    def _add(self, digest, words, length, text, matrix, row, start, stop):
        if length > self.WIDTH or (self.hashes == digest).any():
            return  # read in Python each time
        at = np.searchsorted(self.hashes, digest)
        self.hashes = np.insert(self.hashes, at, digest)
        self.words = np.insert(self.words, at, words, axis=0)
        self.lengths, self.ids = np.insert(self.lengths, at, length), np.insert(self.ids, at, len(self.keys))
        self.keys.append(field_keys(bytes(matrix[row, start:stop]).decode()))


_FIELD_HASH = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5],
                       np.uint64) if np else None
_KNOWN_FIELDS = KnownFields() if np else None  # for the whole process: the fields repeat


class ReferenceKeys:
    """The reference keys of a batch's records: ``codes[record, slot]`` indexes ``keys``
    (0: no key; a row of -1: the record was rejected)."""

    def __init__(self, codes: np.ndarray):
        self.codes, self.keys, self._index = codes, [None], {None: 0}

    def code(self, key: str | None) -> int:
        code = self._index.get(key)
        if code is None:
            code = self._index[key] = len(self.keys)
            self.keys.append(key)
        return code

    def check(self, lines: "LineTable", rows: np.ndarray):
        """Reject the records with a key longer than its column (the first such field)."""
        too_long = np.array([key is not None and len(key) > REF_KEY_LENGTH for key in self.keys])
        bad = too_long[np.maximum(self.codes[rows], 0)]
        for row, slot in zip(rows[bad.any(1)], bad[bad.any(1)].argmax(1)):
            key = self.keys[self.codes[row, slot]]
            lines.reject(row, f"{REFERENCE_QUANTITIES[slot]} reference {key[:20]!r}... is longer "
                              f"than its column ({REF_KEY_LENGTH} characters)")
            self.codes[row] = -1

    def column(self, slots: tuple, codes: np.ndarray | None = None) -> Column:
        """The stored keys of ``slots`` (several: joined) for the rows of ``codes``."""
        codes = self.codes if codes is None else codes
        if len(slots) == 1:
            return Column("table", codes=codes[:, slots[0]], entries=self.keys)
        pairs = codes[:, slots[0]] * len(self.keys) + codes[:, slots[1]]
        distinct, inverse = np.unique(pairs, return_inverse=True)
        return Column("table", codes=inverse.ravel(), entries=[
            joined_keys(self.keys[c] for c in divmod(pair, len(self.keys))) for pair in distinct.tolist()])


@functools.lru_cache(maxsize=1 << 14)
def parsed_reference(raw: bytes) -> tuple | str:
    """The keys of a reference line, or the reason it is refused."""
    try:
        return reference_keys(decoded_line(raw))
    except RejectedLine as reason:
        return str(reason)


# Checking and converting whole columns -------------------------------------------


def field_columns(matrix: np.ndarray, skip_calc: bool = False) -> tuple[dict, np.ndarray]:
    """(values, ok) of a matrix of data lines, every field at once.

    ``values[name]`` is the field's value as an int64 array (decimals x 10**places, J
    with UNKNOWN_J where unknown), ``values[name + "?"]`` whether it is NULL (blank, or
    its null sentinel), ``values["einsteina"]`` the Einstein A (NaN: none). ``ok`` says
    which rows passed every check parse_record makes: the others go to it.
    """
    columns = np.ascontiguousarray(matrix.T)  # a row per byte column: each field is a few rows
    ok = ((columns >= 32) & (columns <= 126)).all(0)
    values = {}
    for f in DATA_FIELDS:
        seg = columns[f.start:f.end]
        if f.kind in ("text", "blank"):
            if f.allowed is not None:
                ok &= _allowed_bytes(f.allowed)[seg[0]]
            continue
        value, present, good = _number(seg, f.width - 1 - f.places if f.kind == "decimal" else None)
        null = ~present
        if f.null == "X":  # J: blank or X is unknown, a negative J is refused
            unknown = ((seg == 88).sum(0) == 1) & ((seg != 32).sum(0) == 1)
            good |= unknown
            null |= unknown
            ok &= null | (value >= 0)
            value = np.where(null, UNKNOWN_J, value)
        elif f.null_scaled is not None:
            null |= value == f.null_scaled
        ok &= good
        if f.required:
            ok &= present
        values[f.name], values[f.name + "?"] = value, null
    ok &= values["species_id"] > 0
    ok &= ~values["wave_measured?"] | ~values["wave_ritz?"]
    values["einsteina"] = np.full(len(matrix), np.nan) if skip_calc else _einstein_a(values)
    ok &= ~np.isinf(values["einsteina"])
    return values, ok


@functools.lru_cache(maxsize=None)
def _allowed_bytes(allowed: str) -> np.ndarray:
    table = np.zeros(256, bool)
    table[list(allowed.encode())] = True
    return table


@functools.lru_cache(maxsize=None)
def _digit_weights(width: int, point: int | None) -> np.ndarray:
    """10**k for each byte column of a field, 0 at the point: its value from its digits."""
    weights = np.zeros(width)
    digits = [c for c in range(width) if c != point]
    weights[digits] = 10.0 ** np.arange(len(digits) - 1, -1, -1)
    return weights


def _number(seg: np.ndarray, point: int | None) -> tuple:
    """(value, present, good) of a numeric field, ``seg`` its byte columns (a row each):
    ``[blanks][-]digits[.digits]`` with the point at ``point`` (None: an I field) and
    digits after it; the value is the integer of all its digits (decimal x 10**places)."""
    filled = seg != 32
    digit = (seg - 48) < 10  # uint8 arithmetic: every other byte wraps to 10 or more
    minus = seg == 45
    n_filled, n_digit, n_minus = filled.sum(0), digit.sum(0), minus.sum(0)
    good = ~(filled[:-1] & ~filled[1:]).any(0)  # no blank after the first non-blank
    good &= ~(minus[1:] & filled[:-1]).any(0) & (n_minus <= 1)  # a minus only in front
    if point is None:
        good &= (n_digit == n_filled - n_minus) & (n_digit > 0)
    else:
        good &= (seg[point] == 46) & (n_digit == n_filled - n_minus - 1)
    value = (_digit_weights(len(seg), point) @ np.where(digit, seg - 48, 0)).astype(np.int64)
    present = n_filled > 0
    return np.where(n_minus > 0, -value, value), present, good | ~present


def _einstein_a(values: dict) -> np.ndarray:
    """einstein_a() of every row, bit for bit: 10**loggf is computed by Python's pow for
    each distinct log gf (NumPy's may differ in the last bit), the rest is the same
    sequence of IEEE operations."""
    wave = np.where(values["wave_measured?"], values["wave_ritz"], values["wave_measured"])
    wave = wave / 10.0 ** FIELD["wave_ritz"].places
    j_up = values["upper_j"]
    computable = ~values["loggf?"] & (j_up != UNKNOWN_J) & (wave != 0)
    result = np.full(len(wave), np.nan)
    if not computable.any():
        return result
    distinct, inverse = np.unique(values["loggf"][computable], return_inverse=True)
    powers = np.array([_pow10(v) for v in (distinct / 10.0 ** FIELD["loggf"].places).tolist()])
    w = wave[computable]
    with np.errstate(over="ignore", invalid="ignore"):
        result[computable] = EINSTEIN_A_CONSTANT * powers[inverse] / ((j_up[computable] / 5 + 1) * w * w)
    return result


def _pow10(exponent: float) -> float:
    try:
        return 10.0 ** exponent
    except OverflowError:
        return math.inf


# Rows from columns ---------------------------------------------------------------
# Each stored column is described once (a Column below); render() turns the list into
# COPY text (TextRows) or executemany columns (ColumnRows), whichever the writer takes.


@dataclass
class Column:
    """How one stored column is made for every row.

    ``kind`` "digits": a number as the file prints it (``text``: its bytes, blanks
    dropped; ``value``: the integer of its digits, ``places`` decimals); "chars": text
    (``text``, blanks stripped at both ends, or only at the right with ``strip="right"``);
    "table": ``entries[codes]``; "float": ``value``; "int": ``value``. NULL where ``null``.
    """

    kind: str
    text: np.ndarray | None = None
    value: np.ndarray | None = None
    null: np.ndarray | None = None
    places: int = 0
    codes: np.ndarray | None = None
    entries: list | None = None
    strip: str = "both"
    span: tuple | None = None  # chars: (start, stop) of the text in each row, instead of strip


def render(columns: list, rows: int, form: str, slots: int) -> "TextRows | ColumnRows":
    """The rows of ``columns`` in the writer's form, led by ``slots`` id slots."""
    if form == TEXT:
        return _text_rows(columns, rows, slots)
    return ColumnRows([_column_values(c) for c in columns], slots)


@dataclass
class Unrendered:
    """The columns of rows not rendered yet into the writer's form: what a parser process
    sends when the writer's process has time to render them (ParserPool)."""

    columns: list
    rows: int
    form: str
    slots: int

    def rendered(self) -> "TextRows | ColumnRows":
        return render(self.columns, self.rows, self.form, self.slots)


def _column_values(c: Column):
    """A column for executemany: float64 (NaN: NULL) or Strings."""
    if c.kind == "digits":
        values = c.value / 10.0 ** c.places
    elif c.kind in ("int", "float"):
        values = c.value.astype(np.float64)
    elif c.kind == "chars":
        text = c.text if c.span is None else _span_masked(c.text, c.span)
        first, inverse = unique_rows(text)
        table = [_stripped_text(text[i], c.strip) for i in first]
        codes = inverse.astype(np.int64)
        if c.null is not None:
            codes[c.null] = len(table)
        return Strings(codes, [None if t == "" else t for t in table])
    elif any(isinstance(e, str) for e in c.entries):
        return Strings(c.codes, list(c.entries))
    else:
        values = np.array([np.nan if e is None else float(e) for e in c.entries] or [np.nan])[c.codes]
    if c.null is not None:
        values = np.where(c.null, np.nan, values)
    return values


def _span_masked(text: np.ndarray, span) -> np.ndarray:
    position = np.arange(text.shape[1])
    return np.where((position >= span[0][:, None]) & (position < span[1][:, None]), text, 32)


def _stripped_text(row: np.ndarray, strip: str) -> str:
    text = row.tobytes().decode("ascii")
    return text.rstrip(" ") if strip == "right" else text.strip(" ")


def _text_rows(columns: list, rows: int, slots: int) -> TextRows:
    """COPY text: every column laid out in a fixed-width block of one matrix, with a count
    per byte (0 dropped, 1 kept, 2 a backslash written twice), then compacted."""
    blocks = [_text_source(c) for c in columns]
    width = slots * (SLOT_WIDTH + 1) + sum(max(2, b.shape[1]) + 1 for b, _ in blocks)
    matrix = np.empty((rows, width), np.uint8)
    times = np.empty((rows, width), np.uint8)
    at = slots * (SLOT_WIDTH + 1)
    matrix[:, :at] = np.tile(np.frombuffer(b"0" * SLOT_WIDTH + b"\t", np.uint8), slots)
    times[:, :at] = 1
    for c, (block, count) in zip(columns, blocks):
        w = max(2, block.shape[1])
        matrix[:, at:at + block.shape[1]], times[:, at:at + block.shape[1]] = block, count
        times[:, at + block.shape[1]:at + w] = 0
        _null_marker(c, matrix[:, at:at + w], times[:, at:at + w])
        matrix[:, at + w], times[:, at + w] = 9, 1
        at += w + 1
    matrix[:, -1] = 10
    offsets = np.zeros(rows + 1, np.int64)
    np.cumsum(times.sum(1, dtype=np.int64), out=offsets[1:])
    return TextRows(_compacted(matrix, times, offsets), offsets, slots)


def _compacted(matrix, times, offsets) -> np.ndarray:
    """matrix's bytes, each as often as ``times`` says, row after row."""
    data = matrix[times.view(bool)]  # each kept byte once
    twos = times == 2
    rows = np.flatnonzero(twos.any(1))
    if not len(rows):
        return data
    # a byte to double sits, in the text kept once, at its row's offset less the doubled
    # bytes of earlier rows, plus the bytes kept before it in its row
    doubled_before = np.concatenate([[0], np.cumsum(twos[rows].sum(1))[:-1]])
    kept_before = np.cumsum(times[rows].view(bool), axis=1) - 1
    row, column = np.nonzero(twos[rows])
    at = offsets[rows[row]] - doubled_before[row] + kept_before[row, column]
    return np.insert(data, at, 92)


def _text_source(c: Column) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, count) of a column, as wide as it needs."""
    if c.kind == "digits":
        return c.text, c.text != 32
    if c.kind == "chars":
        text = c.text
        filled = text != 32
        position = np.arange(text.shape[1])
        if c.span is not None:
            keep = (position >= c.span[0][:, None]) & (position < c.span[1][:, None])
            filled &= keep
        else:
            keep = position <= (text.shape[1] - 1 - np.argmax(filled[:, ::-1], axis=1))[:, None]
            if c.strip == "both":
                keep &= position >= np.argmax(filled, axis=1)[:, None]
        keep &= filled.any(1)[:, None]
        return text, keep.view(np.uint8) + (keep & (text == 92))
    if c.kind == "table":
        table, count = _rendered_table(c.entries)
        return table[c.codes], count[c.codes]
    if c.kind == "int":
        return _int_text(c.value)
    return _float_text(c.value)


def _null_marker(c: Column, block: np.ndarray, count: np.ndarray):
    """Write \\N where the column is NULL (and where a text is empty)."""
    null = c.null
    if c.kind == "chars":
        empty = ~count.any(1)
        null = empty if null is None else null | empty
    elif c.kind == "float":
        null = np.isnan(c.value)
    if null is not None and null.any():
        rows = np.flatnonzero(null)
        block[rows, :2] = (92, 78)
        count[rows] = 0
        count[rows, :2] = 1


def _rendered_table(entries: list) -> tuple[np.ndarray, np.ndarray]:
    """The COPY text of each entry as a row of a matrix, and which bytes of it count
    (the same list, several columns' table: rendered once)."""
    cached = _RENDERED.get(id(entries))
    if cached is None or cached[0] is not entries:
        texts = [e if isinstance(e, _QnText) else _copy_text(e) for e in entries] or [NULL]
        cached = _RENDERED[id(entries)] = (entries, *_text_table(texts))
        if len(_RENDERED) > 64:
            _RENDERED.pop(next(iter(_RENDERED)))
    return cached[1], cached[2]


_RENDERED = {}  # id(entries) -> (entries, table, count): the lists of the batch being rendered


def _text_table(texts: list) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, texts), np.int64, len(texts))
    width = max(2, int(lengths.max()))
    table = np.zeros((len(texts), width), np.uint8)
    table[np.repeat(np.arange(len(texts)), lengths), ragged_arange(np.zeros_like(lengths), lengths)] = \
        np.frombuffer(b"".join(texts), np.uint8)
    return table, (np.arange(width) < lengths[:, None]).astype(np.uint8)


def _copy_text(value) -> bytes:
    """A Python value as COPY / LOAD DATA text."""
    if isinstance(value, _QnText):
        return bytes(value)
    if value is None:
        return NULL
    if value is True or value is False:
        return b"1" if value else b"0"
    if isinstance(value, str):
        return value.encode().replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(
            b"\n", b"\\n").replace(b"\r", b"\\r")
    return repr(value).encode() if isinstance(value, float) else str(value).encode()


def _int_text(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    width = 1 + max(1, len(str(int(np.abs(values).max())))) if len(values) else 2
    digits = zero_padded(np.abs(values), width - 1)
    significant = np.maximum(1, width - 1 - np.argmax(digits != 48, axis=1))
    significant[(digits == 48).all(1)] = 1
    block = np.concatenate([np.full((len(values), 1), 45, np.uint8), digits], axis=1)
    position = np.arange(width)
    count = (position >= width - significant[:, None]).astype(np.uint8)
    count[:, 0] = values < 0
    return block, count


def _float_text(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each float as text that reads back as the same double: 18 significant digits,
    computed with x87 long doubles (the scaled value is within 0.56 of the 18th digit's
    unit, while doubles lie at least 5.5 of them apart: the text rounds back to the
    double); repr() where 10**k is not exact in a long double, or there is none."""
    block = np.zeros((len(values), 24), np.uint8)
    finite = np.isfinite(values)
    fast = finite & (values > 0) & _LONG_DOUBLE_EXACT
    exponent = np.zeros(len(values), np.int64)
    exponent[fast] = np.floor(np.log10(values[fast]))
    fast &= (exponent >= -10) & (exponent <= 17)  # 10**(17 - exponent) exact: at most 10**27
    if fast.any():
        value, e = values[fast].astype(np.longdouble), exponent[fast]
        digits = np.rint(value * _LONG_POWERS[17 - e]).astype(np.int64)
        low, high = digits < 10 ** 17, digits >= 10 ** 18  # log10 was off by one
        e = e - low + high
        digits = np.where(low | high, np.rint(value * _LONG_POWERS[np.clip(17 - e, 0, 27)]).astype(np.int64),
                          digits)
        text = zero_padded(digits, 18)
        out = block[fast]
        out[:, 0], out[:, 1], out[:, 2:19] = text[:, 0], 46, text[:, 1:]
        out[:, 19] = 101  # e
        out[:, 20] = np.where(e < 0, 45, 43)
        out[:, 21:24] = zero_padded(np.abs(e), 3)
        block[fast] = out
    slow = finite & ~fast
    if slow.any():
        texts = np.array(list(map(repr, values[slow].tolist())), dtype="S24")
        block[slow] = texts.view(np.uint8).reshape(-1, 24)
    return block, block != 0


_LONG_DOUBLE_EXACT = bool(np) and np.finfo(np.longdouble).nmant >= 63
_LONG_POWERS = np.array([10 ** k for k in range(28)], dtype=np.longdouble) if np else None


def unique_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the first row of each distinct row, index of each row's distinct one).

    Rows are hashed to 64 bits and the hashes sorted (sorting the rows themselves is
    several times slower); rows that share a hash are compared byte for byte, and a
    collision, however unlikely, falls back to sorting the rows."""
    if not len(matrix):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.ascontiguousarray(matrix)
    width = rows.shape[1]
    if width % 8:
        rows = np.concatenate([rows, np.zeros((len(rows), 8 - width % 8), np.uint8)], axis=1)
    words = rows.view(np.uint64)
    digest = np.full(len(rows), 0xCBF29CE484222325, np.uint64)
    with np.errstate(over="ignore"):
        for column in words.T:
            digest = (digest ^ column) * np.uint64(0x100000001B3)
            digest ^= digest >> np.uint64(31)
    _, first, inverse = np.unique(digest, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    if not (words[first][inverse] == words).all():
        _, first, inverse = np.unique(rows.view(f"V{rows.shape[1]}").ravel(), return_index=True,
                                      return_inverse=True)
        inverse = inverse.ravel()
    return first, inverse


def transition_rows(matrix, values, refs: ReferenceKeys, config,
                    rendered: bool = True) -> "TextRows | ColumnRows | Unrendered":
    """The transition rows of the records (TRANSITION_COLUMNS after the slots)."""
    columns = {}
    for f in DATA_FIELDS:
        if f.level is None and f.column:
            columns[f.column] = _field_column(f, matrix, values)
    waals, measured = FIELD["gammawaals"], FIELD["wave_measured"]
    positive = ~values["gammawaals?"] & (values["gammawaals"] > 0)
    columns["gammawaals"].null = values["gammawaals?"] | positive
    use_ritz = values["wave_measured?"]
    ritz = matrix[:, FIELD["wave_ritz"].start:FIELD["wave_ritz"].end]
    columns["wave"] = Column("digits", np.where(use_ritz[:, None], ritz, matrix[:, measured.start:measured.end]),
                             np.where(use_ritz, values["wave_ritz"], values["wave_measured"]),
                             places=measured.places)
    columns["einsteina"] = Column("float", value=values["einsteina"])
    columns["sigmawaals"] = Column("int", value=values["gammawaals"] // 1000, null=~positive)
    alpha = np.concatenate([np.full((len(matrix), 2), (48, 46), np.uint8),
                            matrix[:, waals.end - waals.places:waals.end]], axis=1)
    columns["alphawaals"] = Column("digits", alpha, values["gammawaals"] % 1000, ~positive, waals.places)
    accuracy = matrix[:, FIELD["accurflag"].start:FIELD["accur"].end]
    first, inverse = unique_rows(accuracy)
    columns["loggf_err"] = Column("table", codes=inverse, entries=[
        loggf_error(chr(accuracy[i, 0]), accuracy[i, 1:].tobytes().decode().strip() or None) for i in first])
    flag = matrix[:, FIELD["transition_flag"].start]
    autoionized = (flag == 65) & (values["lower_energy"] > values["upper_energy"])  # "A"
    types = list(TRANSITION_TYPES)
    flag_code = np.zeros(256, np.int64)
    for i, name in enumerate(types):
        flag_code[ord(name)] = i
    columns["transition_type"] = Column("table", codes=np.where(autoionized, len(types), flag_code[flag]),
                                        entries=[TRANSITION_TYPES[t] for t in types] + [None])
    columns["autoionized"] = Column("table", codes=autoionized.astype(np.int64), entries=[False, True])
    columns["wave_method"] = _method_column(values[LINE_LISTS[measured.refs[0]].name], config)
    for f in DATA_FIELDS:
        if f.level is None and f.ref_column:
            columns[f.ref_column] = refs.column(f.refs)
    rows = Unrendered([columns[c] for c in TRANSITION_COLUMNS[len(TRANSITION_SLOTS):]], len(matrix),
                      config.rows, len(TRANSITION_SLOTS))
    return rows.rendered() if rendered else rows


def _field_column(f: FieldDef, matrix, values) -> Column:
    seg = matrix[:, f.start:f.end]
    if f.kind == "text":
        null = (seg == 32).all(1)
        return Column("chars", seg, null=null)
    return Column("digits", seg, values[f.name], values[f.name + "?"], f.places)


def _method_column(linelist: np.ndarray, config: ParseConfig) -> Column:
    methods = dict(config.methods)
    distinct, inverse = np.unique(linelist, return_inverse=True)
    return Column("table", codes=inverse.ravel(),
                  entries=[methods.get(ll) if ll else None for ll in distinct.tolist()])


def level_rows(out: ParsedBatch, matrix, values, refs: ReferenceKeys, config) -> "TextRows | ColumnRows":
    """The rows (STATE_COLUMNS after the slots) of the levels the batch carries, each from
    the first line that names it."""
    record, upper = out._first // 2, out._first % 2 == 1
    rows = matrix[record]
    fields = {side: {f.column: f for f in DATA_FIELDS if f.level == side and f.column}
              for side in ("lower", "upper")}

    def text(column):
        lo, up = fields["lower"][column], fields["upper"][column]
        return np.where(upper[:, None], rows[:, up.start:up.end], rows[:, lo.start:lo.end])

    def value(column, null=False):
        name = (fields["lower"][column].name, fields["upper"][column].name)
        suffix = "?" if null else ""
        return np.where(upper, values[name[1] + suffix][record], values[name[0] + suffix][record])

    species = FIELD["species_id"]
    columns = {"species_id": Column("digits", rows[:, species.start:species.end], values["species_id"][record])}
    for column in ("energy", "J", "lande"):
        columns[column] = Column("digits", text(column), value(column), value(column, True),
                                 fields["lower"][column].places)
    columns["coupling_case"] = Column("chars", text("coupling_case"))
    columns["energy_scaled"] = Column("int", value=value("energy"))
    columns["J_scaled"] = Column("int", value=value("J"))
    linelist = np.where(upper, values[LINE_LISTS[fields["upper"]["energy"].refs[0]].name][record],
                        values[LINE_LISTS[fields["lower"]["energy"].refs[0]].name][record])
    columns["energy_linelist_id"] = Column("int", value=linelist, null=linelist == 0)
    columns["energy_method"] = _method_column(linelist, config)
    for column in _ref_columns("lower"):
        lo, up = (next(f for f in DATA_FIELDS if f.level == side and f.ref_column == column)
                  for side in ("lower", "upper"))
        codes = refs.codes[record]
        columns[column] = refs.column((0,), np.where(upper, codes[:, up.refs[0]], codes[:, lo.refs[0]])[:, None])
    coupling, description = text("coupling_case"), _used_columns(text("term_desc"))
    molecule = (values["species_id"][record] >= 10000) | (coupling == np.frombuffer(b"Ha", np.uint8)).all(1) \
        | (coupling == np.frombuffer(b"Hb", np.uint8)).all(1)
    split = DescriptionSplit(description, molecule)
    columns["term_desc"] = Column("chars", description, strip="right")
    columns["config"] = Column("chars", description, null=~split.has_config, span=split.config)
    columns["term"] = Column("chars", description, null=~split.has_stored_term, span=split.stored_term)
    # the quantum numbers: decoded once per distinct (coupling, molecule, term, and the
    # configuration where the coupling reads it), not once per description
    needs_config = split.needs_config(coupling)[:, None]
    key = np.concatenate([coupling, molecule[:, None].astype(np.uint8),
                          np.where(needs_config, split.masked(split.config), 0),
                          split.aligned(split.decoded_term(coupling, molecule))], axis=1)
    first, inverse = unique_rows(key)
    distinct, width, as_text = key[first].tobytes(), key.shape[1], config.rows == TEXT
    decoded = [decoded_quantum_numbers(_widened(distinct[at:at + width]), as_text)
               for at in range(0, len(distinct), width)]
    if as_text:  # one table for all the decoded columns
        columns["qn"] = Column("table", codes=inverse, entries=decoded)
        qn = ["config", "term", "qn"]
    else:
        for i, column in enumerate(DECODED_QN_COLUMNS):
            columns[column] = Column("table", codes=inverse, entries=[values[i] for values in decoded])
        qn = list(LEVEL_QN_COLUMNS)
    names = [c for c in STATE_COLUMNS[len(STATE_SLOTS):] if c not in LEVEL_QN_COLUMNS] + qn
    return render([columns[c] for c in names], len(record), config.rows, len(STATE_SLOTS))


def _used_columns(text: np.ndarray) -> np.ndarray:
    """``text`` without the columns that are blank in every row (a batch's descriptions
    are mostly far shorter than the field's 86 bytes: every step after works on fewer)."""
    filled = np.flatnonzero((text != 32).any(0))
    return text[:, :filled[-1] + 1 if len(filled) else 1]


def _widened(key: bytes) -> bytes:
    """A decoding key of a narrowed batch as the full field width gives it: the key of
    the same level is the same bytes in every batch (decoded_quantum_numbers' cache)."""
    width = (len(key) - 3) // 2
    return key[:3] + key[3:3 + width].ljust(TERM_WIDTH, b"\0") + key[3 + width:].ljust(TERM_WIDTH, b"\0")


class DescriptionSplit:
    """split_description() of a matrix of level descriptions: the configuration and the
    term of each as [start, stop) byte spans (the first blank not preceded by a
    backslash divides them). A molecule's description without a blank has no
    configuration: it is all term (stored_term), which decoding reads whole."""

    def __init__(self, description: np.ndarray, molecule: np.ndarray):
        width = description.shape[1]
        position = np.arange(width)
        filled = description != 32
        anything = filled.any(1)
        first = np.argmax(filled, axis=1)
        last = width - 1 - np.argmax(filled[:, ::-1], axis=1)
        after_backslash = np.zeros_like(filled)
        after_backslash[:, 1:] = description[:, :-1] == 92
        blank = ~filled & ~after_backslash & (position > first[:, None]) & (position < last[:, None])
        split = blank.any(1)
        at = np.where(split, np.argmax(blank, axis=1), last + 1)
        term_start = np.argmax(filled & (position > at[:, None]), axis=1)
        self.width, self.description = width, description
        self.has_config = anything & ~(molecule & ~split)
        self.has_term = anything & split
        self.config = (first, np.where(anything, at, first))
        self.term = (np.where(split, term_start, last + 1), last + 1)
        whole = anything & molecule & ~split
        self.has_stored_term = self.has_term | whole
        self.stored_term = (np.where(whole, first, self.term[0]), self.term[1])

    def masked(self, span) -> np.ndarray:
        """The bytes of ``span`` of each description, zeros elsewhere."""
        position = np.arange(self.width)
        inside = (position >= span[0][:, None]) & (position < span[1][:, None])
        return np.where(inside, self.description, 0)

    def aligned(self, span) -> np.ndarray:
        """The bytes of ``span`` of each description moved to its start, zeros after."""
        at = span[0][:, None] + np.arange(self.width)
        inside = at < span[1][:, None]
        return np.where(inside, np.take_along_axis(self.description, np.minimum(at, self.width - 1), 1), 0)

    def decoded_term(self, coupling: np.ndarray, molecule: np.ndarray) -> tuple:
        """The span of each term that decoding reads: an atom's LS term from its
        multiplicity on, as _LS_TERM reads it ('2(3D)6F*' and 'z6F*' both '6F*': the label
        before it is not decoded, and a dump has far more labels than terms), any other
        term whole."""
        start, stop = self.term
        text, position, rows = self.description, np.arange(self.width), np.arange(len(start))
        inside = (position >= start[:, None]) & (position < stop[:, None])
        letter = inside & ((text < 48) | (text > 57))  # not a digit
        end = stop - (text[rows, np.maximum(stop - 1, 0)] == ord("*"))
        at_l = np.where(letter & (position < end[:, None]), position, -1).max(1)
        label_end = np.where(letter & (position < at_l[:, None]), position, start[:, None] - 1).max(1)
        ls = (self.has_term & ~molecule & (coupling == np.frombuffer(b"LS", np.uint8)).all(1)
              & np.isin(text[rows, np.maximum(at_l, 0)], np.frombuffer(L_LETTERS.encode(), np.uint8)))
        return np.where(ls, label_end + 1, start), stop

    def needs_config(self, coupling: np.ndarray) -> np.ndarray:
        """Where decode_level reads the configuration too: an atom with no coupling (n=) or
        a JK (Jc) or LK (L) coupling, and a molecule's description without a term."""
        codes = [np.frombuffer(c, np.uint8) for c in (b"  ", b"JK", b"LK")]
        atom_reads = np.any([(coupling == c).all(1) for c in codes], axis=0)
        return atom_reads | ~self.has_term


@functools.lru_cache(maxsize=1 << 14)
def decoded_quantum_numbers(key: bytes, as_text: bool) -> "tuple | _QnText":
    """The values of the DECODED_QN_COLUMNS of a level, or their COPY text: ``key`` is
    its coupling (2 bytes), whether it is a molecule's (1), its configuration (TERM_WIDTH,
    zeros when decoding does not read it) and its term (TERM_WIDTH)."""
    coupling = key[:2].decode().strip() or None
    config = key[3:3 + TERM_WIDTH].replace(b"\0", b"").decode().strip() or None
    term = key[3 + TERM_WIDTH:].replace(b"\0", b"").decode().strip() or None
    molecule = key[2] == 1
    if term is None:
        description = config
    else:
        description = f"{config or 'x'} {term}"  # a configuration decoding does not read
    values = decode_level(coupling, description, molecule)[2:]
    return _QnText(b"\t".join([NULL if v is None else _copy_text(v) for v in values])) if as_text else values


class _QnText(bytes):
    """Already COPY text (several columns): _copy_text leaves it as it is."""


# ---------------------------------------------------------------- stream ----

HEAD_BYTES = 1 << 16
BLOCK_BYTES = 8 << 20  # read at a time; a batch of 5 000 records is about 2 MB
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
        with self._errors():
            yield from self._stream

    def blocks(self, size: int = BLOCK_BYTES):
        """The input in blocks of ``size`` bytes (the last one shorter)."""
        with self._errors():
            while block := self._stream.read(size):
                yield block

    @contextlib.contextmanager
    def _errors(self):
        try:
            yield
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as error:
            raise UsageError(
                f"cannot read {self.name} ({self.compression or 'plain'}): {error}; the input "
                "is damaged or truncated: fix it, then rerun to resume") from None


def checkpoint_offsets():
    """The offsets at which a run records the digest of its input so far: 4 KiB, 5, 6, 7,
    8, 10, 12, 14, 16 KiB ..., four per doubling. A later input that ends anywhere inside
    what the run committed is compared with it up to its last checkpoint, at least 4/5
    of its length, and is a part of it when they agree."""
    size = 4096
    while True:
        for quarters in (4, 5, 6, 7):
            yield size * quarters // 4
        size *= 2


class InputDigest:
    """SHA-256 of the input read so far, and at each checkpoint offset it passed."""

    def __init__(self):
        self.sha, self.length, self.checkpoints = hashlib.sha256(), 0, {}
        self._offsets = checkpoint_offsets()
        self._next = next(self._offsets)

    def update(self, data: bytes):
        start, end = self.length, self.length + len(data)
        while self._next <= end:
            self.sha.update(data[self.length - start:self._next - start])
            self.length = self._next
            self.checkpoints[self._next] = self.sha.hexdigest()
            self._next = next(self._offsets)
        self.sha.update(data[self.length - start:])
        self.length = end


@dataclass
class Batch:
    """Consecutive physical lines, ending at a record boundary."""

    first_line: int
    data: bytes
    line_count: int
    end_offset: int  # bytes of the (decompressed) input up to the end of this batch
    sha256: str  # digest of the input up to end_offset
    checkpoints: dict = field(default_factory=dict)  # offset -> digest, up to end_offset
    cut: bool = False  # the input's last record, without an end of line: maybe cut off

    @property
    def last_line(self) -> int:
        return self.first_line + self.line_count - 1

    @property
    def committed_line(self) -> int:
        """The last line that committing this batch covers (with end_offset and sha256)."""
        return self.first_line - 1 if self.cut else self.last_line


def read_batches(blocks, batch_size: int, stop_at: int | None = None):
    """Batches of ``batch_size`` records from blocks of input, never separating a data line
    from its reference line (a batch ends before a line that does not start with a
    lowercase letter, a record start).

    With ``stop_at``, a batch also ends exactly at that byte offset; a line crossing it,
    or an input that ends before it, raises PrefixMismatch.

    A last record without an end of line may be cut off (a download that stopped): it
    comes alone, in a batch marked ``cut``, and its bytes are never committed, so that
    once the whole dump is there, a rerun continues at its first line.
    """
    digest = InputDigest()
    offset, number, records, partial, pending = 0, 1, 0, b"", []
    for block in itertools.chain(blocks, [None]):
        if block is None:
            chunk, partial = partial, b""
        else:
            data = partial + block
            end = data.rfind(b"\n") + 1
            chunk, partial = data[:end], data[end:]
        if chunk:
            buf = np.frombuffer(chunk, np.uint8)
            starts = np.concatenate([[0], np.flatnonzero(buf[:-1] == 10) + 1])
            record = ~_LOWERCASE[buf[starts]]
            base = offset + sum(map(len, pending))  # input offset of chunk[0]
            stop = None if stop_at is None else stop_at - base
            if stop is not None and 0 < stop < len(chunk) and not (starts == stop).any():
                raise PrefixMismatch(number + sum(p.count(b"\n") for p in pending)
                                     + chunk.count(b"\n", 0, stop))
            cuts, records, stop = _batch_cuts(starts, record, records, batch_size, stop, len(chunk))
            done = 0
            for cut in cuts:
                if cut > done or pending:
                    pending.append(chunk[done:cut])
                    data = b"".join(pending)
                    pending = []
                    offset += len(data)
                    yield _batch(digest, number, data, offset)
                    number += data.count(b"\n")
                done = cut
            if stop:
                stop_at = None
            pending.append(chunk[done:])
        if stop_at is not None and offset + sum(map(len, pending)) >= stop_at:
            raise PrefixMismatch(number + sum(p.count(b"\n") for p in pending))
        if block is None:
            data = b"".join(pending)
            cut = _cut_record(data)
            if cut:
                yield _batch(digest, number, data[:cut], offset + cut)
                number += data.count(b"\n", 0, cut)
            if cut < len(data):
                yield Batch(number, data[cut:], data[cut:].count(b"\n") + 1, digest.length,
                            digest.sha.hexdigest(), dict(digest.checkpoints), cut=True)
            if stop_at is not None:  # the input ended first: maybe a part of an earlier one
                raise PrefixMismatch(number + data.count(b"\n", cut), ended=True)
            return


def _batch_cuts(starts, record, records, batch_size, stop, length):
    """(cut offsets in a chunk of whole lines, record starts in the batch left open,
    whether ``stop`` was reached): a cut before every record start that would be record
    batch_size + 1 of its batch, and one at ``stop`` (a chunk offset) after which counting
    starts again."""
    if stop is not None and 0 < stop <= length:
        before = starts < stop
        cuts, records, _ = _batch_cuts(starts[before], record[before], records, batch_size, None, stop)
        after, records, _ = _batch_cuts(starts[~before], record[~before], 0, batch_size, None, length)
        return cuts + [stop] + after, records, True
    ordinal = records + np.cumsum(record)
    cut = record & (ordinal > batch_size) & ((ordinal - 1) % batch_size == 0)
    cuts = starts[cut].tolist()
    if cuts:
        records = int((ordinal - ordinal[np.flatnonzero(cut)[-1]] + 1)[-1])
    elif len(ordinal):
        records = int(ordinal[-1])
    return cuts, records, False


def _cut_record(data: bytes) -> int:
    """Where the input's last record begins when its last line has no end of line (it may
    be cut off), else len(data): the last data line, with the reference line after it."""
    if not data or data.endswith(b"\n"):
        return len(data)
    start = data.rfind(b"\n") + 1
    if 97 <= data[start] <= 122 and start:  # a reference line: its data line comes with it
        start = data.rfind(b"\n", 0, start - 1) + 1
    return start


def _batch(digest, number, data, offset):
    digest.update(data)
    return Batch(number, data, data.count(b"\n"), offset, digest.sha.hexdigest(), dict(digest.checkpoints))


class UncheckedTail:
    """The lines of an input after its last checkpoint (see is_part_of), whose digest was
    never recorded: an input that ends inside what a run committed is a part of that
    run's input only if each of these records is stored as it reads here."""

    LIMIT = 64 << 20  # bytes kept; a longer tail cannot be checked

    def __init__(self):
        self.batches, self.previous, self.checkpoints, self.too_long = [], None, 0, False

    def add(self, batch: Batch):
        if len(batch.checkpoints) > self.checkpoints:  # the last checkpoint so far is in this batch
            # with the batch before: the line it falls in may be a reference line that begins it
            self.batches, self.checkpoints, self.too_long = [self.previous] * bool(self.previous), \
                len(batch.checkpoints), False
        self.previous = batch
        if self.too_long:
            return
        self.batches.append(batch)
        if sum(len(b.data) for b in self.batches) > self.LIMIT:
            self.batches, self.too_long = [], True

    def records(self):
        """(line number, data line, reference line or None) from the line the last
        checkpoint falls in (from its data line when that is a reference line)."""
        data = b"".join(b.data for b in self.batches)
        checkpoint = max(self.batches[-1].checkpoints, default=0) - (self.batches[-1].end_offset - len(data))
        start = data.rfind(b"\n", 0, max(checkpoint, 0)) + 1
        if 0 < start < len(data) and _LOWERCASE[data[start]]:
            start = data.rfind(b"\n", 0, start - 1) + 1
        lines = data[start:].splitlines(keepends=True)
        number = self.batches[0].first_line + data.count(b"\n", 0, start)
        for i, line in enumerate(lines):
            if not _LOWERCASE[line[0]]:
                ref = lines[i + 1] if i + 1 < len(lines) and _LOWERCASE[lines[i + 1][0]] else None
                yield number + i, line, ref

    def check_stored(self, using: str, config: "ParseConfig", skip_header: int):
        """Raise PrefixMismatch at the first record that is not stored as it reads here
        (a line rejected here stores nothing either way)."""
        if self.too_long:
            raise UsageError(f"the input ends inside what an earlier run imported, but its last lines, "
                             f"after the last digest that run recorded, are too many to compare with the "
                             f"database (over {self.LIMIT:,} bytes): {option('restart')} adds all of it as "
                             f"a new run, {option('clear')} replaces what is imported with it")
        for number, data, ref in self.records() if self.batches else ():
            if number <= skip_header or data.startswith(b"#") or not data.strip():
                continue
            try:
                check_complete(data, ref)
                record = oracle_record(data, ref, config)
            except RejectedLine:
                continue
            if not transition_is_stored(using, record):
                raise PrefixMismatch(number)


def transition_is_stored(using: str, record: Record) -> bool:
    """A transition with these levels and the values the dump gives (not those computed
    or set by the line lists) is stored."""
    from node_atom.models import State, Transition
    levels = [State.objects.using(using).filter(
        species_id=level["species_id"], energy_scaled=level["energy_scaled"],
        J_scaled=level["J_scaled"]).values_list("id", flat=True).first()
        for level in (record.lower, record.upper)]
    given = {column: value for column, value in record.transition.items()
             if column not in ("einsteina", "wave_method")}
    return None not in levels and Transition.objects.using(using).filter(
        lostate_id=levels[0], upstate_id=levels[1], **given).exists()


class PrefixMismatch(Exception):
    """The input does not continue the way the run being compared with did (``ended``: it
    ended before the position compared, so it may be a part of that run's input)."""

    def __init__(self, line, ended=False):
        super().__init__(line)
        self.line, self.ended = line, ended


# ----------------------------------------------------------------- write ----

class Dialect:
    """The SQL that differs between the engines: quoting, types, and the statements that
    verify, rollback, housekeeping and the line lists use."""

    vendor = None
    float_type = "double precision"  # CAST target for arithmetic on decimal columns
    truncate = "TRUNCATE TABLE"

    def __init__(self, alias: str = DEFAULT_DB_ALIAS):
        self.alias = alias
        self.connection = connections[alias]

    @staticmethod
    def for_alias(alias: str = DEFAULT_DB_ALIAS) -> "Dialect":
        return _engine_class(alias, (SQLiteDialect, PostgresDialect, MySQLDialect))(alias)

    def q(self, name: str) -> str:
        return self.connection.ops.quote_name(name)

    def cols(self, columns, prefix="") -> str:
        return ", ".join(prefix + self.q(c) for c in columns)

    def analyze_sql(self, tables) -> list[str]:
        return [f"ANALYZE {self.cols(tables)}"]

    def update_from_linelists_sql(self, table, target, source) -> str:
        """UPDATE ``table`` SET ``target`` = linelists.method joined on ``source``, where it differs."""
        t, l, q = self.q(table), self.q("linelists"), self.q
        return (f"UPDATE {t} SET {q(target)} = l.method FROM {l} l "
                f"WHERE l.id = {t}.{q(source)} AND {t}.{q(target)} IS DISTINCT FROM l.method")

    def create_indexes_sql(self, model, indexes, editor) -> list[str]:
        """The statements that build ``indexes`` of a loaded table, the engine's fastest way."""
        return [str(index.create_sql(model, editor)) for index in indexes]

    def unused_level(self, alias: str) -> str:
        """SQL: level ``alias`` is used by no transition (an anti-join, not a per-row scan:
        transitions.upstate and lostate have no index)."""
        return (f"{alias}.id NOT IN (SELECT upstate FROM transitions) "
                f"AND {alias}.id NOT IN (SELECT lostate FROM transitions)")


def _engine_class(alias, classes):
    vendor = connections[alias].vendor
    for cls in classes:
        if cls.vendor == vendor:
            return cls
    raise UsageError(f"unsupported database engine {vendor!r}: use SQLite, PostgreSQL or MySQL")


class SQLiteDialect(Dialect):
    vendor = "sqlite"
    truncate = "DELETE FROM"  # SQLite empties a table without a WHERE quickly
    float_type = "REAL"

    def analyze_sql(self, tables):
        # a sample of each index, as PostgreSQL and MySQL take: a full ANALYZE of
        # 255 million rows would read every index to the end
        return ["PRAGMA analysis_limit=10000", "ANALYZE"]

    def update_from_linelists_sql(self, table, target, source):
        return super().update_from_linelists_sql(table, target, source).replace(
            "IS DISTINCT FROM", "IS NOT")

    def create_indexes_sql(self, model, indexes, editor):
        # the sorter may use a second thread (a larger page cache did not help: measured),
        # and spills to a file: in memory, its runs would grow with the table
        return ["PRAGMA threads=2", "PRAGMA temp_store=FILE",
                *super().create_indexes_sql(model, indexes, editor)]


class PostgresDialect(Dialect):
    vendor = "postgresql"

    def create_indexes_sql(self, model, indexes, editor):
        # the default 64 MB sorts a large table's index in many runs on disk
        return ["SET LOCAL maintenance_work_mem = '512MB'",
                *super().create_indexes_sql(model, indexes, editor)]

    def unused_level(self, alias):
        # a hashed anti-join; NOT IN (subquery) would rescan when it outgrows work_mem
        return (f"NOT EXISTS (SELECT 1 FROM transitions t WHERE t.upstate = {alias}.id) "
                f"AND NOT EXISTS (SELECT 1 FROM transitions t WHERE t.lostate = {alias}.id)")


class MySQLDialect(Dialect):
    vendor = "mysql"
    float_type = "DOUBLE"

    def analyze_sql(self, tables):
        return [f"ANALYZE TABLE {self.cols(tables)}"]

    def create_indexes_sql(self, model, indexes, editor):
        # one ALTER TABLE reads the table once for all of them
        table = model._meta.db_table
        adds = ", ".join(f"ADD INDEX {self.q(index.name)} "
                         f"({self.cols(model._meta.get_field(f).column for f in index.fields)})"
                         for index in indexes)
        return [f"ALTER TABLE {self.q(table)} {adds}"]

    def update_from_linelists_sql(self, table, target, source):
        t, q = self.q(table), self.q
        return (f"UPDATE {t} JOIN {q('linelists')} l ON l.id = {t}.{q(source)} "
                f"SET {t}.{q(target)} = l.method WHERE NOT ({t}.{q(target)} <=> l.method)")


class Writer:
    """Bulk writes through one Django connection (raw DB-API cursors, no query logging):
    the rows a parsed batch carries, in the form its engine loads fastest (``rows``)."""

    vendor = None
    rows = TUPLES
    placeholder = "%s"

    def __init__(self, alias: str = DEFAULT_DB_ALIAS):
        self.alias = alias
        self.connection = connections[alias]
        self.dialect = Dialect.for_alias(alias)
        self._species = None
        self._prepared_for = None

    @staticmethod
    def for_alias(alias: str = DEFAULT_DB_ALIAS) -> "Writer":
        """The writer class of the engine behind ``alias``."""
        return _engine_class(alias, (SQLiteWriter, PostgresWriter, MySQLWriter))(alias)

    def cursor(self):
        """A raw cursor; it takes part in the current Django transaction."""
        self.connection.ensure_connection()
        if self._prepared_for is not self.connection.connection:
            self._prepare_connection()
            self._prepared_for = self.connection.connection
        return self.connection.connection.cursor()

    def _prepare_connection(self):
        """Per-connection settings for the import."""

    def insert_rows(self, cursor, table: str, columns, rows: list):
        """Insert tuples in ``columns`` order (mysqlclient makes multi-row INSERTs of them)."""
        marks = ", ".join([self.placeholder] * len(columns))
        cursor.executemany(f"INSERT INTO {self.dialect.q(table)} ({self.dialect.cols(columns)}) "
                           f"VALUES ({marks})", rows)

    def insert_levels(self, cursor, rows: "TextRows | ColumnRows", ids: np.ndarray, run_id: int):
        """Insert level rows (STATE_COLUMNS) with their ids."""
        self._insert(cursor, "states", STATE_COLUMNS, rows, ids, run_id)

    def insert_transitions(self, cursor, rows: "TextRows | ColumnRows", lower: np.ndarray,
                           upper: np.ndarray, run_id: int):
        """Insert transition rows (TRANSITION_COLUMNS) with their level ids."""
        self._insert(cursor, "transitions", TRANSITION_COLUMNS, rows, lower, upper, run_id)

    def _insert(self, cursor, table, columns, rows, *slots):
        """Insert parsed rows, led by the ``slots`` values (arrays or one value for every row)."""
        raise NotImplementedError

    def level_index(self) -> tuple["LevelKeys", int]:
        """(every stored level key -> state id, the next free state id), read in id order
        a slice at a time."""
        index, last, step = LevelKeys(), 0, 200_000
        q = self.dialect.q
        with self.connection.cursor() as cursor:
            while True:
                cursor.execute(f"SELECT species_id, energy_scaled, {q('J_scaled')}, id FROM states "
                               f"WHERE id > %s ORDER BY id LIMIT {step}", [last])
                rows = np.array(cursor.fetchall(), dtype=np.int64).reshape(-1, 4)
                if not len(rows):
                    return index, last + 1
                index.add(level_keys(rows[:, 0], rows[:, 1], rows[:, 2]), rows[:, 3])
                last = int(rows[-1, 3])

    def sync_sequence(self):
        """After levels were stored with ids of the importer's own: the next id the database
        gives is past them (PostgreSQL's sequence does not follow explicit ids by itself)."""

    def missing_species(self, cursor, ids) -> list[int]:
        """Species indexes of ``ids`` absent from the species table (they get placeholder rows)."""
        if self._species is None:
            cursor.execute(f"SELECT id FROM {self.dialect.q('species')}")
            self._species = {row[0] for row in cursor.fetchall()}
        return sorted(set(ids) - self._species)

    def create_species(self, cursor, ids):
        """Placeholder species rows (name NULL) for ``ids``; remembered once committed."""
        self.insert_rows(cursor, "species", ("id",), [(i,) for i in ids])
        transaction.on_commit(lambda: self._species.update(ids), using=self.alias)

    def start_import(self):
        """Engine settings for the duration of an import (outside any transaction)."""

    def end_import(self):
        """Undo start_import."""

    def clear_table(self, table: str):
        with self.connection.cursor() as cursor:
            cursor.execute(f"{self.dialect.truncate} {self.dialect.q(table)}")

    def start_fast(self, tables):
        """--fast: skip what only protects against crashes while ``tables`` are loaded."""

    def end_fast(self, tables):
        """Undo start_fast: the tables are crash-safe again."""


TRANSIENT, REFUSED, FATAL = "transient", "refused", "fatal"
MYSQL_TRANSIENT = {1040, 1053, 1205, 1213, 1927, 2002, 2003, 2006, 2013, 2055, 4031}


def driver_error(error: BaseException) -> BaseException:
    """The driver's exception under Django's wrappers (and under its migration errors)."""
    while type(error).__module__.startswith("django") and (error.__cause__ or error.__context__):
        error = error.__cause__ or error.__context__
    return error


def read_only(error: BaseException) -> bool:
    """The database refuses to be written at all: a read-only file, server or transaction,
    or a user without the privilege."""
    error = driver_error(error)
    module = type(error).__module__
    if module.startswith("sqlite3"):
        return "readonly" in str(error)
    if module.startswith("MySQLdb"):  # --read-only, read-only transaction, no privilege
        return bool(error.args) and error.args[0] in (1290, 1792, 1142, 1044)
    return getattr(error, "pgcode", None) in ("25006", "42501")  # read-only, no privilege


def error_kind(error: BaseException) -> str:
    """How to handle a database error: TRANSIENT (retry the batch on a fresh connection),
    REFUSED (the rows: isolate and reject them) or FATAL (stop the run)."""
    error = driver_error(error)
    if isinstance(error, RowsRefused):
        return REFUSED
    if read_only(error):
        return FATAL
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
    """executemany straight from the batch's columns, several rows per INSERT (a fifth
    faster than one: SQLite's per-statement work is shared)."""

    vendor = "sqlite"
    placeholder = "?"
    ROWS_PER_INSERT = 50
    ROWS_PER_CALL = 1000  # the Python values of this many rows at a time
    WAL_PAGES = 20000
    # Checkpoint every 80 MB of WAL, not 4: every batch rewrites most pages of the
    # levels' unique index (its keys arrive in random order), and a checkpoint copies
    # each page once however often it was rewritten (2.3 of 20 s saved on the
    # benchmark's million-level dump).
    PRAGMAS = ("synchronous=NORMAL", "cache_size=-16384", "temp_store=MEMORY",  # 16 MB of pages
               f"wal_autocheckpoint={WAL_PAGES}")

    def _insert(self, cursor, table, columns, rows, *slots):
        width = len(columns)
        per = max(1, min(self.ROWS_PER_INSERT, self._variables() // width))
        head = f"INSERT INTO {self.dialect.q(table)} ({self.dialect.cols(columns)}) VALUES "
        row = "(" + ", ".join("?" * width) + ")"
        for start in range(0, len(rows), self.ROWS_PER_CALL):
            part = slice(start, start + self.ROWS_PER_CALL)  # a slice: views
            values = rows.take(part).flat(*(s[part] if np.ndim(s) else s for s in slots))
            count = len(values) // width
            whole, step = count // per * per, per * width
            if whole:
                cursor.executemany(head + ", ".join([row] * per),
                                   (values[at:at + step] for at in range(0, whole * width, step)))
            if whole < count:
                cursor.execute(head + ", ".join([row] * (count - whole)), values[whole * width:])

    def _variables(self) -> int:
        import sqlite3
        return self.connection.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)

    _synchronous = None  # the connection's setting before the import

    def start_import(self):
        # WAL: each batch commit is atomic and survives a crash of the process
        # (synchronous=NORMAL, set per connection); only a power cut can lose the
        # last commits. The journal mode stays WAL after the import.
        # A connection a retry opens is tuned as Django opens it: by the time the
        # writer sees it, Django has begun a transaction, inside which SQLite refuses
        # to change the safety level or the temp store.
        self.cursor().execute("PRAGMA journal_mode=WAL")
        connection_created.connect(self._tune_opened, weak=False, dispatch_uid=id(self))

    def _tune_opened(self, sender, connection, **kwargs):
        if connection.alias == self.alias:
            self._tune(connection.connection)

    def _tune(self, raw):
        if self._synchronous is None:
            self._synchronous = raw.execute("PRAGMA synchronous").fetchone()[0]
        for pragma in self.PRAGMAS:
            raw.execute("PRAGMA " + pragma)

    def _prepare_connection(self):
        raw = self.connection.connection
        if not raw.in_transaction:  # else _tune_opened did it
            self._tune(raw)

    def end_import(self):
        connection_created.disconnect(dispatch_uid=id(self))
        raw = self.connection.connection
        if raw is not None and self._synchronous is not None and not raw.in_transaction:
            raw.execute(f"PRAGMA synchronous={int(self._synchronous)}")
            raw.execute("PRAGMA wal_autocheckpoint=1000")  # SQLite's default

    def start_fast(self, tables):
        # No journal: a crash in the middle can corrupt the database file.
        self.cursor().execute("PRAGMA journal_mode=OFF")
        self.connection.connection.execute("PRAGMA synchronous=OFF")

    def end_fast(self, tables):
        self.cursor().execute("PRAGMA journal_mode=WAL")
        self.connection.connection.execute("PRAGMA synchronous=NORMAL")


class PostgresWriter(Writer):
    """COPY in text format, the text built by the parser for the whole batch."""

    vendor = "postgresql"
    rows = TEXT

    def _insert(self, cursor, table, columns, rows, *slots):
        if not len(rows):
            return
        for slot, values in enumerate(slots):
            rows.fill(slot, values)
        sql = f"COPY {self.dialect.q(table)} ({self.dialect.cols(columns)}) FROM STDIN"
        if hasattr(cursor, "copy_expert"):  # psycopg2
            cursor.copy_expert(sql, _ArrayReader(rows.data))
        else:  # psycopg 3
            with cursor.copy(sql) as copy:
                copy.write(rows.tobytes())

    def insert_rows(self, cursor, table, columns, rows):
        if rows:
            text = b"".join(b"\t".join(_copy_text(v) for v in row) + b"\n" for row in rows)
            cursor.copy_expert(f"COPY {self.dialect.q(table)} ({self.dialect.cols(columns)}) FROM STDIN",
                               io.BytesIO(text))

    def sync_sequence(self):
        from node_atom.models import State
        from django.core.management.color import no_style
        with self.connection.cursor() as cursor:
            for sql in self.connection.ops.sequence_reset_sql(no_style(), [State]):
                cursor.execute(sql)

    def start_fast(self, tables):
        cursor = self.cursor()
        for table in tables:  # not written to the WAL: emptied by crash recovery
            cursor.execute(f"ALTER TABLE {self.dialect.q(table)} SET UNLOGGED")
        cursor.execute("SET synchronous_commit TO off")

    def end_fast(self, tables):
        cursor = self.cursor()
        for table in tables:
            cursor.execute(f"ALTER TABLE {self.dialect.q(table)} SET LOGGED")
        cursor.execute("SET synchronous_commit TO DEFAULT")


class _ArrayReader(io.RawIOBase):
    """A file over a uint8 array, for COPY without a copy of the text."""

    def __init__(self, data: np.ndarray):
        self.view, self.at = memoryview(data).cast("B"), 0

    def readable(self):
        return True

    def readinto(self, buffer):
        n = min(len(buffer), len(self.view) - self.at)
        buffer[:n] = self.view[self.at:self.at + n]
        self.at += n
        return n

    def read(self, size=-1):
        end = len(self.view) if size is None or size < 0 else min(len(self.view), self.at + size)
        data, self.at = self.view[self.at:end].tobytes(), end
        return data


class MySQLWriter(Writer):
    """LOAD DATA LOCAL INFILE of the batch's text, when the server and the connection allow
    it; else multi-row INSERTs (mysqlclient's executemany)."""

    vendor = "mysql"
    rows = TEXT
    LOCAL_REFUSED = {1148, 2068, 3948}  # LOAD DATA LOCAL disabled on the server or the client

    def __init__(self, alias=DEFAULT_DB_ALIAS):
        super().__init__(alias)
        self.load_data = True

    def _insert(self, cursor, table, columns, rows, *slots):
        if not len(rows):
            return
        for slot, values in enumerate(slots):
            rows.fill(slot, values)
        if self.load_data:
            try:
                return self._load_data(cursor, table, columns, rows.data)
            except Exception as error:
                if not (error.args and error.args[0] in self.LOCAL_REFUSED):
                    raise
                self.load_data = False  # not allowed here: INSERT from now on
        self.insert_rows(cursor, table, columns, rows.values())

    def _load_data(self, cursor, table, columns, data: np.ndarray):
        import tempfile
        with tempfile.NamedTemporaryFile(prefix="valdimport-", suffix=".tsv") as f:
            data.tofile(f)
            f.flush()
            # LOCAL turns bad values into warnings: any warning is a refusal of the rows
            cursor.execute(f"LOAD DATA LOCAL INFILE %s INTO TABLE {self.dialect.q(table)} "
                           f"CHARACTER SET utf8mb4 ({self.dialect.cols(columns)})", (f.name,))
        if cursor.connection.warning_count():
            cursor.execute("SHOW WARNINGS LIMIT 1")
            raise RowsRefused(" ".join(map(str, cursor.fetchone()[1:])))

    def start_fast(self, tables):
        # InnoDB may then skip uniqueness checks of secondary indexes: verified after the load
        self.cursor().execute("SET SESSION unique_checks = 0, foreign_key_checks = 0")

    def end_fast(self, tables):
        self.cursor().execute("SET SESSION unique_checks = 1, foreign_key_checks = 1")


class RowsRefused(Exception):
    """The database accepted a bulk load only with warnings: the rows are refused."""


# ----------------------------------------------------------------- cache ----

class LevelKeys:
    """Level keys (complex128, see level_key) in sorted arrays, each with an int (a state id).

    The writer holds one, keys -> state ids of every stored level, for the whole run
    (loaded from the database when a pass starts or resumes). Each parser process holds
    a SentLevels: the levels whose rows it has carried. The contract between them:
    a parsed batch carries the row of every level its parser had not met before, so a
    level the writer does not know is in the batch, unless a batch that carried it
    failed (its rows refused by the database); the writer then parses the batch again,
    carrying everything, to get the row.

    New keys go to a small sorted tail, merged into the main arrays when it grows past a
    quarter of them: a lookup is two searchsorted, adding costs a copy of the tail, and a
    merge a copy of everything, rarely. 24 bytes per key; with another ``dtype`` and no
    ``ids`` (SentLevels), a sorted set.
    """

    def __init__(self, dtype=np.complex128 if np else None, ids: bool = True):
        self.keys = np.zeros(0, dtype)
        self.ids = np.zeros(0, np.int64) if ids else None
        self.tail_keys, self.tail_ids = self.keys, self.ids

    def __len__(self):
        return len(self.keys) + len(self.tail_keys)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The id of each key, -1 where the key is not here."""
        ids = np.full(len(keys), -1, np.int64)
        for stored, stored_ids in ((self.keys, self.ids), (self.tail_keys, self.tail_ids)):
            if len(stored):
                at = np.minimum(np.searchsorted(stored, keys), len(stored) - 1)
                found = stored[at] == keys
                ids[found] = 0 if stored_ids is None else stored_ids[at[found]]
        return ids

    def contains(self, keys: np.ndarray) -> np.ndarray:
        return self.lookup(keys) >= 0

    def all_keys(self) -> np.ndarray:
        return np.concatenate([self.keys, self.tail_keys])

    def add(self, keys: np.ndarray, ids: np.ndarray | None = None):
        """Add keys that are not here yet (ids: 0 when not given)."""
        if not len(keys):
            return
        order = np.argsort(keys, kind="stable")
        if self.ids is not None:
            ids = (np.zeros(len(keys), np.int64) if ids is None else np.asarray(ids, np.int64))[order]
        self.tail_keys, self.tail_ids = _merged(self.tail_keys, self.tail_ids, keys[order], ids)
        if len(self.tail_keys) > max(1 << 16, len(self.keys) // 4):
            self.keys, self.ids = _merged(self.keys, self.ids, self.tail_keys, self.tail_ids)
            self.tail_keys, self.tail_ids = self.keys[:0], None if self.ids is None else self.ids[:0]


def _merged(keys, ids, new_keys, new_ids):
    """Two sorted (keys, ids) pairs as one (ids None: keys only)."""
    at = np.searchsorted(keys, new_keys)
    return np.insert(keys, at, new_keys), None if ids is None else np.insert(ids, at, new_ids)


class SentLevels:
    """The levels whose rows a parser has carried (LevelKeys' ``shipped`` side), as 8-byte
    hashes of their keys: 8 bytes a level, not 24. Should two keys share a hash (odds
    about n²/2⁶⁵: 3·10⁻⁶ for VALD's 10 M levels), the second level's row is left out of
    its batch, and the writer, which does not know that level, parses the batch again
    carrying every row (BatchImport._level_rows)."""

    def __init__(self, hashes: np.ndarray | None = None):
        self.hashes = LevelKeys(np.uint64, ids=False)
        if hashes is not None:
            self.hashes.add(hashes)

    def carry(self, keys: np.ndarray) -> np.ndarray:
        """Which of ``keys`` (distinct) were not carried yet; from now on they are. The
        hashes are looked up sorted: searchsorted is faster for sorted needles."""
        hashes = level_hashes(keys)
        order = np.argsort(hashes)
        ordered = hashes[order]
        new = ~self.hashes.contains(ordered)
        self.hashes.add(ordered[new])
        carried = np.empty(len(keys), bool)
        carried[order] = new
        return carried

    def all_hashes(self) -> np.ndarray:
        return self.hashes.all_keys()


def level_hashes(keys: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each level key (both halves of the complex mixed)."""
    halves = np.ascontiguousarray(keys, np.complex128).view(np.uint64).reshape(-1, 2)
    h = halves[:, 0] * np.uint64(0x9E3779B97F4A7C15) + halves[:, 1]
    h ^= h >> np.uint64(31)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    return h ^ (h >> np.uint64(29))


# --------------------------------------------------------------- options ----

COMMANDS = {
    "import-states": "pass 1: store every distinct level of the dump once",
    "import-transitions": "pass 2: store every transition, linked to its levels",
    "import": "both passes per batch in a single read of the input",
}
WRITES_TRANSITIONS = {"import-transitions", "import"}
COMPANIONS = {
    "import-species": "import the VALD species list (VALD_list_of_species.csv)",
    "import-linelists": "import the line lists (linelists.dat) and apply their methods",
    "import-references": "import the BibTeX references (VALD3_ref.bib) and their XSAMS sources",
    "import-hfs": "import the hyperfine constants (SQLite file with table AB), matched to the levels",
}
OPERATIONS = {
    "verify": "check the database: links, duplicates, derived values, indexes; --file: the dump's counts",
    "check-indexes": "list the declared indexes and constraints missing from the database; --fix creates them",
    "runs": "list the import runs",
    "rollback": "remove the transitions of a run and the levels no other transition uses",
    "housekeeping": "ground states, missing Einstein A and planner statistics, after imports; "
                    "--rebuild-xml: the references' XSAMS sources",
}
IMPORTS = tuple(COMMANDS)
PASS_2 = tuple(c for c in COMMANDS if c in WRITES_TRANSITIONS)
FILE_IMPORTS = IMPORTS + tuple(COMPANIONS)
LOCKING_OPERATIONS = ("rollback", "housekeeping", "check-indexes")  # the operations that write


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


def non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number, 0 or more, not {text}")
    return value


@dataclass(frozen=True)
class Flag:
    """How an option is given to a command (CLI and Django), and to which commands."""

    name: str  # --batch-size
    help: str
    commands: tuple  # those it does something for
    metavar: str | None = None
    type: object = None
    short: str | None = None
    required: bool = False
    help_for: dict = field(default_factory=dict)  # command -> its own help text


def _option(default, name, help, commands, **flag):
    return field(default=default, metadata={"flag": Flag(name, help, tuple(commands), **flag)})


@dataclass
class ImportOptions:
    """The options of every command, each defined once with its default: the CLI and the
    Django commands make their arguments from these fields (for the commands each does
    something for, see Flag), the Python API takes them as keyword arguments."""

    reject_file: str | None = _option(
        None, "--reject-file", "where rejected lines go (default: INPUT.runN.rejects in the working "
        "directory, or beside the SQLite database when it is not writable)", FILE_IMPORTS, metavar="PATH")
    wait: bool = _option(False, "--wait", "when another valdimport command is writing to the database, "
                         "wait for it to finish instead of stopping", [*FILE_IMPORTS, *LOCKING_OPERATIONS],
                         help_for={"check-indexes": "with --fix: when another valdimport command is writing "
                                                    "to the database, wait for it to finish instead of stopping"})
    summary_json: str | None = _option(None, "--summary-json", "also write the summary, with its phases, "
                                       "as JSON to PATH", FILE_IMPORTS, metavar="PATH")
    energy_tolerance: float = _option(1.0, "--energy-tolerance", "largest energy difference (cm-1) between "
                                      "a row and its level", ["import-hfs"], metavar="CM",
                                      type=non_negative_float)
    batch_size: int = _option(5_000, "--batch-size", "records per transaction", [*IMPORTS, "housekeeping"],
                              metavar="N", type=positive_int, help_for={
                                  "housekeeping": "rows per transaction when computing Einstein A"})
    skip_header: int = _option(HEADER_LINES, "--skip-header", "header lines at the top of the dump",
                               [*IMPORTS, "verify"], metavar="N", type=non_negative_int)
    skip_calc: bool = _option(False, "--skip-calc", "do not compute Einstein A (leave it empty)",
                              [*PASS_2, "housekeeping"],
                              help_for={"housekeeping": "do not compute missing Einstein A"})
    restart: bool = _option(False, "--restart", "import the whole input as a new run, ignoring earlier "
                            "runs on it", IMPORTS)
    append: bool = _option(False, "--append", "add this input's transitions to tables that hold another "
                           "input's (a dump in several pieces)", PASS_2)
    max_errors: int | None = _option(None, "--max-errors", "stop (after committing what is good) once N "
                                     "lines were rejected", IMPORTS, metavar="N", type=positive_int)
    retries: int = _option(5, "--retries", "retries of a batch after a lost connection, deadlock or lock, "
                           "waiting longer each time", IMPORTS, metavar="N", type=non_negative_int)
    workers: int | None = _option(None, "--workers", "processes that parse while the main one writes "
                                  "(default: one less than the cores, at least 1; 0: parse in the main "
                                  "process)", [*IMPORTS, "verify"], metavar="N", type=non_negative_int,
                                  help_for={"verify": "processes that parse the dump (default: one less "
                                                      "than the cores, at least 1)"})
    dry_run: bool = _option(False, "--dry-run", "parse and check everything, write the reject file; "
                            "touch no table", IMPORTS)
    fast: bool = _option(False, "--fast", "first load into emptied tables: indexes built after, no crash "
                         "safety until the end (needs --clear)", IMPORTS)
    clear: bool = _option(False, "--clear", "empty the tables this command fills (and their runs) first",
                          IMPORTS)
    verify: bool = _option(False, "--verify", "run verify at the end (with the dump's counts when it is a "
                           "file); exit 1 when a check fails", PASS_2)  # after pass 1 alone it would fail
    skip_housekeeping: bool = _option(False, "--skip-housekeeping", "leave out the housekeeping after the "
                                      "import (ground states, missing Einstein A, statistics); run the "
                                      "housekeeping command later", IMPORTS)
    fix: bool = _option(False, "--fix", "create the missing ones", ["check-indexes"])
    limit: int | None = _option(None, "--limit", "only the last N runs", ["runs"], metavar="N",
                                type=positive_int)
    run: int | None = _option(None, "--run", "the run to roll back (see the runs command)", ["rollback"],
                              metavar="ID", type=positive_int, required=True)
    rebuild_xml: bool = _option(False, "--rebuild-xml", "regenerate the XSAMS source of every reference "
                                "first (after VALD_NODE_ID changed)", ["housekeeping"])
    # chosen by the caller, not flags: the CLI and the Django commands set them
    progress: bool = False  # a progress bar on stderr
    confirm: object = None  # see confirmed(): None, True, or a function that asks

    CONTENT_OPTIONS = ("skip_header",)  # options a run must share to continue another

    @classmethod
    def from_mapping(cls, values: dict) -> "ImportOptions":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})

    @staticmethod
    def flags(command: str) -> list:
        """(field, Flag) of the options ``command`` takes, in the order of --help."""
        return [(f, f.metadata["flag"]) for f in fields(ImportOptions)
                if "flag" in f.metadata and command in f.metadata["flag"].commands]


FRONT_END_OPTIONS = {  # the options the front ends add: how Python callers say the same
    "file": "a path as the source", "yes": "confirm=True", "database_url": "the DATABASES setting",
}


def python_option(name: str) -> str:
    """An option as a Python caller gives it: ``clear=True``, ``skip_header``."""
    if name in FRONT_END_OPTIONS:
        return FRONT_END_OPTIONS[name]
    return f"{name}=True" if ImportOptions.__dataclass_fields__[name].default is False else name


def confirmed(confirm, question: str, what: str):
    """Go on only with a confirmation: ``confirm`` is True (given beforehand, as --yes), or a
    function that asks ``question`` and returns True or False (None: it could not ask).
    The default, None, asks nothing: it raises ConfirmationRequired, naming ``what``."""
    answer = confirm(question) if callable(confirm) else confirm
    if answer is True:
        return
    if answer is False and callable(confirm):
        raise NotConfirmed("not confirmed: nothing was changed")
    raise ConfirmationRequired(f"{what} and needs a confirmation, and none could be asked for: "
                               f"add {option('yes')} to run it unattended")


# -------------------------------------------------------------- database ----

def _first_line(error) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _one_line(error) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


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


SUPPORTED_ENGINES = {"django.db.backends.sqlite3", "django.db.backends.postgresql",
                     "django.db.backends.mysql"}
DRIVERS = {  # engine -> (the modules that can drive it, the extra that installs one, its package)
    "django.db.backends.postgresql": (("psycopg2", "psycopg"), "postgres", "psycopg2-binary"),
    "django.db.backends.mysql": (("MySQLdb",), "mysql", "mysqlclient"),
}
DRIVER_BUILD = {"mysql": "; it compiles against the MariaDB client library (Debian/Ubuntu: "
                         "apt-get install pkg-config libmariadb-dev first)"}


def require_driver(engine: str):
    """Refuse an engine whose driver is not installed, naming the extra that installs it
    (the base install is what SQLite needs: no driver that compiles)."""
    import importlib
    modules, extra, package = DRIVERS.get(engine, ((), None, None))
    reasons = []
    for module in modules:
        try:
            importlib.import_module(module)
            return
        except ImportError as error:
            reasons.append(_first_line(error))
    if modules:  # the first module's reason: the one the extra installs
        raise MissingDriver(f"{extra} needs the database driver {package}, which is not installed "
                            f"({reasons[0]}): pip install 'valdimport[{extra}]' (in a checkout: "
                            f"pip install -e '.[{extra}]'){DRIVER_BUILD.get(extra, '')}")


def connect_database(using: str = DEFAULT_DB_ALIAS):
    """The connection of ``using``, checked to answer (else one clear line)."""
    from django.core.exceptions import ImproperlyConfigured
    require_driver(connections.settings[using]["ENGINE"])
    try:
        connection = connections[using]
        connection.ensure_connection()
    except ImproperlyConfigured as error:
        reason = " ".join(str(error).split())  # Django's hint is on a second line
        raise UsageError(f"cannot use the database: {reason}") from None
    except Exception as error:
        raise UsageError(f"cannot connect to {describe_database(using)}: {_first_line(error)}; "
                         f"is the server running, and is {option('database_url')} right?") from None
    return connection


def prepare_database(using: str = DEFAULT_DB_ALIAS, retries: int = 5):
    """Check that the database answers and create or migrate the schema when needed (the
    import commands do, holding the database's lock)."""
    plan = _migration_plan(connect_database(using))
    if plan:
        from django.core.management import call_command
        with_retries(using, retries, lambda: call_command(
            "migrate", database=using, interactive=False, verbosity=0))


def require_schema(using: str = DEFAULT_DB_ALIAS):
    """The operations never create a database or its tables: they refuse one without them
    (a mistyped SQLite path or database name, say)."""
    require_driver(connections.settings[using]["ENGINE"])
    settings = connections[using].settings_dict
    name = str(settings["NAME"])
    if (connections[using].vendor == "sqlite" and name not in ("", ":memory:")
            and not name.startswith("file:") and not os.path.exists(name)):
        raise UsageError(f"there is no SQLite database {name}: check {option('database_url')} "
                         "(the import commands create it)")
    connection = connect_database(using)
    if _migration_plan(connection):
        from django.db.migrations.recorder import MigrationRecorder
        if not MigrationRecorder(connection).applied_migrations():
            raise UsageError(f"{describe_database(using)} holds no valdimport tables: check "
                             f"{option('database_url')} (the import commands create them)")
        raise UsageError(f"the tables of {describe_database(using)} are older than this "
                         "valdimport: an import command (or manage.py migrate) updates them")


def _migration_plan(connection) -> list:
    from django.db.migrations.executor import MigrationExecutor
    executor = MigrationExecutor(connection)
    return executor.migration_plan(executor.loader.graph.leaf_nodes())


@contextlib.contextmanager
def writable(using: str):
    """A database that refuses to be written (a read-only file, server or transaction) is
    a matter of configuration: one clear line, exit 2, not a failure to resume."""
    try:
        yield
    except Exception as error:
        if not read_only(error):
            raise
        raise UsageError(f"cannot write to {describe_database(using)}: {_first_line(driver_error(error))}; "
                         "make it writable (file permissions, the server's read-only mode, "
                         f"the user's privileges) or choose another with {option('database_url')}") from error


RETRY_DELAY = 0.5  # seconds before the first retry; doubled for each further one
LOCK_POLL = 1.0  # seconds between tries of a command that waits for the lock (--wait)
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"valdimport").digest()[:8], "big", signed=True)
_held_locks = {}  # alias -> the DatabaseLock this process holds


def _now():
    from django.utils import timezone
    return timezone.now()


def _host():
    return socket.gethostname()[:255]


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


class DatabaseLock:
    """One valdimport command at a time writes to a database, from its start (the schema
    created or migrated) to its end.

    PostgreSQL: a session advisory lock; MySQL: GET_LOCK named after the database (its
    locks are server-wide); each on a connection of its own, since the retries close
    and reopen the writer's. SQLite: flock on ``DATABASE.lock`` beside the database
    (not on the database file: closing a descriptor of it would drop SQLite's own
    locks). The lock goes with the session or the process: a killed run leaves none.
    The holder publishes who it is beside the lock (see _publish), for a command that
    finds it taken before the holder has a run (or when it makes none).
    """

    def __init__(self, using: str, command: str = "command"):
        self.using, self.vendor = using, connections[using].vendor
        self.me = f"valdimport {command} (pid {os.getpid()} on {_host()})"
        self._session, self._held = None, False  # PostgreSQL, MySQL: the lock's connection
        self._file = None  # SQLite: the locked file's descriptor

    def acquire(self, wait: bool):
        told = False
        while not self._try():
            holder = self.holder()
            if not wait:
                raise Locked(f"{holder} is writing to {describe_database(self.using)}; "
                             f"rerun with {option('wait')} to wait for it, or stop it first")
            if not told:
                log.info(f"waiting for {holder} to finish")
                told = True
            time.sleep(LOCK_POLL)

    def _try(self) -> bool:
        if self.vendor == "sqlite":
            return self._try_file()
        if self._session is None:
            connection = connections[self.using]
            self._session = connection.get_new_connection(connection.get_connection_params())
            if self.vendor == "postgresql":
                self._session.autocommit = True
        cursor = self._session.cursor()
        cursor.execute(self.SESSION_LOCKS[self.vendor][0], [self._key()])
        self._held = bool(cursor.fetchone()[0])
        if self._held:
            self._publish()
        return self._held

    SESSION_LOCKS = {"postgresql": ("SELECT pg_try_advisory_lock(%s)", "SELECT pg_advisory_unlock(%s)"),
                     "mysql": ("SELECT GET_LOCK(%s, 0)", "SELECT RELEASE_LOCK(%s)")}

    def _key(self):
        if self.vendor == "postgresql":
            return _LOCK_KEY
        name = str(connections[self.using].settings_dict["NAME"])
        return "valdimport:" + (name if len(name) <= 53 else hashlib.sha1(name.encode()).hexdigest())

    def _lock_file(self) -> str | None:
        name = str(connections[self.using].settings_dict["NAME"])
        return None if name in ("", ":memory:") or name.startswith("file:") else name + ".lock"

    def _try_file(self) -> bool:
        import fcntl
        path = self._lock_file()
        if path is None:
            return True  # in memory: this process's alone
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise UsageError(f"cannot write to {describe_database(self.using)}: cannot create "
                                 f"its lock file {path} ({error.strerror}); make its folder "
                                 "writable (SQLite writes beside the database, too)") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            if _same_file(fd, path):
                self._file, self.path = fd, path
                self._publish()
                return True
            os.close(fd)  # its holder removed it after we opened it: lock the new one

    def holder(self) -> str:
        """The run holding the lock, from import_runs: the latest one whose process is
        alive (on this host; elsewhere, still running), its housekeeping perhaps; else the
        command as it published itself (it has no run yet, or makes none)."""
        from node_common.models import ImportRun
        try:
            runs = list(ImportRun.objects.using(self.using).order_by("-updated_at")[:20])
        except Exception:  # no schema yet: the holder is creating it
            runs = []
        for run in runs:
            if _process_alive(run) if run.host == _host() else run.status == ImportRun.RUNNING:
                return f"run {run.id} ({run.command} {run.input_name}, pid {run.pid} on {run.host})"
        with contextlib.suppress(Exception):  # the holder just released it, or the server cannot tell
            published = self._published()
            if published and published.startswith("valdimport "):
                return published
        return "another valdimport command"

    def _publish(self):
        """Say who holds the lock where another command reads it without the schema: in
        the lock file, as the lock session's application_name (at most 63 bytes), or, on
        MySQL, whose named locks show only their connection, in a table of its own."""
        with contextlib.suppress(Exception):  # the lock matters; the holder's name is a courtesy
            if self.vendor == "sqlite":
                os.ftruncate(self._file, 0)
                os.pwrite(self._file, self.me.encode(), 0)
            elif self.vendor == "postgresql":
                self._session.cursor().execute("SELECT set_config('application_name', %s, false)",
                                               [_shortened(self.me, 63)])
            else:
                cursor = self._session.cursor()
                cursor.execute(f"CREATE TABLE IF NOT EXISTS {MYSQL_HOLDERS} (connection_id BIGINT "
                               "PRIMARY KEY, holder VARCHAR(255) NOT NULL)")
                cursor.execute(f"REPLACE INTO {MYSQL_HOLDERS} VALUES (CONNECTION_ID(), %s)",
                               [_shortened(self.me, 255)])
                self._session.commit()

    PG_HOLDER = ("SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                 "WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database() "
                 "AND l.classid = %s AND l.objid = %s AND l.objsubid = 1")  # a bigint key's halves

    def _published(self) -> str | None:
        """What the holder published of itself (see _publish)."""
        if self.vendor == "sqlite":
            with open(self._lock_file(), encoding="utf-8", errors="replace") as f:
                return f.readline(300).strip()
        cursor = self._session.cursor()
        if self.vendor == "postgresql":
            cursor.execute(self.PG_HOLDER, [(_LOCK_KEY >> 32) & 0xFFFFFFFF, _LOCK_KEY & 0xFFFFFFFF])
        else:
            cursor.execute(f"SELECT holder FROM {MYSQL_HOLDERS} WHERE connection_id = IS_USED_LOCK(%s)",
                           [self._key()])
        row = cursor.fetchone()
        return row and row[0]

    def check(self):
        """After the database was unreachable: its session, and the lock with it, may be
        gone; take the lock again, or stop if another command took it meanwhile."""
        if self._session is None:
            return
        try:
            self._session.cursor().execute("SELECT 1")
            return
        except Exception:
            self.release()
        for _ in range(10):  # the server frees the lock of the lost session when it notices
            if self._try():
                return
            time.sleep(LOCK_POLL)
        raise ValdImportError(f"{self.holder()} took the lock of {describe_database(self.using)} "
                              "while it was unreachable; rerun this command later to resume")

    def release(self):
        if self._file is not None:
            if _same_file(self._file, self.path):
                os.remove(self.path)  # while still locked: a waiter then locks a new file
            os.close(self._file)
            self._file = None
        if self._session is not None:  # the session may be gone with the server
            if self._held:  # at once: the server frees it only once it notices the end
                with contextlib.suppress(Exception):
                    if self.vendor == "mysql":
                        self._session.cursor().execute(
                            f"DELETE FROM {MYSQL_HOLDERS} WHERE connection_id = CONNECTION_ID()")
                        self._session.commit()
                    self._session.cursor().execute(self.SESSION_LOCKS[self.vendor][1], [self._key()])
            with contextlib.suppress(Exception):
                self._session.close()
            self._session, self._held = None, False


MYSQL_HOLDERS = "valdimport_lock_holders"  # connection -> who it is (see DatabaseLock._publish)


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 4] + "...)"  # host names are ASCII


def _same_file(fd: int, path: str) -> bool:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (status.st_dev, status.st_ino)


@contextlib.contextmanager
def database_lock(using: str, wait: bool = False, command: str = "command"):
    """Hold the database's lock (see DatabaseLock) for ``command`` meanwhile; a holder may
    take it again."""
    if using in _held_locks:
        yield
        return
    lock = DatabaseLock(using, command)
    try:
        lock.acquire(wait)
        _held_locks[using] = lock
        yield
    finally:
        _held_locks.pop(using, None)
        lock.release()


def with_retries(using: str, retries: int, work, already_done=None, on_retry=None):
    """``work()``; after a transient database error, reconnect, wait and try again.

    ``already_done()``, asked before each new try, returns a result when the
    work committed although the connection broke (the commit's answer was lost).
    ``on_retry(error)`` is told about each retry.
    """
    attempt = 0
    while True:
        try:
            if attempt and using in _held_locks:
                _held_locks[using].check()
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


def _scalar(using, sql, params=()):
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.fetchone()[0] or 0)


def _rows(using, sql, params=()) -> list:
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def sql_differ(a: str, b: str) -> str:
    """SQL: ``a`` and ``b`` differ, a NULL differing from any value but not from NULL."""
    return f"({a} <> {b} OR ({a} IS NULL) <> ({b} IS NULL))"


# --------------------------------------------------------------- reports ----

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

    def table(self, form=python_option) -> str:
        """The report as text, its options spelt by ``form`` (see option())."""
        body = format_table(self.columns, rendered(self.rows, form)) if self.rows else "  (none)"
        return "\n".join(part for part in (self.title, body, render_options(self.verdict, form)) if part)

    def as_dict(self, form=python_option) -> dict:
        rows = self.data if self.data is not None else [dict(zip(self.columns, r)) for r in self.rows]
        return rendered({"title": self.title, "ok": self.ok, "verdict": self.verdict, "rows": rows}, form)


def rendered(value, form):
    """``value`` (text, or lists and dicts of it) with its option placeholders spelt by ``form``."""
    if isinstance(value, str):
        return render_options(value, form)
    if isinstance(value, (list, tuple)):
        return [rendered(v, form) for v in value]
    if isinstance(value, dict):
        return {k: rendered(v, form) for k, v in value.items()}
    return value


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
    undecoded_by_coupling: list = field(default_factory=list)  # [coupling, levels, an example]

    def add(self, lines: int, parsed: ParsedBatch, refused: int = 0):
        """Count a batch; ``refused`` records were parsed but refused by the database."""
        self.lines_read += lines
        self.imported += parsed.records - refused
        self.rejected += len(parsed.rejects) + refused
        self.skipped.update(parsed.skipped)

    def copy(self) -> "Tally":
        return replace(self, skipped=Counter(self.skipped), species_created=list(self.species_created),
                       undecoded_by_coupling=list(self.undecoded_by_coupling))

    def as_row(self) -> dict:
        return dict(lines_read=self.lines_read, imported=self.imported, rejected=self.rejected,
                    skipped=sum(self.skipped.values()),
                    counts=dict(skipped=dict(self.skipped), states_new=self.states_new,
                                states_existing=self.states_existing,
                                transitions=self.transitions,
                                species_created=self.species_created,
                                undecoded=self.undecoded,
                                undecoded_by_coupling=self.undecoded_by_coupling))

    @classmethod
    def from_run(cls, run) -> "Tally":
        counts = run.counts or {}
        return cls(run.lines_read, run.imported, run.rejected, Counter(counts.get("skipped", {})),
                   counts.get("states_new", 0), counts.get("states_existing", 0),
                   counts.get("transitions", 0), list(counts.get("species_created", [])),
                   counts.get("undecoded", 0), list(counts.get("undecoded_by_coupling", [])))


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

    def as_dict(self, form=python_option) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("tally", "phases", "verified")}
        row = self.tally.as_row()
        counts = row.pop("counts")
        out.update(row, skipped_by_reason=counts.pop("skipped"), **counts)
        out["rate"] = round(self.rate, 1)
        out["phases"] = [dict(phase=name, rows=rows, seconds=round(seconds, 3))
                         for name, rows, seconds in self.phases]
        if self.verified is not None:
            out["verify"] = self.verified.as_dict(form)
        return out

    def write_json(self, path: str, form=python_option):
        """The summary as JSON, for monitoring."""
        try:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(self.as_dict(form), f, indent=2, default=str)
        except OSError as error:
            raise UsageError(f"cannot write the summary to {path}: {error.strerror}; "
                             f"choose another with {option('summary_json')}") from None

    def table(self, form=python_option) -> str:
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
                rows += [(f"  {coupling or 'no coupling'}", f"{n:,}  e.g. {example}")
                         for coupling, n, example in t.undecoded_by_coupling]
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
        rows.append(("elapsed", f"{self.elapsed:.2f} s  ({self.rate:,.0f} records/s)"))
        width = max(19, *(len(name) for name, _ in rows))
        head = f"{self.command}: " + (f"run {self.run_id} " if self.run_id else "") + self.message
        lines = [head] + [f"  {name:<{width}}  {value}" for name, value in rows]
        if self.phases:
            lines += ["", phase_table(self.phases, self.records_now, self.elapsed)]
        if self.verified is not None:
            lines += ["", self.verified.table(form)]
        return "\n".join(lines)

    @property
    def exit_code(self) -> int:
        if self.verified is not None and not self.verified.ok:
            return EXIT_FAILED
        return EXIT_REJECTED if self.tally.rejected else EXIT_OK


def _progress_bar(inp, options):
    from tqdm import tqdm
    enabled = options.progress
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


# The import runs: what each run read and committed --------------------------

def run_status(run) -> str:
    """The run's status, "interrupted" for a running run whose process is gone."""
    if (run.status == run.RUNNING and run.host == _host() and run.pid != os.getpid()
            and not _process_alive(run)):
        return "interrupted"
    return run.status


def _json_options(options: ImportOptions) -> dict:
    return {k: getattr(options, k) for k in ("batch_size", "skip_header", "skip_calc", "fast")}


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
        self.checkpoints = {}  # offset -> digest of the input up to the committed position

    def candidates(self) -> list:
        """Earlier runs whose committed rows cover what this command writes, for this input."""
        if self.options.restart:
            return []
        wanted = self.COVERS[self.command]
        families = [c for c, covers in self.COVERS.items() if wanted <= covers]
        runs = self.model.objects.using(self.using).filter(
            command__in=families, committed_bytes__gt=0).exclude(status=self.model.ROLLED_BACK)
        content = {k: getattr(self.options, k) for k in ImportOptions.CONTENT_OPTIONS}
        return sorted((r for r in runs if self._starts_like(r)
                       and all(r.options.get(k) == v for k, v in content.items())
                       # what an unfinished --fast run wrote may be gone after a crash
                       and not (r.options.get("fast") and r.status != self.model.COMPLETED)),
                      key=lambda r: (-r.committed_bytes, -r.id))

    def _starts_like(self, run) -> bool:
        """The input has the first bytes of ``run``'s (up to 64 KiB), or, when it is shorter
        than those, it may be a part of that input (see is_part_of)."""
        head = self.input.head
        if run.head_bytes <= len(head):
            return self.input.head_matches(run.head_bytes, run.input_head)
        digest = InputDigest()
        digest.update(head)
        return self.is_part_of(run, len(head), digest.checkpoints)

    @staticmethod
    def is_part_of(run, length: int, checkpoints: dict) -> bool:
        """An input of ``length`` bytes with these checkpoint digests ends inside what ``run``
        committed, and agrees with its input at its last checkpoint."""
        last = max((offset for offset in checkpoints if offset <= length), default=None)
        theirs = (run.counts or {}).get("checkpoints", {})
        return (last is not None and length <= run.committed_bytes
                and theirs.get(str(last)) == checkpoints[last])

    def begin(self, candidate=None):
        """Start a new run, or get ready to check the input against ``candidate``."""
        self.candidate, self.run, self.resumed = candidate, None, False
        if candidate is None:
            self._refuse_another_input()
            self.run = self._create(start_line=1)
        elif self._resumable(candidate):
            _refuse_if_alive(candidate)

    def _refuse_another_input(self):
        """Transitions are not deduplicated: a revised or changed copy of an imported dump
        would store most of them twice. Adding another input's is for --append (a dump in
        several pieces) or --restart to say."""
        if self.command not in WRITES_TRANSITIONS or self.options.append or self.options.restart:
            return
        other = (self.model.objects.using(self.using)
                 .filter(command__in=WRITES_TRANSITIONS, committed_bytes__gt=0)
                 .exclude(status=self.model.ROLLED_BACK).order_by("-id").first())
        if other is not None:
            name = "standard input" if self.input.name == "-" else self.input.name
            raise AnotherInput(
                f"the transitions table holds what run {other.id} imported ({other.command} "
                f"{other.input_name}, {run_status(other)}) and {name} does not continue it: "
                f"adding it could store lines twice; {option('append')} adds its transitions to "
                f"those, {option('clear')} replaces them")

    def _resumable(self, run) -> bool:
        return run.command == self.command and run.status != self.model.COMPLETED

    def _create(self, **values):
        now = _now()
        run = self.model.objects.using(self.using).create(
            command=self.command, input_name=self.input.name, input_size=self.input.size,
            input_head=self.input.head_sha256, head_bytes=len(self.input.head),
            options=_json_options(self.options), host=_host(), pid=os.getpid(),
            started_at=now, updated_at=now, **values)
        run.options["reject_file"] = os.path.abspath(  # named after the run: its id is known now
            self.options.reject_file or default_reject_path(self.input.name, run.id, self.using, reserve=True))
        self.model.objects.using(self.using).filter(pk=run.pk).update(options=run.options)
        return run

    @property
    def skip_to(self):
        return self.candidate.committed_bytes if self.candidate else None

    def reject_path(self) -> str:
        """--reject-file, else the file of this run or of the run being resumed."""
        resumed = self.candidate if self.candidate and self._resumable(self.candidate) else None
        run = self.run or resumed
        return os.path.abspath(self.options.reject_file or run.options.get("reject_file")
                               or default_reject_path(self.input.name, run.id, self.using))

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
        self.checkpoints = batch.checkpoints
        self.model.objects.using(self.using).filter(pk=self.run.pk).update(
            committed_line=batch.committed_line, committed_bytes=batch.end_offset,
            committed_sha256=batch.sha256, updated_at=_now(), **self._row(tally))

    def _row(self, tally: Tally) -> dict:
        """The run's columns for ``tally``, with the input's checkpoints (see is_part_of)."""
        row = tally.as_row()
        row["counts"]["checkpoints"] = {str(offset): sha for offset, sha in self.checkpoints.items()}
        return row

    def finish(self, status: str, tally: Tally | None = None, message: str = ""):
        if self.run is None:
            return
        values = dict(status=status, finished_at=_now(), updated_at=_now(), message=message)
        if tally is not None:
            values.update(self._row(tally))
        self.model.objects.using(self.using).filter(pk=self.run.pk).update(**values)

    def forget(self):
        """Delete this run's row: it wrote nothing (its input is not a dump)."""
        if self.run is not None and not self.resumed and not self.run.committed_bytes:
            self.run.delete(using=self.using)
            self.run = None

    def finish_quietly(self, status: str, tally: Tally | None, message: str):
        """finish(), unless the database is gone: the run then stays "running", which a
        rerun treats as interrupted (its process is dead) and resumes."""
        try:
            reconnect(self.using)
            self.finish(status, tally, message)
        except Exception:
            pass


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
                             f"choose another with {option('reject_file')}")
        self._file = None

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


def default_reject_path(input_name: str, run_id: int | None, using: str | None = None,
                        reserve: bool = False) -> str:
    """``NAME.runN.rejects`` (a dry run: ``NAME.dry-run.rejects``) in the first folder the run
    can write: the working directory, beside the SQLite database, the temporary folder.

    Never beside the input, whose folder may be read-only. ``reserve``: created empty here
    for this run alone, under the first free name (``NAME.runN-2.rejects`` ...), since a run
    of the same number in another database, or another dry run, may have the name already.
    """
    name = "stdin" if input_name == "-" else os.path.basename(input_name)
    folders = [os.getcwd()]
    if using is not None and connections[using].vendor == "sqlite":
        folders.append(os.path.dirname(os.path.abspath(connections[using].settings_dict["NAME"])))
    folders.append(tempfile.gettempdir())
    folder = next((f for f in folders if os.access(f, os.W_OK)), folders[0])
    stem = os.path.join(folder, f"{name}.run{run_id}" if run_id else f"{name}.dry-run")
    if not reserve:
        return f"{stem}.rejects"
    for number in itertools.count(1):
        path = f"{stem}.rejects" if number == 1 else f"{stem}-{number}.rejects"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return path
        except FileExistsError:
            continue
        except OSError:  # not writable after all: RejectFile says so when it opens it
            return path


# XSAMS sources: the <Source> element the node serves for each reference ----------

SOURCE_CATEGORIES = {"article": "journal", "book": "book", "inbook": "book", "incollection": "book",
                     "techreport": "report", "inproceedings": "proceedings",
                     "conference": "proceedings", "proceedings": "proceedings",
                     "phdthesis": "thesis", "mastersthesis": "thesis"}
OTHER_SOURCE_CATEGORY = "private communication"  # misc, unpublished and any other type
_NOT_IN_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_LATEX_ESCAPE = re.compile(r"\\([_%&#$~])")
# what an entry bibtexparser cannot read still shows: "@type{key," (or "@type(key,")
_ENTRY_HEAD = re.compile(r"\s*@\s*(?P<type>\w+)\s*[{(]\s*(?P<key>[^\s,{}()\"#%'=\\]+)\s*,")


def node_id() -> str:
    """The node's id in XSAMS source ids (``B<node id>-<key>``): the setting VALD_NODE_ID."""
    from django.conf import settings
    value = str(getattr(settings, "VALD_NODE_ID", "vald"))
    if not value or _NOT_IN_XML.search(value) or any(c.isspace() for c in value):
        raise UsageError(f"VALD_NODE_ID {value!r} cannot be part of an XSAMS source id: "
                         "give one word without blanks (the default is vald)")
    return value


def source_xml(key: str, bibtex: str, node: str) -> tuple[str, bool]:
    """The XSAMS ``<Source>`` element of one BibTeX entry, and whether its fields could be read.

    An entry bibtexparser cannot read still gets a well-formed element: its id,
    empty ``<Authors>``, its ``<Category>`` when its type can be read, and the entry text
    in ``<BibTeX>``.
    """
    fields = _source_fields(bibtex)
    source = ET.Element("Source", sourceID=_xml_safe(f"B{node}-{key}"))
    authors = ET.SubElement(source, "Authors")
    if fields is not None:
        for name in fields.pop("authors"):
            ET.SubElement(ET.SubElement(authors, "Author"), "Name").text = name
        pages = re.findall(r"\d+", fields.get("pages", ""))
        for tag, value in (("Title", fields.get("title")), ("Category", fields["category"]),
                           ("Year", fields.get("year")),
                           ("SourceName", fields.get("journal") or fields.get("booktitle")),
                           ("Volume", fields.get("volume")),
                           ("PageBegin", pages[0] if pages else None),
                           ("PageEnd", pages[-1] if len(pages) > 1 else None),
                           ("UniformResourceIdentifier", fields.get("url")),
                           ("DigitalObjectIdentifier", fields.get("doi"))):
            if value:
                ET.SubElement(source, tag).text = value
    elif head := _ENTRY_HEAD.match(bibtex):
        ET.SubElement(source, "Category").text = _source_category(head["type"])
    ET.SubElement(source, "BibTeX").text = _xml_safe(bibtex)
    return ET.tostring(source, encoding="unicode"), fields is not None


def _source_fields(bibtex: str) -> dict | None:
    """The fields of a BibTeX entry as XSAMS wants them (LaTeX decoded to Unicode, braces
    removed, blanks collapsed; authors "First von Last Jr"), or None if it cannot be read."""
    import logging
    import bibtexparser
    from bibtexparser import middlewares, model
    logging.getLogger("bibtexparser").setLevel(logging.CRITICAL)  # the caller reports failures
    names = [middlewares.SeparateCoAuthors(), middlewares.SplitNameParts()]
    library = bibtexparser.parse_string(bibtex, append_middleware=names)
    if library.failed_blocks or len(library.entries) != 1:
        return None
    entry = library.entries[0]
    values = {f.key.lower(): f.value for f in entry.fields}
    authors = [" ".join(n.first + n.von + n.last + n.jr) for n in values.pop("author", [])]
    # url and doi as written: in LaTeX, % would start a comment
    kept = {k: _LATEX_ESCAPE.sub(r"\1", values.pop(k)) for k in ("url", "doi")
            if isinstance(values.get(k), str)}
    plain = [model.Field(k, v) for k, v in values.items() if isinstance(v, str)]
    plain += [model.Field(f"author {i}", name) for i, name in enumerate(authors)]
    decoded = _latex_decoder().transform_entry(model.Entry(entry.entry_type, entry.key, plain), library)
    if not isinstance(decoded, model.Entry):
        return None
    fields = {f.key: _xml_safe(" ".join(f.value.split())) for f in decoded.fields}
    fields.update((k, _xml_safe(" ".join(v.split()))) for k, v in kept.items())
    fields["authors"] = [fields.pop(f"author {i}") for i in range(len(authors))]
    fields["category"] = _source_category(entry.entry_type)
    return fields


def _source_category(entry_type: str) -> str:
    return SOURCE_CATEGORIES.get(entry_type.lower(), OTHER_SOURCE_CATEGORY)


@functools.lru_cache(maxsize=1)
def _latex_decoder():
    from bibtexparser.middlewares import LatexDecodingMiddleware
    return LatexDecodingMiddleware()


def _xml_safe(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot hold (control characters): U+FFFD instead."""
    return _NOT_IN_XML.sub("\ufffd", text)


def _add_source_xml(refs) -> tuple[str, str]:
    """Set ``xml`` of each Reference; the summary row counting the minimal elements."""
    node, unread = node_id(), []
    for ref in refs:
        ref.xml, readable = source_xml(ref.id, ref.bibtex, node)
        if not readable:
            unread.append(ref.id)
    shown = ", ".join(unread[:10]) + (f" and {len(unread) - 10} more" if len(unread) > 10 else "")
    return ("XSAMS sources", f"{len(refs):,} for node {node!r}" + (
        f", {len(unread):,} minimal (fields not readable: {shown})" if unread else ""))


def rebuild_source_xml(using: str = DEFAULT_DB_ALIAS, batch_size: int = 1000) -> int:
    """Regenerate the XSAMS source of every reference (after VALD_NODE_ID changed, or on a
    database imported before refs.xml existed); returns the references whose XML changed."""
    from node_common.models import Reference
    node, changed, last = node_id(), 0, None
    while True:
        batch = Reference.objects.using(using).order_by("pk")
        batch = list((batch.filter(pk__gt=last) if last is not None else batch)[:batch_size])
        if not batch:
            return changed
        last = batch[-1].pk
        stale = []
        for ref in batch:
            xml = source_xml(ref.pk, ref.bibtex or "", node)[0]
            if xml != ref.xml:
                ref.xml = xml
                stale.append(ref)
        Reference.objects.using(using).bulk_update(stale, ["xml"])
        changed += len(stale)


# ---------------------------------------------------------- housekeeping ----

def linelist_methods(using: str = DEFAULT_DB_ALIAS) -> dict:
    """Line-list id -> method, from the linelists table."""
    from node_common.models import LineList
    return dict(LineList.objects.using(using).exclude(method=None).values_list("id", "method"))


def undecoded_levels(using: str, run_id: int) -> list:
    """[coupling, levels, an example description] per coupling, of the levels a run stored
    whose description gave no quantum number (one GROUP BY over the run's levels)."""
    from django.db.models import Count, Min
    from node_atom.models import State
    rows = State.objects.using(using).filter(
        run_id=run_id, term_desc__isnull=False,
        **{f"{column}__isnull": True for column in DECODED_QN_COLUMNS}).values(
        "coupling_case").annotate(n=Count("id"), example=Min("term_desc")).order_by()
    return sorted(([r["coupling_case"], r["n"], r["example"]] for r in rows),
                  key=lambda row: row[0] or "")


def apply_linelist_methods(using: str = DEFAULT_DB_ALIAS) -> tuple[int, int]:
    """Set wave_method (from ll1) and energy_method (from the level's energy line list) of
    rows already stored: one UPDATE per table, touching only rows whose method changes."""
    dialect = Dialect.for_alias(using)
    counts = []
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        for table, target, source in (("transitions", "wave_method", "ll1"),
                                      ("states", "energy_method", "energy_linelist_id")):
            cursor.execute(dialect.update_from_linelists_sql(table, target, source))
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
                 batch_size: int = ImportOptions.batch_size, rebuild_xml: bool = False) -> list:
    """After an import: ground states, Einstein A still missing, planner statistics; with
    ``rebuild_xml``, the XSAMS sources of the references first.

    Returns the phases (name, rows, seconds).
    """
    sources = [timed_phase("XSAMS sources", lambda: rebuild_source_xml(using))] if rebuild_xml else []
    return sources + [
        timed_phase("ground states", lambda: update_ground_states(using)),
        timed_phase("derived values", lambda: 0 if skip_calc else fill_einstein_a(using, batch_size)),
        timed_phase("statistics", lambda: analyze_tables(using))]


def fill_einstein_a(using: str = DEFAULT_DB_ALIAS, batch_size: int = ImportOptions.batch_size) -> int:
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
        for statement in Dialect.for_alias(using).analyze_sql(tables):
            cursor.execute(statement)
            if cursor.description:
                cursor.fetchall()
    return len(tables)


def duplicate_levels(using: str = DEFAULT_DB_ALIAS) -> int:
    """Level rows beyond the first for one (species, energy, J)."""
    q = connections[using].ops.quote_name
    return _scalar(using, "SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM states "
                          f"GROUP BY species_id, energy, {q('J')} HAVING COUNT(*) > 1) d")


# ---------------------------------------------------------------- passes ----

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
        self.config = ParseConfig(options.skip_header, options.skip_calc,
                                  tuple(linelist_methods(self.using).items()), writer.rows,
                                  command in WRITES_TRANSITIONS)
        self.rejects = None  # opened once the run is known: its file is named after it
        self.tally = Tally()
        self.tables = ["states", "transitions"] if command in WRITES_TRANSITIONS else ["states"]
        self.levels, self.next_id = None, 1  # LevelKeys of the stored levels, loaded at the start
        self.counted = np.zeros(0, bool)  # by state id: stored before the run, counted as found
        self.resumed_with = 0  # records the run had when this invocation took it over
        self.seconds, self.rows = Counter(), Counter()  # per phase, this invocation
        self.started = time.monotonic()

    def run(self) -> Summary:
        prefix_lines, stop_at = 0, self.ledger.skip_to
        progress = _progress_bar(self.inp, self.options)
        self._retrying(self.writer.start_import)
        batches = read_batches(self.inp.blocks(), self.options.batch_size, stop_at)
        with parsing(batches, self.config, self.options) as pairs:
            return self._import_pairs(progress, batches, pairs, prefix_lines, stop_at)

    def _import_pairs(self, progress, batches, pairs, prefix_lines, stop_at) -> Summary:
        try:
            if stop_at is None:
                self._open_rejects()
                checked = dump_batches(pairs, self.inp)
                first = next(checked, None)  # a dump, checked before any table changes
                pairs = itertools.chain([first] if first is not None else [], checked)
            else:
                batch, tail = None, UncheckedTail()
                try:
                    for batch in batches:  # re-reading what an earlier run committed
                        prefix_lines += batch.line_count
                        tail.add(batch)
                        _advance(progress, self.inp)
                        if batch.end_offset == stop_at:
                            self._continue_after(batch, prefix_lines)
                            break
                except PrefixMismatch as mismatch:
                    if mismatch.ended and batch is not None and self.ledger.is_part_of(
                            self.ledger.candidate, batch.end_offset, batch.checkpoints):
                        tail.check_stored(self.using, self.config, self.options.skip_header)
                        return self._part_of_candidate(prefix_lines)
                    raise
            if self.ledger.candidate is None:
                self._timed("drop indexes", lambda: self._retrying(
                    lambda: secondary_indexes(self.using, self.tables, drop=True)))
            self._timed("level index", self._load_levels)
            for batch, parsed in pairs:
                self._import(batch, parsed)
                _advance(progress, self.inp, parsed.records, self._progress_note)
            self._timed("indexes", lambda: self._retrying(
                lambda: secondary_indexes(self.using, self.tables, drop=False)))
        finally:
            progress.close()
            if self.rejects is not None:
                self.rejects.close()
            self.writer.end_import()
        if self.ledger.run is None:  # the input ended inside an earlier run's committed prefix
            raise PrefixMismatch(self.ledger.candidate.committed_line)
        return self._finish()

    def _part_of_candidate(self, lines: int) -> Summary:
        """The input is a part of what the candidate committed (``head -N`` of it): no run."""
        tally = Tally(lines_read=lines, skipped=Counter({"already imported": lines}))
        return Summary(self.command, self.inp.name, describe_database(self.using), None, tally,
                       message=f"found nothing new: the input is a part of what run "
                               f"{self.ledger.candidate.id} imported")

    def _load_levels(self) -> int:
        self.levels, self.next_id = self._retrying(self.writer.level_index)
        self.counted = np.zeros(self.next_id, bool)
        return len(self.levels)

    def _timed(self, phase, work):
        started = time.monotonic()
        self.rows[phase] += work() or 0
        self.seconds[phase] += time.monotonic() - started

    def _progress_note(self) -> str:
        records = self.tally.imported + self.tally.rejected - self.resumed_with
        rate = records / max(time.monotonic() - self.started, 1e-9)
        return f"{rate:,.0f} records/s, {self.rows['levels']:,} new levels"

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
        self._open_rejects(keep_through_line=batch.last_line)

    def _open_rejects(self, keep_through_line=None):
        self.rejects = RejectFile(self.ledger.reject_path())
        self.rejects.open(keep_through_line)

    def _import(self, batch, parsed):
        """Write and commit one batch, retried after transient faults."""
        mark = self.rejects.mark()
        before = self.tally
        self.tally = self._retrying(lambda: self._commit_isolating_refusals(batch, parsed, mark),
                                    lambda: self._committed_already(batch))
        self.seconds["parse"] += parsed.seconds
        self.rows.update(parse=parsed.records + len(parsed.rejects),
                         levels=self.tally.states_new - before.states_new,
                         transitions=self.tally.transitions - before.transitions)
        limit = self.options.max_errors
        if limit and self.tally.rejected >= limit and self.tally.rejected > before.rejected:
            raise RunStopped(f"stopped after {self.tally.rejected:,} rejected lines ({option('max_errors')} "
                             f"{limit}); lines up to {batch.committed_line:,} are committed, the "
                             f"rejects are in {self.rejects.path}")

    def _commit(self, batch, parsed, mark, isolate=False) -> "Tally":
        """The batch's rows, its rejects and the run's position, in one transaction."""
        self.rejects.truncate(mark)  # what a failed try wrote
        self._stored = []  # (keys, ids) of the levels stored in this transaction, known on commit
        self._next_id, self._counted = self.next_id, []
        with transaction.atomic(using=self.using):
            tally, refused = self._write(batch, parsed, isolate)
            self.rejects.write(sorted(parsed.rejects + refused))
            self.ledger.record_batch(batch, tally)
            transaction.on_commit(self._remember_levels, using=self.using)
        return tally

    def _commit_isolating_refusals(self, batch, parsed, mark) -> "Tally":
        # Savepoints only when the database refuses a row: on SQLite each one keeps
        # a journal of every page the batch changes (in memory: temp_store=MEMORY).
        try:
            return self._commit(batch, parsed, mark)
        except Exception as error:
            if error_kind(error) != REFUSED:
                raise
            return self._commit(batch, parsed, mark, isolate=True)

    def _committed_already(self, batch) -> "Tally | None":
        """The run's tally if the batch committed although the connection broke."""
        run = self.ledger.reload()
        if run.committed_bytes < batch.end_offset:
            return None
        self._remember_levels()  # the commit's on_commit work did not run: its answer was lost
        return Tally.from_run(run)

    def _stored_levels(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, ids) of the levels stored in the open transaction."""
        return tuple(map(np.concatenate, zip(*self._stored)))

    def _remember_levels(self):
        if self._stored:
            self.levels.add(*self._stored_levels())
        self.next_id = self._next_id
        for ids in self._counted:
            self.counted[ids] = True

    def _write(self, batch, parsed, isolate: bool) -> tuple[Tally, list]:
        """Write one batch in the open transaction; (the run's new tally, refused rejects).

        A row the database refuses makes it raise, unless ``isolate``: then the
        refused rows are found and returned, the others written."""
        tally = self.tally.copy()
        cursor = self.writer.cursor()
        missing = self.writer.missing_species(cursor, parsed.species_ids)
        if missing:
            self.writer.create_species(cursor, missing)
            tally.species_created.extend(missing)
        refused = []
        records = np.arange(parsed.records)
        if parsed.records and isolate:
            refused = self._store(batch, parsed, records, tally)
        elif parsed.records:
            self._count_stored(tally, *self._store_records(batch, parsed, records))
        if refused and len(refused) == parsed.records > 1:
            raise ValdImportError(f"the database refused every record of lines {batch.first_line:,}"
                                  f"-{batch.last_line:,}; first: {refused[0][1]}")
        tally.add(batch.line_count, parsed, len(refused))
        return tally, refused

    def _store(self, batch, parsed, records, tally) -> list:
        """Store ``records`` under a savepoint; on refusal, halve until the bad ones are alone."""
        stored = list(self._stored)
        try:
            with transaction.atomic(using=self.using):
                new, existing, transitions = self._store_records(batch, parsed, records)
        except Exception as error:
            if error_kind(error) != REFUSED:
                raise
            self._stored = stored  # what the savepoint stored is gone
            if len(records) == 1:
                number = int(parsed.line_numbers[records[0]])
                return [(number, f"refused by the database: {_first_line(error)}",
                         _line_text(batch, number))]
            half = len(records) // 2
            return [reject for part in (records[:half], records[half:])
                    for reject in self._store(batch, parsed, part, tally)]
        self._count_stored(tally, new, existing, transitions)
        return []

    @staticmethod
    def _count_stored(tally, new, existing, transitions):
        tally.states_new += new
        tally.states_existing += existing
        tally.transitions += transitions

    def _store_records(self, batch, parsed, records) -> tuple[int, int, int]:
        """The levels of ``records`` not stored yet, then (pass 2) their transitions;
        (new levels, levels found stored, transitions)."""
        cursor = self.writer.cursor()
        run_id, started = self.ledger.run.id, time.monotonic()
        every = len(records) == parsed.records
        if self.config.transitions:
            used = np.arange(len(parsed.keys)) if every else np.unique(
                np.concatenate([parsed.lower[records], parsed.upper[records]]))
        else:  # pass 1: only what the parser carries can be new
            used = np.flatnonzero(parsed.carried) if every else np.intersect1d(
                np.flatnonzero(parsed.carried), np.concatenate([parsed.lower[records], parsed.upper[records]]))
        keys = parsed.keys[used]
        ids = self.levels.lookup(keys)
        if self._stored:  # stored earlier in this transaction (a batch isolating refused rows)
            earlier = LevelKeys()
            earlier.add(*self._stored_levels())
            unknown = ids < 0
            ids[unknown] = earlier.lookup(keys[unknown])
        existing = self._newly_found(ids)
        new = np.flatnonzero(ids < 0)
        if len(new):
            ids[new] = np.arange(self._next_id, self._next_id + len(new))
            self._next_id += len(new)
            self.writer.insert_levels(cursor, self._level_rows(batch, parsed, used[new]), ids[new], run_id)
            self._stored.append((keys[new], ids[new]))
        levels_done = time.monotonic()
        self.seconds["levels"] += levels_done - started
        if not self.config.transitions:
            return len(new), existing, 0
        key_ids = np.full(len(parsed.keys), -1, np.int64)
        key_ids[used] = ids
        rows = parsed.transitions if every else parsed.transitions.take(records)
        self.writer.insert_transitions(cursor, rows, key_ids[parsed.lower[records]],
                                       key_ids[parsed.upper[records]], run_id)
        self.seconds["transitions"] += time.monotonic() - levels_done
        return len(new), existing, len(records)

    def _newly_found(self, ids) -> int:
        """How many of ``ids`` are levels stored before the run that were not counted yet."""
        found = ids[(ids >= 0) & (ids < len(self.counted))]
        found = np.unique(found[~self.counted[found]])
        self._counted.append(found)
        return len(found)

    def _level_rows(self, batch, parsed, wanted: np.ndarray):
        """The rows of the levels ``wanted`` (indexes into parsed.keys): from the batch, or,
        for a level an earlier batch carried without getting it stored, parsed again."""
        row_of = np.cumsum(parsed.carried) - 1
        if parsed.carried[wanted].all():
            rows = row_of[wanted]
            if len(rows) == len(parsed.levels) and (rows == np.arange(len(rows))).all():
                return parsed.levels  # every row the batch carries, as on a first load: no copy
            return parsed.levels.take(rows)
        again = parse_batch(batch.data, batch.first_line, replace(self.config, transitions=False),
)
        return again.levels.take(np.searchsorted(again.keys, parsed.keys[wanted]))

    def _finish(self) -> Summary:
        ledger, tally = self.ledger, self.tally
        message = "completed"
        if ledger.candidate is not None and not ledger.resumed and tally.imported + tally.rejected == 0:
            message = f"found nothing new: run {ledger.candidate.id} imported this input already"

        def work():
            tally.undecoded_by_coupling = undecoded_levels(self.using, ledger.run.id)
            tally.undecoded = sum(n for _, n, _ in tally.undecoded_by_coupling)
            ledger.finish(ledger.model.COMPLETED, tally, "" if message == "completed" else message)
        self._retrying(self.writer.sync_sequence)
        self._retrying(work)
        phases = ["drop indexes", "level index", "parse", "levels",
                  *(["transitions"] if self.config.transitions else []), "indexes"]
        phases = [p for p in phases if p in self.seconds]
        return Summary(self.command, self.inp.name, describe_database(self.using), ledger.run.id,
                       tally, message=message,
                       resumed_from_line=ledger.run.resumed_from_line if ledger.resumed else None,
                       continues_run=ledger.candidate.id if ledger.candidate and not ledger.resumed else None,
                       reject_file=self.rejects.path if tally.rejected else None,
                       retried=self.ledger.retried,
                       records_now=tally.imported + tally.rejected - self.resumed_with,
                       phases=[(name, self.rows[name], self.seconds[name]) for name in phases])


def secondary_indexes(using: str, tables, drop: bool) -> int:
    """A first load builds the secondary indexes of the tables it fills once, at the end
    (maintaining them row by row costs most of the time of a load): ``drop`` them where
    the table is still empty, else create those that are missing; returns how many.

    A run that is killed leaves them missing (verify and check-indexes say so) until a
    run that writes the table ends, or check-indexes --fix. Unique constraints stay."""
    from django.apps import apps
    connection, dialect = connections[using], Dialect.for_alias(using)
    done = 0
    for model in apps.get_app_config("node_atom").get_models():
        table = model._meta.db_table
        if table not in tables or not model._meta.indexes:
            continue
        with connection.cursor() as cursor:
            if drop:
                cursor.execute(f"SELECT 1 FROM {connection.ops.quote_name(table)} LIMIT 1")
                if cursor.fetchone():
                    continue
            live = connection.introspection.get_constraints(cursor, table)
        wanted = [i for i in model._meta.indexes if (i.name in live) == drop]
        if not wanted:
            continue
        with connection.schema_editor() as editor:
            # the index's own SQL: editor.remove_index would add an index on MySQL
            # for a foreign key these tables do not enforce
            statements = ([index.remove_sql(model, editor) for index in wanted] if drop else
                          dialect.create_indexes_sql(model, wanted, editor))
            for statement in statements:
                editor.execute(statement)
        done += len(wanted)
    return done


def _line_text(batch: Batch, number: int) -> str:
    """The text of line ``number`` of a batch."""
    line = batch.data.split(b"\n")[number - batch.first_line]
    return line.rstrip(b"\r").decode("utf-8", "backslashreplace")


@contextlib.contextmanager
def parsing(batches, config: ParseConfig, options: "ImportOptions"):
    """parsed_batches(...), closed on the way out however the caller leaves: an error
    that stops a run must not leave the parser processes and their shared memory to
    the interpreter's shutdown."""
    pairs = parsed_batches(batches, config, options)
    try:
        yield pairs
    finally:
        pairs.close()


def parsed_batches(batches, config: ParseConfig, options: "ImportOptions"):
    """(batch, parsed batch) in input order.

    The first batch is parsed here; from the second on, ``options.workers`` processes
    parse (0: here) while the caller writes, with a bounded number of batches in flight,
    so memory stays constant. Batches and what the parser made of them cross between
    the processes through shared memory; only their descriptions are pickled.
    """
    shipped = SentLevels()
    workers = default_workers() if options.workers is None else options.workers
    for batch in batches:
        yield batch, parse_batch(batch.data, batch.first_line, config, shipped)
        break
    if workers == 0:
        for batch in batches:
            yield batch, parse_batch(batch.data, batch.first_line, config, shipped)
        return
    for batch in batches:  # a second batch: worth starting the processes
        with ParserPool(workers, config, options.batch_size, shipped) as pool:
            yield from pool.parsed(itertools.chain([batch], batches))


DUMP_EVIDENCE = 1000  # candidate lines that must show that an input is a VALD dump


def dump_batches(pairs, inp: Input):
    """The (batch, parsed batch) pairs of an input read from its start, held back until
    its first DUMP_EVIDENCE candidate lines (data lines, and reference lines without
    one) show that it is a VALD dump: some of them valid data lines, no more rejected
    than valid. Anything else (random bytes, a CSV, a species list) stops the run
    before it writes: its reject file would be as large as the input."""
    held, verdicts = [], []
    for pair in pairs:
        if held is None:
            yield pair
            continue
        held.append(pair)
        parsed = pair[1]
        verdicts += sorted([(number, True) for number in (parsed.line_numbers if parsed.records else [])]
                           + [(number, False) for number, *_ in parsed.rejects])
        if len(verdicts) >= DUMP_EVIDENCE:
            _check_dump(inp, [valid for _, valid in verdicts[:DUMP_EVIDENCE]])
            yield from held
            held = None
    if held is not None:
        _check_dump(inp, [valid for _, valid in verdicts])
        yield from held


def _check_dump(inp: Input, valid: list):
    good = sum(valid)
    if good and good >= len(valid) - good:
        return
    first = [line.rstrip(b"\r").decode("utf-8", "backslashreplace")[:40]
             for line in inp.head.split(b"\n", 3)[:3] if line.strip()]
    why = (f"{len(valid) - good:,} of its first {len(valid):,} data lines are rejected" if good
           else f"none of its first {len(valid):,} data lines is valid" if valid else "it has no data line")
    raise NotADump(f"this does not look like a VALD dump (first lines: "
                   f"{', '.join(map(repr, first))}): {why}; check the input (and {option('skip_header')})")


def empty_input(inp: Input) -> ValdImportError:
    name = "standard input" if inp.name == "-" else inp.name
    return NotADump(f"the input is empty ({name}: 0 bytes): nothing to import; when it "
                           "comes through a pipe, the command feeding it probably failed")


def _ignoring_sigint(start):
    """``start()`` with Ctrl-C ignored, so that the processes it starts ignore it (what is
    ignored stays ignored across exec): on a terminal, Ctrl-C reaches the whole process
    group, and only the main process should stop, with one line, ending the workers."""
    import signal
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: its signals are not ours to change
        return start()
    try:
        return start()
    finally:
        signal.signal(signal.SIGINT, previous)


def default_workers() -> int:
    """One less than the cores, at least 1: the main process writes while they parse."""
    return max(1, (os.cpu_count() or 2) - 1)


class ParserPool:
    """Parser processes fed through slots of shared memory: the caller copies a batch into a
    slot, a worker parses it and writes the arrays of the result into the same slot, and
    only a small description of them goes back through the pipe (pickling the arrays
    would cost as much as parsing them).

    Each worker has a pipe of its own and takes every ``workers``-th batch, so results come
    back in input order. No lock is shared with a worker, so that stopping them cannot
    hang: a multiprocessing.Pool's terminate() can, for ever, when a worker it kills
    holds the lock of the pool's result queue (seen on Ctrl-C).

    When the caller had to wait for the last result, the parsers are the slower side: the
    next batch sent comes back with its transition rows unrendered, and the caller's
    process, which had time to spare, renders them (on two cores, a PostgreSQL import's
    parser is busy all the time while the writer and the server leave a quarter of the
    other core idle)."""

    def __init__(self, workers: int, config: ParseConfig, batch_size: int, shipped: SentLevels):
        import multiprocessing
        from multiprocessing import shared_memory
        context = multiprocessing.get_context("spawn")
        self.config, self.shipped = config, shipped
        self.waited, self.rendered_here = 0.0, 0  # the last wait for a result; batches rendered here
        self.slot_bytes = max(1 << 22, batch_size * SLOT_BYTES_PER_RECORD)
        self.slots = workers + self.QUEUED + 2
        self.memory = shared_memory.SharedMemory(create=True, size=self.slot_bytes * self.slots)
        self.pipes, self.processes = [], []
        try:
            for _ in range(workers):
                ours, theirs = context.Pipe()
                self.pipes.append(ours)
                self.processes.append(context.Process(target=_parser_process, daemon=True, args=(
                    theirs, config, self.memory.name, self.slot_bytes, shipped.all_hashes())))
                _ignoring_sigint(self.processes[-1].start)
                theirs.close()
        except BaseException:
            self.__exit__()
            raise

    WAIT_TO_SHARE = 0.002  # seconds: a shorter wait for a result is the pipe's own
    # Batches in flight while the caller writes a result, beyond one per worker: with
    # none, a worker that finishes its batch before the writer its own waits idle (1: the
    # base dump 5 % shorter on PostgreSQL and SQLite, and no higher peak memory: measured).
    QUEUED = 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        started = [p for p in self.processes if p.pid is not None]
        for process in started:
            process.terminate()
        for process in started:
            process.join()
        for pipe in self.pipes:
            pipe.close()
        self.memory.close()
        self.memory.unlink()

    def parsed(self, batches):
        free, in_flight, turn = list(range(self.slots)), deque(), 0
        for batch in batches:
            if len(batch.data) > self.slot_bytes // 2:  # too large for a slot: parsed here
                while in_flight:
                    yield self._result(*in_flight.popleft(), free)
                yield batch, parse_batch(batch.data, batch.first_line, self.config, self.shipped)
                continue
            slot, pipe = free.pop(), self.pipes[turn % len(self.pipes)]
            turn += 1
            start = slot * self.slot_bytes
            self.memory.buf[start:start + len(batch.data)] = batch.data
            try:
                pipe.send((slot, len(batch.data), batch.first_line, self.waited < self.WAIT_TO_SHARE))
            except OSError:
                raise self._stopped() from None
            in_flight.append((batch, slot, pipe))
            if not free or len(in_flight) > len(self.pipes) + self.QUEUED:
                yield self._result(*in_flight.popleft(), free)
        while in_flight:
            yield self._result(*in_flight.popleft(), free)
        for pipe in self.pipes:  # done: the workers end (a dead one is ended already)
            with contextlib.suppress(OSError):
                pipe.send(None)

    def _result(self, batch, slot, pipe, free) -> tuple:
        """(batch, its parsed batch) from the worker of ``pipe``; its slot is free again."""
        waiting = time.perf_counter()
        try:
            data, error = pipe.recv()
        except (EOFError, OSError):
            raise self._stopped() from None
        self.waited = time.perf_counter() - waiting
        if error is not None:
            raise error
        parsed = _arrays_unpickled(data, self.memory.buf, slot * self.slot_bytes)
        free.append(slot)
        self.rendered_here += isinstance(parsed.transitions, Unrendered)
        return batch, parsed.rendered()

    def _stopped(self) -> ValdImportError:
        for process in self.processes:
            process.join(timeout=1)
        codes = [str(p.exitcode) for p in self.processes if p.exitcode]
        return ValdImportError(f"a parser process stopped unexpectedly (exit code {', '.join(codes) or '?'}); "
                               "rerun the command to resume")


SLOT_BYTES_PER_RECORD = 2500  # a batch's input and its parsed arrays fit in batch_size x this


def _parser_process(pipe, config, memory_name, slot_bytes, shipped_hashes):
    """A parser process: parses the batches its pipe names (slot, length, first line,
    whether to render the transition rows) in their slots of shared memory until it is
    sent None."""
    from multiprocessing import shared_memory
    memory, shipped = shared_memory.SharedMemory(name=memory_name), SentLevels(shipped_hashes)
    try:
        while (task := pipe.recv()) is not None:
            slot, length, first_line, render = task
            start = slot * slot_bytes
            try:
                parsed = parse_batch(bytes(memory.buf[start:start + length]), first_line, config, shipped,
                                     render_transitions=render)
                result = (_arrays_pickled(parsed, memory.buf, start, slot_bytes), None)
            except Exception as error:  # raised again in the main process
                result = (None, error)
            pipe.send(result)
    except (EOFError, OSError):  # the main process has gone
        pass


def _arrays_pickled(obj, buffer, start: int, size: int) -> bytes:
    """``obj`` pickled with its NumPy arrays written to buffer[start:start + size] (by
    reference); with the whole of it pickled when they do not fit."""
    import pickle
    at = start

    class Pickler(pickle.Pickler):
        def persistent_id(self, value):
            nonlocal at
            if not isinstance(value, np.ndarray) or value.dtype.hasobject:
                return None
            value = np.ascontiguousarray(value)
            offset = (at + 63) // 64 * 64
            if offset + value.nbytes > start + size:
                raise _SlotFull
            buffer[offset:offset + value.nbytes] = value.view(np.uint8).reshape(-1) if value.nbytes else b""
            at = offset + value.nbytes
            return offset, value.dtype.str, value.shape

    out = io.BytesIO()
    try:
        Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    except _SlotFull:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return out.getvalue()


class _SlotFull(Exception):
    pass


def _arrays_unpickled(data: bytes, buffer, start: int):
    import pickle

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, ref):
            offset, dtype, shape = ref
            count = int(np.prod(shape, dtype=np.int64))
            # a copy: the slot is reused while the batch may still be referred to
            return np.frombuffer(buffer, dtype, count, offset).reshape(shape).copy()

    return Unpickler(io.BytesIO(data)).load()


# ---------------------------------------------------------------- verify ----

HFS_CONSTANTS = ("hfs_A", "hfs_dA", "hfs_B", "hfs_dB")


def verify(using: str = DEFAULT_DB_ALIAS, *, dump: str | None = None,
           skip_header: int = ImportOptions.skip_header, workers: int | None = None,
           progress: bool = False) -> Report:
    """Check the database: links, uniqueness, derived values, indexes, and the dump's counts."""
    checks = database_checks(using)
    checks.append(reference_check(using))
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
    """The checks that need only the database: each one SQL count, and when it is not zero
    one LIMIT query that names the first failing rows."""
    dialect = Dialect.for_alias(using)
    q, real = dialect.q, dialect.float_type
    j, j_scaled = q("J"), q("J_scaled")

    def num(column):
        return f"CAST({column} AS {real})"
    ritz_off = (f"ABS({num('t.waveritz')} - 100000000.0 / ABS({num('u.energy')} - {num('l.energy')})) "
                f"> {num('t.waveritz')} * {num('t.waveritz')} * 1e-12 + 1e-5")
    # how every XSAMS source of this node starts: <Source sourceID="B<node id>-
    source_prefix = ET.tostring(ET.Element("Source", sourceID=f"B{node_id()}-")).decode()[:-len('" />')]
    transition = (("t.id", "t.species_id", "t.wave"), _name_transition)
    level = (("s.id", "s.species_id", "s.energy", f"s.{j}"), _name_level)

    def failing(tables, where, columns, named):
        """(the count, the SQL naming the first failing rows, how it names a row)."""
        return (f"SELECT COUNT(*) FROM {tables} WHERE {where}",
                f"SELECT {', '.join(columns)} FROM {tables} WHERE {where} "
                f"ORDER BY {columns[0]} LIMIT {EXAMPLES}", named)
    hfs_differ = " OR ".join(sql_differ(f"s.{q(c)}", f"m.{q(c)}") for c in HFS_CONSTANTS)
    hfs_levels = failing("states s LEFT JOIN hfs_matches m ON m.state_id = s.id", hfs_differ, *level)
    queries = [
        ("transitions whose upper level is missing", "rollback the run that stored them, or reimport",
         failing("transitions t", "NOT EXISTS (SELECT 1 FROM states s WHERE s.id = t.upstate)",
                 *transition), ()),
        ("transitions whose lower level is missing", "rollback the run that stored them, or reimport",
         failing("transitions t", "NOT EXISTS (SELECT 1 FROM states s WHERE s.id = t.lostate)",
                 *transition), ()),
        ("transitions whose species is missing", "import-species",
         failing("transitions t", "NOT EXISTS (SELECT 1 FROM species sp WHERE sp.id = t.species_id)",
                 *transition), ()),
        ("levels whose species is missing", "import-species",
         failing("states s", "NOT EXISTS (SELECT 1 FROM species sp WHERE sp.id = s.species_id)",
                 *level), ()),
        ("levels stored twice (species, energy, J)",
         f"check-indexes {option('fix')} after removing the copies",
         None, ()),
        ("levels whose key disagrees with energy or J", "reimport these levels",
         failing("states s", f"s.energy_scaled <> ROUND(s.energy * 10000) OR "
                 f"s.{j_scaled} <> CASE WHEN s.{j} IS NULL THEN -1 ELSE ROUND(s.{j} * 10) END", *level), ()),
        ("levels used by no transition", "import-transitions, or rollback the run that stored them",
         failing("states s", dialect.unused_level("s"), *level), ()),
        ("Einstein A missing where computable", "housekeeping",
         failing("transitions t JOIN states u ON u.id = t.upstate", missing_einstein_a(q), *transition), ()),
        ("species whose ground state is not their lowest level", "housekeeping",
         failing("species sp", "EXISTS (SELECT 1 FROM states s WHERE s.species_id = sp.id) AND NOT EXISTS "
                 "(SELECT 1 FROM states g WHERE g.id = sp.ground_state_id AND g.species_id = sp.id "
                 "AND g.energy_scaled = (SELECT MIN(m.energy_scaled) FROM states m "
                 "WHERE m.species_id = sp.id))", ("sp.id",), lambda row: f"species {row[0]}"), ()),
        ("Ritz wavelengths that disagree with level energies", "",
         failing("transitions t JOIN states u ON u.id = t.upstate JOIN states l ON l.id = t.lostate",
                 "t.autoionized = %s AND t.waveritz IS NOT NULL "
                 f"AND u.energy_scaled <> l.energy_scaled AND {ritz_off}",
                 ("t.id", "t.species_id", "t.waveritz", "l.energy", "u.energy"), _name_ritz), (False,)),
        ("references without the XSAMS source of this node", f"housekeeping {option('rebuild_xml')}",
         failing("refs r", "r.xml IS NULL OR SUBSTR(r.xml, 1, %s) <> %s", ("r.id",),
                 lambda row: f"reference {row[0]}"), (len(source_prefix), source_prefix)),
        ("levels whose hyperfine constants differ from the last import-hfs",
         "import-hfs with the AB file: it sets the constants of every level",
         (f"SELECT ({hfs_levels[0]}) + (SELECT COUNT(*) FROM hfs_matches m WHERE NOT EXISTS "
          "(SELECT 1 FROM states s WHERE s.id = m.state_id))", *hfs_levels[1:]), ()),
    ]
    checks = []
    for name, fix, sql, params in queries:
        if sql is None:
            count = duplicate_levels(using)
            names = duplicate_level_examples(using) if count else []
        else:
            count_sql, examples_sql, named = sql
            count = _scalar(using, count_sql, params)
            names = [named(row) for row in _rows(using, examples_sql, params)] if count else []
        checks.append(Check(name, count, fix, _examples_text(names, count)))
    return checks


EXAMPLES = 5  # failing rows verify names per check
REFERENCE_COLUMNS = {"transitions": ("wave_ref_id", "waveritz_ref_id", "loggf_ref_id", "gammarad_ref_id",
                                     "gammastark_ref_id", "waals_ref_id"),
                     "states": ("energy_ref_id", "lande_ref_id", "level_ref_id")}


def reference_check(using: str) -> Check:
    """Rows whose reference keys (a *_ref_id column, comma-joined keys) ``refs`` lacks."""
    missing = missing_reference_keys(using)
    detail = "; ".join(f"{column} {rows:,} row{'s' * (rows != 1)} ({', '.join(keys[:EXAMPLES])}"
                       + (f" and {len(keys) - EXAMPLES} more keys)" if len(keys) > EXAMPLES else ")")
                       for column, rows, keys in missing)
    return Check("reference keys missing from refs (rows, per quantity)",
                 sum(rows for _, rows, _ in missing),
                 "import-references, with a BibTeX file that has these keys", detail)


def missing_reference_keys(using: str) -> list:
    """(column, rows, keys refs lacks) per *_ref_id column with such rows.

    One GROUP BY per column: a few thousand distinct values, split into keys here,
    however many rows there are; no join with refs, so the same SQL runs everywhere.
    """
    from node_common.models import Reference
    known = set(Reference.objects.using(using).values_list("id", flat=True))
    q = connections[using].ops.quote_name
    out = []
    for table, columns in REFERENCE_COLUMNS.items():
        for column in columns:
            rows, keys = 0, set()
            for value, n in _rows(using, f"SELECT {q(column)}, COUNT(*) FROM {table} "
                                         f"WHERE {q(column)} IS NOT NULL GROUP BY {q(column)}"):
                lacking = [key for key in value.split(",") if key not in known]
                if lacking:
                    rows += n
                    keys.update(lacking)
            if rows:
                out.append((column, rows, sorted(keys)))
    return out


def _examples_text(names: list, count: int) -> str:
    """``level 7 (species 2601, ...); ... and N more``: the failing rows a check names."""
    more = count - len(names)
    return "; ".join(names) + (f" and {more:,} more" if names and more > 0 else "")


def _fixed(value, places: int) -> str:
    """A decimal column as text with its places, whatever type the driver returns."""
    return "unknown" if value is None else f"{float(value):.{places}f}"


def _name_transition(row) -> str:
    return f"transition {row[0]} (species {row[1]}, wave {_fixed(row[2], 5)})"


def _name_level(row) -> str:
    return f"level {row[0]} (species {row[1]}, energy {_fixed(row[2], 4)}, J {_fixed(row[3], 1)})"


def _name_ritz(row) -> str:
    return (f"transition {row[0]} (species {row[1]}, waveritz {_fixed(row[2], 5)}, "
            f"levels {_fixed(row[3], 4)} and {_fixed(row[4], 4)})")


def duplicate_level_examples(using: str) -> list:
    """The first few (species, energy, J) stored more than once, named with their row counts."""
    q = connections[using].ops.quote_name
    rows = _rows(using, f"SELECT species_id, energy, {q('J')}, COUNT(*) FROM states "
                        f"GROUP BY species_id, energy, {q('J')} HAVING COUNT(*) > 1 "
                        f"ORDER BY species_id, energy LIMIT {EXAMPLES}")
    return [f"species {sp}, energy {_fixed(energy, 4)}, J {_fixed(j, 1)}: {n} rows"
            for sp, energy, j, n in rows]


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
    return Check("declared indexes and constraints missing", len(missing), f"check-indexes {option('fix')}",
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
                   + f"; run check-indexes {option('fix')} to create them")
    return Report(f"check-indexes: {describe_database(using)}",
                  ("table", "index", "columns", "kind", "status"), rows, verdict, fix or not missing)


# Verify against the dump -----------------------------------------------------

def dump_check(using: str, dump: str, skip_header: int = ImportOptions.skip_header,
               workers: int | None = None, progress: bool = False) -> Check:
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
    config = ParseConfig(skip_header, skip_calc, transitions=False)
    progress = _progress_bar(inp, options)
    try:
        with parsing(read_batches(inp.blocks(), options.batch_size), config, options) as pairs:
            for _, parsed in pairs:
                species, count = np.unique(parsed.species, return_counts=True) if parsed.records else ((), ())
                counts.update(dict(zip(np.asarray(species).tolist(), np.asarray(count).tolist())))
                _advance(progress, inp, parsed.records)
    finally:
        progress.close()
    return counts


def refused_species_counts(runs) -> Counter:
    """Per species, the lines these runs' reject files say the database refused."""
    counts, seen = Counter(), set()
    field_def = FIELD["species_id"]
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


# --------------------------------------------------------------- imports ----

def run_import(command: str, source: str = "-", *, using: str = DEFAULT_DB_ALIAS,
               options: ImportOptions | None = None) -> Summary:
    """Run one import command over ``source`` (a path or "-" for stdin) into database ``using``."""
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}")
    options = options or ImportOptions()
    require_input(source)
    started = time.monotonic()
    if options.dry_run:
        summary = _dry_run(command, Input(source), using, options)
    else:
        connect_database(using)
        with database_lock(using, options.wait, command), writable(using):
            if options.fast:
                summary = FastLoad(command, source, using, options).run()
            else:
                if options.clear:
                    confirm_clear(command, options)
                prepare_database(using, options.retries)
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


def require_input(source, file_only: str | None = None):
    """Check the input before the database is touched (a mistyped path must not leave an
    empty database behind): a file that can be read, or standard input that is not a
    terminal (nothing piped in); ``file_only`` names the command that cannot read a pipe."""
    if source in ("-", None) and file_only:
        raise UsageError(f"{file_only} reads a file, not standard input: give it with {option('file')}")
    if source in ("-", None):
        if sys.stdin is not None and sys.stdin.isatty():
            raise NoInput(f"there is no input: standard input is a terminal; give the input with "
                          f"{option('file')}, or pipe it in")
        return
    try:
        open(source, "rb").close()
    except OSError as error:
        raise UsageError(f"cannot read {source}: {error.strerror}") from None


CLEARS = {"import-states": ("Transition", "State"), "import-transitions": ("Transition",),
          "import": ("Transition", "State")}  # the tables a command fills, and all that hangs on them


def confirm_clear(command: str, options: "ImportOptions", warning: str = ""):
    """Go on emptying the tables only with the caller's confirmation (see confirmed())."""
    tables = ", ".join(CLEARS[command]).lower().replace("transition", "transitions").replace(
        "state", "states")
    if warning:
        log.warning(warning)
    confirmed(options.confirm, f"Empty {tables} and import? [y/N] ", f"{option('clear')} empties {tables}")


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

    On top of what every first load does (secondary indexes built at the end), the
    PostgreSQL tables are UNLOGGED meanwhile, SQLite runs without a journal, MySQL
    without uniqueness checks. The unique constraint of the levels stays in place and
    is verified at the end. A crash in the middle can lose everything loaded (and, on
    SQLite, corrupt the file).
    """

    RISKS = ("a fast load empties the tables first; until the run ends, a crash or a killed "
             "process can lose everything loaded (on SQLite, corrupt the database file), and "
             "queries on these tables are slow: their indexes are only built at the end.")

    def __init__(self, command, source, using, options):
        from django.apps import apps
        self.command, self.source, self.using, self.options = command, source, using, options
        self.models = [apps.get_model("node_atom", m) for m in CLEARS[command]]
        self.phases = []

    def run(self) -> Summary:
        if not self.options.clear:
            raise UsageError(f"{option('fast')} needs {option('clear')}: it loads into emptied tables; "
                             f"add {option('clear')} (it deletes what these tables hold) or leave out "
                             f"{option('fast')}")
        confirm_clear(self.command, self.options, self.RISKS)
        prepare_database(self.using, self.options.retries)
        writer = Writer.for_alias(self.using)
        tables = [m._meta.db_table for m in self.models]
        self._phase("clear", lambda: clear_tables(self.command, self.using))
        writer.start_fast(tables)
        try:
            summary = _import_input(self.command, Input(self.source), self.using, self.options)
        finally:
            self._phase("crash safety back", lambda: writer.end_fast(tables))
        self._phase("verify", self._verify_unique)
        summary.phases = self.phases[:1] + summary.phases + self.phases[1:]
        return summary

    def _phase(self, name, work):
        self.phases.append(timed_phase(name, work))

    def _verify_unique(self) -> int:
        """Levels checked: none may be stored twice."""
        duplicates = duplicate_levels(self.using)
        if duplicates:
            raise ValdImportError(f"{duplicates:,} levels are stored twice after the fast load: rerun "
                                  f"it with {option('fast')} {option('clear')}, or without {option('fast')}")
        from node_atom.models import State
        return State.objects.using(self.using).count()


def _import_input(command, inp, using, options) -> Summary:
    """Import ``inp`` after what earlier runs on the same input committed."""
    if not inp.head:
        raise empty_input(inp)
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
                differs = (f"standard input differs from the input of run {ledger.candidate.id} (same "
                           f"first bytes, different before line {mismatch.line:,}): it is another input")
                if options.append:  # which would add all of it, from its start
                    raise UsageError(f"{differs}, and a pipe cannot be read again from its start to add "
                                     f"all of it: rerun with {option('restart')} instead of "
                                     f"{option('append')}, or give it with {option('file')}") from None
                raise UsageError(
                    f"{differs}; {option('clear')} replaces what is imported with it, {option('restart')} "
                    f"adds all of it as a new run; or give it with {option('file')} to compare it with "
                    "every earlier run") from None
            inp.reopen()
        except NotADump:
            ledger.forget()
            raise
        except RunStopped:
            ledger.finish_quietly(ledger.model.STOPPED, run.tally, "stopped: the most rejected lines allowed")
            raise
        except KeyboardInterrupt:
            ledger.finish_quietly(ledger.model.STOPPED, None, "interrupted")
            raise
        except BaseException as error:
            ledger.finish_quietly(ledger.model.FAILED, None, _one_line(error))
            raise


def _dry_run(command, inp, using, options) -> Summary:
    """Parse and check the whole input, write the reject file; touch no table."""
    if not inp.head:
        raise empty_input(inp)
    tally = Tally()
    rejects = RejectFile(options.reject_file or default_reject_path(inp.name, None, using, reserve=True))
    rejects.open()
    progress = _progress_bar(inp, options)
    config = ParseConfig(options.skip_header, options.skip_calc, rows=TUPLES, transitions=False)
    try:
        with parsing(read_batches(inp.blocks(), options.batch_size), config, options) as pairs:
            for batch, parsed in dump_batches(pairs, inp):
                rejects.write(parsed.rejects)
                tally.add(batch.line_count, parsed)
                _advance(progress, inp, parsed.records)
    finally:
        progress.close()
        rejects.close()
    return Summary(command, inp.name, describe_database(using), None, tally, dry_run=True,
                   message="checked (dry run: nothing was written)",
                   reject_file=rejects.path if tally.rejected else None)


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


def _upsert(model, using, objects, fields, unique=("pk",)) -> tuple[int, int, int]:
    """Insert or update ``objects`` on their unique key.

    Keyed by pk, only new rows and rows whose ``fields`` changed are written, and the
    result is (new, updated, unchanged); otherwise every object is written, (len, 0, 0).
    """
    new = updated = 0
    if unique == ("pk",):
        attnames = [model._meta.get_field(f).attname for f in fields]
        stored = {pk: values for pk, *values in model.objects.using(using).filter(
            pk__in=[o.pk for o in objects]).values_list("pk", *attnames)}
        new = sum(1 for o in objects if o.pk not in stored)
        objects = [o for o in objects
                   if stored.get(o.pk) != [getattr(o, name) for name in attnames]]
        updated = len(objects) - new
    targeted = connections[using].features.supports_update_conflicts_with_target
    model.objects.using(using).bulk_create(
        objects, update_conflicts=True, unique_fields=list(unique) if targeted else None,
        update_fields=fields, batch_size=1000)
    if unique != ("pk",):
        return len(objects), 0, 0
    return new, updated, len(stored) - updated


def upsert_counts(new: int, updated: int, unchanged: int) -> str:
    return f"{new:,} new, {updated:,} updated, {unchanged:,} unchanged"


class FirstOccurrence:
    """The one rule for ids repeated in a companion file: the first occurrence is kept,
    every later one is rejected with its line number and the line of the first."""

    def __init__(self, what: str):
        self.what, self.first_line, self.repeated = what, {}, []

    def is_repeat(self, key, number: int, raw: str, bad: list) -> bool:
        """True (and a reject appended to ``bad``) when ``key`` was seen on an earlier line."""
        first = self.first_line.setdefault(key, number)
        if first == number:
            return False
        bad.append((number, f"duplicate {self.what} {key!r}; the first, on line {first:,}, is kept", raw))
        self.repeated.append(key)
        return True

    def details(self) -> list:
        """The summary row naming the repeated ids, when there were any."""
        if not self.repeated:
            return []
        shown = ", ".join(map(str, list(dict.fromkeys(self.repeated))[:10]))
        more = len(set(self.repeated)) - 10
        return [("duplicates", f"{len(self.repeated):,} rejected, the first of each kept: {shown}"
                 + (f" and {more} more" if more > 0 else ""))]


def _species_rows(text, using, tally, reject):
    """Species (upsert, so placeholders get their names) and molecules' components."""
    import csv
    from node_common.models import Species, SpeciesComponent
    species, components, bad = {}, {}, []
    seen = FirstOccurrence("species index")
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
            if seen.is_repeat(record.id, number, ",".join(row), bad):
                continue
            species[record.id] = record
            if parts:
                components[record.id] = parts
            tally.imported += 1
    tally.rejected += len(bad)
    reject(bad)
    fields = [f.name for f in Species._meta.concrete_fields if f.name not in ("id", "ground_state")]
    counts = _upsert(Species, using, list(species.values()), fields)
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
    details = [("species", upsert_counts(*counts)), *seen.details(),
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
    seen = FirstOccurrence("line-list id")
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
                linelist = LineList(id=int(ident), srcfile=srcfile or None, listtype=listtype or None,
                                    method=int(method) if method else None)
            except ValueError:
                bad.append((number, "line-list id and method must be integers", line))
                continue
            if not seen.is_repeat(linelist.id, number, line, bad):
                lists[linelist.id] = linelist
                tally.imported += 1
    tally.rejected += len(bad)
    reject(bad)
    counts = _upsert(LineList, using, list(lists.values()), ["srcfile", "listtype", "method"])
    transitions, states = apply_linelist_methods(using)
    return [("line lists", upsert_counts(*counts)), *seen.details(),
            ("methods applied", f"{transitions:,} transitions, {states:,} levels")]


def _unreadable_entry_key(block, longest: int) -> str | None:
    """The key of a block bibtexparser failed to read, if it starts as an entry does."""
    head = _ENTRY_HEAD.match(block.raw)
    if head and head["type"].lower() not in ("string", "preamble", "comment") and len(head["key"]) <= longest:
        return head["key"]
    return None


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
    seen = FirstOccurrence("key")
    for block in library.blocks:
        tally.lines_read += 1
        line, one_line = block.start_line + 1, block.raw.replace("\n", " ")
        key, bibtex = None, block.raw
        if isinstance(block, model.Entry) and len(block.key) > longest:
            bad.append((line, f"key longer than {longest} characters", one_line))
        elif isinstance(block, model.Entry):
            key = block.key
        elif isinstance(block, model.DuplicateBlockKeyBlock):
            seen.first_line[block.key] = block.previous_block.start_line + 1
            seen.is_repeat(block.key, line, one_line, bad)
        elif isinstance(block, model.ParsingFailedBlock) and (unread := _unreadable_entry_key(block, longest)):
            # an entry bibtexparser cannot read, under a key the dump may cite: kept, with
            # the minimal XSAMS source that the summary counts
            key, bibtex = unread, block.raw.rstrip()  # up to the next block
        elif isinstance(block, model.ParsingFailedBlock):
            reason = getattr(block.error, "abort_reason", "") or _first_line(block.error)
            bad.append((line, f"not a BibTeX entry: {reason.strip()}", one_line))
        else:
            tally.skipped[kinds.get(type(block), "other")] += 1
        if key is not None and not seen.is_repeat(key, line, one_line, bad):
            refs.append(Reference(id=key, bibtex=bibtex))
            tally.imported += 1
    tally.rejected += len(bad)
    reject(bad)
    sources = _add_source_xml(refs)
    counts = _upsert(Reference, using, refs, ["bibtex", "xml"])
    return [("references", upsert_counts(*counts)), *seen.details(), sources]


# Hyperfine constants ---------------------------------------------------------

HFS_STAGE_TABLE = "valdimport_stage_hfs"
HFS_BATCH = 5000


class HyperfineFile:
    """Table AB(ID, SPEID, E, J, TERM, A, dA, B, dB) of an SQLite file, opened read-only."""

    COLUMNS = ("ID", "SPEID", "E", "J", "TERM", "A", "dA", "B", "dB")

    def __init__(self, path: str, tolerance: float = 1.0):
        import sqlite3
        self.path, self.tolerance = str(path), tolerance  # checked by require_input
        # read-only: a mistyped name never creates an empty database
        self.db = sqlite3.connect(Path(self.path).absolute().as_uri() + "?mode=ro", uri=True)
        try:
            self._check_table()
        except BaseException:
            self.close()
            raise

    def _check_table(self):
        import sqlite3
        try:
            columns = {row[1].lower() for row in self.db.execute("PRAGMA table_info(AB)")}
        except sqlite3.DatabaseError as error:
            raise UsageError(f"cannot read {self.path} as an SQLite database: {error}") from None
        if not columns:
            raise UsageError(f"{self.path} has no table AB: is it the hyperfine constants file?")
        missing = [c for c in self.COLUMNS if c.lower() not in columns]
        if missing:
            raise UsageError(f"table AB of {self.path} has no column {', '.join(missing)} "
                             f"(it needs {', '.join(self.COLUMNS)})")

    def batches(self, size: int = HFS_BATCH):
        """Lists of at most ``size`` rows, in the order of their ID."""
        cursor = self.db.execute(f"SELECT {', '.join(self.COLUMNS)} FROM AB ORDER BY ID")
        while rows := cursor.fetchmany(size):
            yield rows

    def close(self):
        self.db.close()


@dataclass
class HyperfineRow:
    position: int  # in the order read (by ID), from 0
    ab_id: int
    species: int
    energy_scaled: int
    j_scaled: int
    constants: tuple  # A, dA, B, dB (None where the file has none)
    text: str  # the row as the reject file shows it


def hyperfine_row(position: int, row: tuple) -> HyperfineRow:
    """One row of table AB, checked; ValueError names what is wrong with it."""
    ident, speid, energy, j, _term, *constants = row

    def number(name, value, blank_ok=False):
        if value is None or (isinstance(value, str) and not value.strip()):
            if blank_ok:
                return None
            raise ValueError(f"no {name}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} is not a number: {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{name} is not a finite number: {value!r}")
        return number

    def integer(name, raw):
        value = number(name, raw)
        if not value.is_integer():
            raise ValueError(f"{name} is not an integer: {raw!r}")
        return int(value)

    j_tenths = number("J", j) * 10
    if j_tenths < 0 or abs(j_tenths - round(j_tenths)) > 1e-6:
        raise ValueError(f"J is not a level's J (>= 0, at most one decimal): {j!r}")
    return HyperfineRow(position, integer("ID", ident), integer("SPEID", speid),
                        round(number("E", energy) * 10_000), round(j_tenths),
                        tuple(number(name, value, blank_ok=True)
                              for name, value in zip(("A", "dA", "B", "dB"), constants)),
                        _ab_text(row))


def _hfs_rows(ab: HyperfineFile, using, tally, reject):
    """Match the rows of ``ab`` to levels, then replace the hyperfine constants of every level."""
    from node_atom.models import HyperfineMatch
    tolerance = round(ab.tolerance * 10_000)
    found, bad, unmatched, position = [], [], [], 0
    with connections[using].cursor() as cursor:
        _create_hfs_stage(cursor, using)
        for rows in ab.batches():
            tally.lines_read += len(rows)
            valid = []
            for row in rows:
                try:
                    valid.append(hyperfine_row(position, row))
                except ValueError as error:
                    bad.append((position, row[0], str(error), _ab_text(row)))
                position += 1
            candidates = _hfs_candidates(cursor, using, valid, tolerance)
            for row in valid:
                levels = sorted(candidates.get(row.position, ()))  # (distance, state id)
                if levels:
                    found.append((levels[0][1], levels[0][0], row, len(levels)))
                else:
                    unmatched.append(row)
        cursor.execute(f"DROP {_temporary(using)}TABLE {HFS_STAGE_TABLE}")
        bad += _unmatched_reasons(cursor, unmatched, ab.tolerance)
        winners, taken = _nearest_row_per_level(found)
        bad += taken
        HyperfineMatch.objects.using(using).all().delete()
        HyperfineMatch.objects.using(using).bulk_create(
            [HyperfineMatch(state_id=state, ab_id=row.ab_id, candidates=n,
                            **dict(zip(HFS_CONSTANTS, row.constants)))
             for state, _, row, n in winners], batch_size=1000)
        cleared, changed = _apply_hfs_matches(cursor, using)
    bad.sort()
    reject([(ident, reason, text) for _, ident, reason, text in bad])
    tally.imported, tally.rejected = len(winners), len(bad)
    ambiguous = sum(1 for *_, n in winners if n > 1)
    details = [("matched", f"{len(winners):,} rows ({ambiguous:,} ambiguous: the nearest of "
                           f"several levels within ±{ab.tolerance:g} cm-1)")]
    reasons = ((len(unmatched), f"no level within ±{ab.tolerance:g} cm-1"),
               (len(taken), "level taken by a nearer row"),
               (len(bad) - len(unmatched) - len(taken), "invalid"))
    if bad:
        details.append(("not matched", ", ".join(f"{n:,} {reason}" for n, reason in reasons if n)))
    details.append(("constants", f"{changed:,} levels set or changed, {cleared:,} cleared"
                    if changed or cleared else "unchanged: the levels already had these constants"))
    return details


def _temporary(using) -> str:
    return "TEMPORARY " if connections[using].vendor == "mysql" else ""


def _create_hfs_stage(cursor, using):
    cursor.execute(f"DROP {_temporary(using)}TABLE IF EXISTS {HFS_STAGE_TABLE}")
    cursor.execute(f"CREATE TEMPORARY TABLE {HFS_STAGE_TABLE} (ab_row INTEGER, "
                   "species_id INTEGER, j_scaled INTEGER, energy_scaled BIGINT)")


def _hfs_candidates(cursor, using, rows, tolerance: int) -> dict:
    """Position of each row -> [(energy distance, state id)] of the levels of its species and J
    within ``tolerance`` (x 10^4): one join of the staged rows with states."""
    if not rows:
        return {}
    for start in range(0, len(rows), 500):
        chunk = rows[start:start + 500]
        cursor.execute(f"INSERT INTO {HFS_STAGE_TABLE} (ab_row, species_id, j_scaled, energy_scaled) "
                       "VALUES " + ", ".join(["(%s, %s, %s, %s)"] * len(chunk)),
                       [v for r in chunk for v in (r.position, r.species, r.j_scaled, r.energy_scaled)])
    if connections[using].vendor == "postgresql":
        cursor.execute(f"ANALYZE {HFS_STAGE_TABLE}")  # so that it probes the states index
    q = connections[using].ops.quote_name
    cursor.execute(
        f"SELECT t.ab_row, ABS(s.energy_scaled - t.energy_scaled), s.id FROM {HFS_STAGE_TABLE} t "
        f"JOIN states s ON s.species_id = t.species_id AND s.{q('J_scaled')} = t.j_scaled "
        "AND s.energy_scaled BETWEEN t.energy_scaled - %s AND t.energy_scaled + %s",
        [tolerance, tolerance])
    candidates = {}
    for position, distance, state in cursor.fetchall():
        candidates.setdefault(position, []).append((distance, state))
    cursor.execute(f"DELETE FROM {HFS_STAGE_TABLE}")
    return candidates


def _unmatched_reasons(cursor, rows, tolerance: float) -> list:
    """Reject entries of rows no level matched: a species without levels, or no level near."""
    species = sorted({r.species for r in rows})
    with_levels = set()
    for start in range(0, len(species), 500):
        chunk = species[start:start + 500]
        cursor.execute("SELECT DISTINCT species_id FROM states WHERE species_id IN ("
                       + ", ".join(["%s"] * len(chunk)) + ")", chunk)
        with_levels.update(sp for sp, in cursor.fetchall())
    return [(r.position, r.ab_id,
             f"no level of species {r.species} with J = {r.j_scaled / 10:g} within "
             f"±{tolerance:g} cm-1 of {r.energy_scaled / 10_000:.4f} cm-1"
             if r.species in with_levels else f"species {r.species} has no levels in the database",
             r.text) for r in rows]


def _nearest_row_per_level(found) -> tuple[list, list]:
    """Of rows matching the same level, the nearest in energy (then the lowest ID) keeps it;
    the others are rejected."""
    winners, taken = {}, []
    for state, distance, row, n in sorted(found, key=lambda f: (f[1], f[2].ab_id, f[2].position)):
        if state in winners:
            taken.append((row.position, row.ab_id, f"level {state} is matched by AB row "
                          f"{winners[state][2].ab_id}, nearer in energy or first", row.text))
        else:
            winners[state] = (state, distance, row, n)
    return sorted(winners.values(), key=lambda w: w[2].position), taken


def _ab_text(row: tuple) -> str:
    """A row of table AB as text for the reject file: its values separated by tabs."""
    return "\t".join("" if v is None else str(v) for v in row)


def _apply_hfs_matches(cursor, using) -> tuple[int, int]:
    """Copy the constants of hfs_matches to the levels: (levels cleared, levels set or changed).
    Only rows whose constants change are written."""
    q = connections[using].ops.quote_name
    has_any = " OR ".join(f"{q(c)} IS NOT NULL" for c in HFS_CONSTANTS)
    cursor.execute(f"UPDATE states SET {', '.join(f'{q(c)} = NULL' for c in HFS_CONSTANTS)} "
                   f"WHERE ({has_any}) AND id NOT IN (SELECT state_id FROM hfs_matches)")
    cleared = cursor.rowcount
    differ = " OR ".join(sql_differ(f"states.{q(c)}", f"m.{q(c)}") for c in HFS_CONSTANTS)
    if connections[using].vendor == "mysql":
        cursor.execute(f"UPDATE states JOIN hfs_matches m ON m.state_id = states.id SET "
                       + ", ".join(f"states.{q(c)} = m.{q(c)}" for c in HFS_CONSTANTS)
                       + f" WHERE {differ}")
    else:
        cursor.execute("UPDATE states SET " + ", ".join(f"{q(c)} = m.{q(c)}" for c in HFS_CONSTANTS)
                       + f" FROM hfs_matches m WHERE m.state_id = states.id AND ({differ})")
    return cleared, cursor.rowcount


# The companion commands ------------------------------------------------------

def run_companion(command: str, source: str = "-", *, using: str = DEFAULT_DB_ALIAS,
                  options: ImportOptions | None = None) -> Summary:
    """Import one companion file in one transaction; returns its summary."""
    options = options or ImportOptions()
    require_input(source, file_only="import-hfs" if command == "import-hfs" else None)  # SQLite
    connect_database(using)
    with database_lock(using, options.wait, command), writable(using):
        return _import_companion(command, source, using, options)


def _import_companion(command, source, using, options) -> Summary:
    prepare_database(using, options.retries)
    started = time.monotonic()
    # an AB file is checked before a run is recorded
    ab = HyperfineFile(source, options.energy_tolerance) if command == "import-hfs" else None
    inp = Input(source)
    ledger = RunLedger(using, command, inp, options)
    ledger.begin(None)
    tally, rejects = Tally(), RejectFile(ledger.reject_path())
    rejects.open()
    importer = {"import-species": _species_rows, "import-linelists": _linelist_rows,
                "import-references": _reference_rows, "import-hfs": _hfs_rows}[command]
    try:
        text = ab if ab is not None else b"".join(inp.lines()).decode("utf-8", "replace")
        with transaction.atomic(using=using):
            details = importer(text, using, tally, rejects.write)
            ledger.finish(ledger.model.COMPLETED, tally)
    except BaseException as error:
        ledger.finish(ledger.model.FAILED, None, _one_line(error))
        raise
    finally:
        rejects.close()
        if ab is not None:
            ab.close()
    update_ground_states(using)
    return Summary(command, inp.name, describe_database(using), ledger.run.id, tally,
                   elapsed=time.monotonic() - started, details=details,
                   reject_file=rejects.path if tally.rejected else None,
                   read_label={"import-references": "entries read",
                               "import-hfs": "rows read"}.get(command, "lines read"))


def import_species(source="-", *, using=DEFAULT_DB_ALIAS, **options) -> Summary:
    """Species list: upsert species (placeholders get their names) and components."""
    return run_companion("import-species", source, using=using, options=ImportOptions(**options))


def import_linelists(source="-", *, using=DEFAULT_DB_ALIAS, **options) -> Summary:
    """Line lists, and their methods on what is already stored."""
    return run_companion("import-linelists", source, using=using, options=ImportOptions(**options))


def import_references(source="-", *, using=DEFAULT_DB_ALIAS, **options) -> Summary:
    """BibTeX references."""
    return run_companion("import-references", source, using=using, options=ImportOptions(**options))


def import_hfs(source, *, using=DEFAULT_DB_ALIAS, **options) -> Summary:
    """Hyperfine constants of an AB file matched to the stored levels (``energy_tolerance`` in
    cm-1, default 1.0); they replace the constants of every level."""
    return run_companion("import-hfs", source, using=using, options=ImportOptions(**options))


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


def _seconds(run) -> float:
    return round(((run.finished_at or run.updated_at) - run.started_at).total_seconds(), 3)


def _duration(run) -> str:
    seconds = _seconds(run)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min {seconds:02d} s"


def rollback_run(using: str = DEFAULT_DB_ALIAS, run_id: int = 0, *, confirm=None) -> Report:
    """Remove the transitions of a run and the levels it stored that no transition uses;
    only with a confirmation (``confirm``: True, or a function that asks; see confirmed())."""
    from node_common.models import ImportRun
    run = _run_to_roll_back(using, run_id)
    confirmed(confirm, f"Delete the transitions and unused levels of run {run.id} ({run.command} "
                       f"{run.input_name}, {run.imported:,} records)? [y/N] ",
              f"rolling back run {run.id} deletes its transitions")
    dialect = Dialect.for_alias(using)
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
                       f"{dialect.unused_level('states')}", gone)
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


# ------------------------------------------------------------------- CLI ----

def database_settings(url: str) -> dict:
    """Django DATABASES entry for a sqlite://, postgres:// or mysql:// URL."""
    import dj_database_url
    scheme, _, rest = url.partition(":")
    if scheme == "sqlite" and not (rest.startswith("///") and rest[3:].partition("?")[0]):
        raise UsageError(f"bad SQLite URL {url!r}: use sqlite:///RELATIVE/PATH or "
                         "sqlite:////ABSOLUTE/PATH (three slashes, then the path)")
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
    require_driver(config["ENGINE"])
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


def run_command(command: str, source: str = "-", *, using: str = DEFAULT_DB_ALIAS,
                options: ImportOptions | None = None, form=python_option) -> Summary:
    """Run any import command by its name; with ``options.summary_json``, write the summary there."""
    run = run_companion if command in COMPANIONS else run_import
    if options is not None and options.summary_json:
        folder = os.path.dirname(os.path.abspath(options.summary_json))
        if not os.access(folder, os.W_OK):
            raise UsageError(f"cannot write the summary to {options.summary_json}: no writable "
                             f"folder {folder}; choose another with {option('summary_json')}")
    summary = run(command, source, using=using, options=options)
    if options is not None and options.summary_json:
        summary.write_json(options.summary_json, form)
    return summary


def run_operation(command: str, using: str = DEFAULT_DB_ALIAS, options: ImportOptions | None = None,
                  *, file: str | None = None) -> Report:
    """Run an operation by its name with its options; returns its report (``file``: the dump
    verify compares with)."""
    options = options or ImportOptions()
    require_schema(using)
    if command in LOCKING_OPERATIONS and (command != "check-indexes" or options.fix):
        with database_lock(using, options.wait, command), writable(using):
            return _run_operation(command, using, options, file)
    return _run_operation(command, using, options, file)


def _run_operation(command: str, using: str, options: ImportOptions, file: str | None) -> Report:
    if command == "verify":
        return verify(using, dump=file, skip_header=options.skip_header, workers=options.workers,
                      progress=options.progress)
    if command == "check-indexes":
        return check_indexes(using, fix=options.fix)
    if command == "runs":
        return list_runs(using, limit=options.limit)
    if command == "rollback":
        return rollback_run(using, options.run, confirm=options.confirm)
    if command == "housekeeping":
        started = time.monotonic()
        phases = housekeeping(using, skip_calc=options.skip_calc, batch_size=options.batch_size,
                              rebuild_xml=options.rebuild_xml)
        return Report(f"housekeeping: {describe_database(using)}", PHASE_COLUMNS,
                      phase_rows(phases), f"done in {time.monotonic() - started:.2f} s",
                      data=[dict(phase=n, rows=r, seconds=round(t, 3)) for n, r, t in phases])
    raise UsageError(f"unknown command {command!r}")


# The two front ends, the command line and the Django commands: their arguments, how they
# spell the options in messages, progress bar, prompts, notices and errors.

FILE_HELP = {  # --file, for the commands that read one
    **dict.fromkeys(IMPORTS, "the dump: plain, gzip, bzip2 or xz (default: standard input)"),
    "import-species": "the species list, VALD_list_of_species.csv (default: standard input)",
    "import-linelists": "the line lists, linelists.dat (default: standard input)",
    "import-references": "the BibTeX references, VALD3_ref.bib (default: standard input)",
    "import-hfs": "the SQLite file with table AB (a file: SQLite cannot read a pipe)",
    "verify": "also compare the transitions per species with this dump",
}
CONFIRMS = {  # the commands that ask before they delete (--yes)
    **dict.fromkeys(IMPORTS, "do not ask for confirmation before emptying tables (--clear)"),
    "rollback": "do not ask for confirmation",
}
FRONT_END_FLAGS = {"file": "--file", "yes": "--yes", "database_url": "--database-url / DATABASE_URL"}
ALL_COMMANDS = {**COMMANDS, **COMPANIONS, **OPERATIONS}


def add_command_arguments(parser, command: str):
    """The options of ``command``, in the CLI and in Django: --file where it reads one, each
    ImportOptions field that does something for it, --yes where it asks, --json for the
    operations' reports."""
    if command in FILE_HELP:
        parser.add_argument("--file", "-f", metavar="DUMP" if command == "verify" else "PATH",
                            default=None if command in OPERATIONS else "-", help=FILE_HELP[command])
    for f, flag in ImportOptions.flags(command):
        text = flag.help_for.get(command, flag.help)
        if f.default is False:
            parser.add_argument(flag.name, dest=f.name, action="store_true", help=text)
            continue
        if f.default is not None:
            text += f" (default: {f.default})"
        parser.add_argument(flag.name, dest=f.name, type=flag.type, default=f.default,
                            metavar=flag.metavar, required=flag.required, help=text)
    if command in CONFIRMS:
        parser.add_argument("--yes", "-y", action="store_true", help=CONFIRMS[command])
    if command in OPERATIONS:
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def cli_option(name: str) -> str:
    """An option as the command line spells it in messages: --skip-header."""
    return FRONT_END_FLAGS.get(name) or ImportOptions.__dataclass_fields__[name].metadata["flag"].name


def django_option(name: str) -> str:
    """An option as the Django commands spell it: as the CLI, but their database is an alias."""
    return "the DATABASES setting (--database)" if name == "database_url" else cli_option(name)


def ask_on_terminal(question: str) -> bool | None:
    """The front ends' confirmation: ask on the terminal (standard input may be the dump);
    None when there is no terminal to ask on."""
    try:
        with open("/dev/tty", "r+") as tty:
            tty.write(question)
            tty.flush()
            return tty.readline().strip().lower() in ("y", "yes")
    except OSError:
        return None


def front_end_options(values: dict, verbosity: int) -> ImportOptions:
    """ImportOptions from a front end's parsed arguments, with what a front end chooses: a
    progress bar when stderr is a terminal (verbosity 1 or more), confirmations asked on the
    terminal unless --yes."""
    options = ImportOptions.from_mapping(values)
    options.progress = verbosity >= 1 and sys.stderr.isatty()
    options.confirm = True if values.get("yes") else ask_on_terminal
    return options


@contextlib.contextmanager
def notices(verbosity: int, stream):
    """Meanwhile, the library's notices on ``stream``: warnings always, the others from
    verbosity 1 (a Django command may run among others in one process: nothing stays)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("valdimport: %(message)s"))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO if verbosity >= 1 else logging.WARNING)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def report_text(report: Report, as_json: bool, form=python_option) -> str:
    return json.dumps(report.as_dict(form), indent=2, default=str) if as_json else report.table(form)


class _DjangoCommand(BaseCommand):
    """What the Django commands share: their arguments and how they run and fail. Verbosity
    as in the CLI: 0 no progress bar nor notices, 2 and more errors with their traceback."""

    command = None

    @property
    def help(self):
        return ALL_COMMANDS[self.command]

    def add_arguments(self, parser):
        add_command_arguments(parser, self.command)
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS,
                            help="the database alias (default: default)")

    def run(self, options: dict, work):
        """``work(ImportOptions)``; errors become one-line CommandErrors with their exit code."""
        verbosity = options["verbosity"]
        try:
            with notices(verbosity, sys.stderr):
                return work(front_end_options(options, verbosity))
        except ValdImportError as error:
            self._traceback(verbosity)
            raise CommandError(error.render(django_option), returncode=error.exit_code) from error
        except KeyboardInterrupt:
            raise CommandError(INTERRUPTED, returncode=EXIT_INTERRUPTED) from None
        except Exception as error:
            self._traceback(verbosity)
            raise CommandError(_first_line(error) + ("" if verbosity >= 2 else " (-v 2 shows the traceback)"),
                               returncode=EXIT_FAILED) from error

    @staticmethod
    def _traceback(verbosity: int):
        if verbosity >= 2:
            import traceback
            traceback.print_exc()


class ImportCommand(_DjangoCommand):
    """Base of the Django import commands: parse options, delegate, report."""

    def handle(self, *args, **options):
        summary = self.run(options, lambda o: run_command(
            self.command, options["file"], using=options["database"], options=o, form=django_option))
        print_output(summary.table(django_option), self.stdout.write)
        if summary.exit_code == EXIT_FAILED:
            raise CommandError(summary.verified.verdict, returncode=EXIT_FAILED)
        if summary.tally.rejected:
            raise CommandError(f"{summary.tally.rejected:,} lines rejected: see {summary.reject_file}",
                               returncode=EXIT_REJECTED)


class OperationCommand(_DjangoCommand):
    """Base of the Django commands verify, check_indexes, runs, rollback, housekeeping."""

    def handle(self, *args, **options):
        report = self.run(options, lambda o: run_operation(self.command, options["database"], o,
                                                            file=options.get("file")))
        print_output(report_text(report, options["json"], django_option), self.stdout.write)
        if not report.ok:
            raise CommandError(render_options(report.verdict, django_option), returncode=EXIT_FAILED)


def add_global_arguments(parser, after_command: bool = False):
    """--database-url, -v and -q: before the command, or after it (``after_command``: they
    then leave what was given before alone)."""
    unset = argparse.SUPPRESS if after_command else None
    parser.add_argument("--database-url", metavar="URL", default=unset,
                        help="sqlite:///PATH, postgres://USER@HOST:PORT/NAME or mysql://USER@HOST:PORT/NAME "
                             "(default: $DATABASE_URL, else sqlite:///vald.sqlite3)")
    parser.add_argument("-v", "--verbose", action="count", default=unset or 0,
                        help="show the traceback of an error (verbosity 2, as manage.py -v 2)")
    parser.add_argument("-q", "--quiet", action="store_true", default=unset or False,
                        help="no progress bar and no notices (verbosity 0, as manage.py -v 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="valdimport", description="Load a VALD line dump into a VAMDC node database.",
        epilog="Example: gunzip -c vald3.dat.gz | valdimport import-states")
    add_global_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in ALL_COMMANDS.items():
        command = commands.add_parser(name, help=help_text, description=help_text)
        add_command_arguments(command, name)
        add_global_arguments(command.add_argument_group("global options (before or after the command)"),
                             after_command=True)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    verbosity = 0 if args.quiet else 1 + args.verbose
    if DJANGO_MISSING is not None:
        print(f"valdimport: error: {DJANGO_MISSING}: install valdimport and its dependencies first "
              "(python3 -m venv .venv && .venv/bin/pip install -e .) and run it with .venv/bin/python",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        with notices(verbosity, sys.stderr):
            return _main(args, verbosity)
    except ValdImportError as error:
        return _fail(verbosity, error.render(cli_option), error.exit_code)
    except KeyboardInterrupt:
        print(f"valdimport: {INTERRUPTED}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        return _fail(verbosity, _first_line(error), EXIT_FAILED, hint=" (run with -v for the traceback)")


def _main(args, verbosity: int) -> int:
    """Run the command of the parsed ``args``; its exit status."""
    configure_django(args.database_url)
    options = front_end_options(vars(args), verbosity)
    if args.command in OPERATIONS:
        report = run_operation(args.command, DEFAULT_DB_ALIAS, options,
                               file=args.file if args.command == "verify" else None)
        print_output(report_text(report, args.json, cli_option))
        return EXIT_OK if report.ok else EXIT_FAILED
    summary = run_command(args.command, args.file, options=options, form=cli_option)
    print_output(summary.table(cli_option))
    return summary.exit_code


def print_output(text: str, write=print):
    """Print a result; when the reader of standard output has gone (``| head -2``), stop
    writing without a word (Python would otherwise report the broken pipe again at exit)."""
    try:
        write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _fail(verbosity: int, message: str, code: int, hint: str = "") -> int:
    if verbosity >= 2:
        import traceback
        traceback.print_exc()
    print(f"valdimport: error: {message}{'' if verbosity >= 2 else hint}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
