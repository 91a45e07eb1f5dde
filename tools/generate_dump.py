#!/usr/bin/env python3
"""Write realistic *synthetic* VALD transition dumps (test data and benchmark input).

The byte layout is the one of ``docs/format.md``: two header lines, then one
365-character fixed-width data line per transition (Fortran format
``2F15.5,I6,F8.3,2(F14.4,F6.1),3F7.2,2F7.3,F8.3,A2,A86,A2,A86,1X,A1,A7,1X,A16,9I4``),
each usually followed by a reference line.  Optionally the companion files
(species list CSV, line-list table, BibTeX references) are written, consistent
with the dump.  Only the Python standard library is used; the same arguments
always give byte-identical output (every random stream is a ``random.Random``
seeded from ``--seed`` and a fixed label, never global state, time or ``hash()``).

The bundled sample in ``tests/data`` was made, from the repository root, with::

    .venv/bin/python tools/generate_dump.py --records 2000 --seed 1 \\
        -o tests/data/sample.dat.gz --species-csv tests/data/species.csv \\
        --linelists tests/data/linelists.dat --bibtex tests/data/refs.bib

The benchmark input is ``--records 1000000 --species 300 --levels 1000``.

Choices (what the generator guarantees, so tests can rely on it)
-----------------------------------------------------------------
* Species index: atoms ``100*Z + ion stage`` (``Fe 1`` = 2601, ``Fe 2`` = 2602,
  ``H 1`` = 101, ``He 2`` = 202; stages 1..4); molecules ``10000 + n`` with ``n``
  the fixed position in the built-in molecule catalogue (``CO`` = 10001).
  About 80 % atoms, 20 % molecules, at least one molecule when S >= 3.  The
  first species are always Fe 1, CO, H 1, Fe 2, Ca 2, He 2, TiO, ... (as far as
  S allows), the rest is drawn at random.
* Levels are made once per species from a stream seeded by (seed, species
  index), so a species has the same levels whatever the number of records.
  Within a species no two levels share (energy to 4 decimals, J); every level
  prints identically (energy, J, Landé, coupling, description) wherever it is
  used.  Hydrogenic species (H 1, He 2, Li 3, Be 4) have at most 40 levels
  ``n=1..40`` with a blank coupling and J = n^2 - 1/2 (so 2J+1 = 2n^2).
  Ionisation energies above the first are rough synthetic estimates.
* The second and third level (by energy) of the first species (Fe 1) have an
  unknown J, printed blank and ``X`` respectively; being low-lying they are
  used by many transitions.
* Trailing-blank stripped data lines (about 5 %) are the ones whose last
  line-list ids are "none": there the zero ids are written as blank I4 fields
  (a blank I4 reads as 0 in Fortran) and the line is right-stripped, so it is
  333..361 characters long.  Everywhere else a missing id is printed ``   0``.
  Zero line-list ids only occur as a trailing run (ll9, ll8..ll9, ...), and the
  reference line then has one field per non-zero id (fewer than nine fields).
* Reference line field i is the key of line list ``ll<i>`` (the first field is
  always typed, e.g. ``wl:WA`` or ``wl:K14,iso:BWL``); keys ``Wa`` and ``WA`` are
  the energy and wavelength lists of Fe 1.  The reference lines use their own
  random stream, so ``--ref-fraction`` does not change the data lines.
* ``linelists.dat`` has no header row: ``srcfile<TAB>id<TAB>listtype<TAB>method``.
* The species CSV lists every species of the dump plus the neutral component
  atoms of its molecules that are not in the dump themselves.
"""
import argparse
import bisect
import bz2
import gzip
import hashlib
import lzma
import math
import os
import random
import sys

# ---------------------------------------------------------------------------
# Static data: elements, molecules, line lists, keys
# ---------------------------------------------------------------------------

SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn "
    "Ga Ge As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce "
    "Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At "
    "Rn Fr Ra Ac Th Pa U").split()

MASSES = [
    1.008, 4.0026, 6.94, 9.0122, 10.81, 12.011, 14.007, 15.999, 18.998, 20.180,
    22.990, 24.305, 26.982, 28.085, 30.974, 32.06, 35.45, 39.948, 39.098, 40.078,
    44.956, 47.867, 50.942, 51.996, 54.938, 55.845, 58.933, 58.693, 63.546, 65.38,
    69.723, 72.630, 74.922, 78.971, 79.904, 83.798, 85.468, 87.62, 88.906, 91.224,
    92.906, 95.95, 98.0, 101.07, 102.91, 106.42, 107.87, 112.41, 114.82, 118.71,
    121.76, 127.60, 126.90, 131.29, 132.91, 137.33, 138.91, 140.12, 140.91, 144.24,
    145.0, 150.36, 151.96, 157.25, 158.93, 162.50, 164.93, 167.26, 168.93, 173.05,
    174.97, 178.49, 180.95, 183.84, 186.21, 190.23, 192.22, 195.08, 196.97, 200.59,
    204.38, 207.2, 208.98, 209.0, 210.0, 222.0, 223.0, 226.0, 227.0, 232.04,
    231.04, 238.03]

# first ionisation energies, eV
IE1 = [
    13.598, 24.587, 5.392, 9.323, 8.298, 11.260, 14.534, 13.618, 17.423, 21.565,
    5.139, 7.646, 5.986, 8.152, 10.487, 10.360, 12.968, 15.760, 4.341, 6.113,
    6.561, 6.828, 6.746, 6.767, 7.434, 7.902, 7.881, 7.640, 7.726, 9.394,
    5.999, 7.899, 9.789, 9.752, 11.814, 14.000, 4.177, 5.695, 6.217, 6.634,
    6.759, 7.092, 7.280, 7.361, 7.459, 8.337, 7.576, 8.994, 5.786, 7.344,
    8.608, 9.010, 10.451, 12.130, 3.894, 5.212, 5.577, 5.539, 5.473, 5.525,
    5.582, 5.644, 5.670, 6.150, 5.864, 5.939, 6.022, 6.108, 6.184, 6.254,
    5.426, 6.825, 7.550, 7.864, 7.834, 8.438, 8.967, 8.959, 9.226, 10.438,
    6.108, 7.417, 7.286, 8.414, 9.318, 10.749, 4.073, 5.278, 5.380, 6.307,
    5.890, 6.194]

assert len(SYMBOLS) == len(MASSES) == len(IE1) == 92
Z_OF = {s: i + 1 for i, s in enumerate(SYMBOLS)}

EV_TO_CM = 8065.54
RYDBERG_INF = 109737.31568  # cm^-1
ELECTRON_AMU = 5.48579909e-4
STAGE_FACTOR = (1.0, 2.0, 3.9, 6.9, 10.5, 15.0, 20.0, 26.0, 33.0, 41.0)  # crude IE(stage)/IE(1)
MAX_STAGE = 4  # ions up to this stage, and up to HIGH_STAGE when more species are asked for
HIGH_STAGE = 10

# name, components, ionisation energy (eV, None = estimate), InChI (None = from
# the Hill formula), ground state (2S+1, |Lambda|) or None
MOLECULES = [
    ("CO", "C O", 14.014, "InChI=1S/CO/c1-2", (1, 0)),
    ("TiO", "Ti O", 6.82, None, (3, 2)),
    ("C2", "C C", 11.4, "InChI=1S/C2/c1-2", (1, 0)),
    ("C2H2", "C C H H", 11.40, "InChI=1S/C2H2/c1-2/h1,2H", (1, 0)),
    ("OH", "O H", 13.017, "InChI=1S/HO/h1H", (2, 1)),
    ("CN", "C N", 13.6, "InChI=1S/CN/c1-2", (2, 0)),
    ("H2O", "H H O", 12.621, "InChI=1S/H2O/h1H2", (1, 0)),
    ("CH", "C H", 10.64, "InChI=1S/CH/h1H", (2, 1)),
    ("NH", "N H", 13.49, "InChI=1S/HN/h1H", (3, 0)),
    ("MgH", "Mg H", None, None, (2, 0)),
    ("SiO", "Si O", 11.3, None, (1, 0)),
    ("FeH", "Fe H", None, None, (4, 3)),
    ("CrH", "Cr H", None, None, (6, 0)),
    ("VO", "V O", 7.25, None, (4, 0)),
    ("ZrO", "Zr O", 6.8, None, (1, 0)),
    ("YO", "Y O", 6.0, None, (2, 0)),
    ("CaH", "Ca H", None, None, (2, 0)),
    ("AlH", "Al H", None, None, (1, 0)),
    ("SiH", "Si H", None, None, (2, 1)),
    ("TiH", "Ti H", None, None, (4, 3)),
    ("N2", "N N", 15.58, "InChI=1S/N2/c1-2", (1, 0)),
    ("O2", "O O", 12.07, "InChI=1S/O2/c1-2", (3, 0)),
    ("H2", "H H", 15.43, "InChI=1S/H2/h1H", (1, 0)),
    ("NO", "N O", 9.26, "InChI=1S/NO/c1-2", (2, 1)),
    ("CS", "C S", 11.33, "InChI=1S/CS/c1-2", (1, 0)),
    ("SiS", "Si S", None, None, None),
    ("TiS", "Ti S", None, None, None),
    ("ZrS", "Zr S", None, None, None),
    ("FeO", "Fe O", None, None, None),
    ("CrO", "Cr O", None, None, None),
    ("CO2", "C O O", 13.78, "InChI=1S/CO2/c2-1-3", (1, 0)),
    ("HCN", "H C N", 13.6, "InChI=1S/CHN/c1-2/h1H", (1, 0)),
    ("C3", "C C C", 11.6, "InChI=1S/C3/c1-3-2", (1, 0)),
    ("NH3", "N H H H", 10.07, "InChI=1S/H3N/h1H3", (1, 0)),
    ("SO", "S O", 10.29, None, (3, 0)),
    ("SO2", "S O O", 12.35, "InChI=1S/O2S/c1-3-2", (1, 0)),
    ("PN", "P N", None, None, None),
    ("PO", "P O", None, None, None),
    ("CP", "C P", None, None, None),
    ("SiC", "Si C", None, None, None),
    ("BH", "B H", None, None, None),
    ("LiH", "Li H", None, None, None),
    ("BeH", "Be H", None, None, None),
    ("CeO", "Ce O", None, None, None),
    ("YS", "Y S", None, None, None),
    ("LaS", "La S", None, None, None),
    ("PH", "P H", None, None, None),
    ("AlCl", "Al Cl", None, None, None),
    ("AlF", "Al F", None, None, None),
    ("CaF", "Ca F", None, None, None),
    ("CaCl", "Ca Cl", None, None, None),
    ("MgF", "Mg F", None, None, None),
    ("NaCl", "Na Cl", None, None, None),
    ("KCl", "K Cl", None, None, None),
    ("TiCl", "Ti Cl", None, None, None),
    ("FeCl", "Fe Cl", None, None, None),
    ("CuH", "Cu H", None, None, None),
    ("NiH", "Ni H", None, None, None),
    ("ZnH", "Zn H", None, None, None),
    ("CoH", "Co H", None, None, None),
    ("MnH", "Mn H", None, None, None),
    ("SiN", "Si N", None, None, None),
    ("BF", "B F", None, None, None),
    ("C2H", "C C H", None, None, None),
    ("HCO", "H C O", None, None, None),
    ("LaO", "La O", None, None, None),
    ("ScO", "Sc O", None, None, None),
    ("AlO", "Al O", None, None, None),
    ("CaO", "Ca O", None, None, None),
    ("MgO", "Mg O", None, None, None),
    ("SH", "S H", None, None, None),
    ("HCl", "H Cl", None, None, None),
    ("HF", "H F", None, None, None),
    ("NaH", "Na H", None, None, None),
    ("KH", "K H", None, None, None),
    ("BO", "B O", None, None, None),
]

PRIORITY = ["Fe 1", "CO", "H 1", "Fe 2", "Ca 2", "He 2", "TiO", "Ti 1", "C2", "Ar 1",
            "Xe 2", "C2H2", "Ni 1", "OH", "Cr 1", "CN", "Si 1", "Mg 1", "Na 1", "H2O"]

# line lists: id -> (key, kind, method, listtype, secondary key or None)
ATOMIC_KEYS = ["K14", "WA", "Wa", "BWL", "FMW", "MFW", "KP", "BGHL", "RU", "WSM",
               "BPM", "GARZ", "KR", "NIST10", "K07", "K10", "BK", "LGZ", "MRW", "WLSC",
               "PQWB", "JLZ", "BBPK", "SLS", "CB", "DLSSC", "HLGN", "RL", "LWST", "BKK"]
MOLECULAR_KEYS = ["CO94", "TiOp", "OH11", "CN14", "C2ph", "H2Obt", "KMol", "MolCH",
                  "FeHd", "VOex"]
SECONDARY_KEYS = {"K14": "K14b", "FMW": "FW06", "RU": "RU13", "KP": "KP2",
                  "NIST10": "NIST", "CO94": "GH94"}
EXTRA_FIRST = [("iso", "BWL"), ("iso", "IS14"), ("hfs", "HFS09"), ("hfs", "AHK")]
FIELD_TYPES = ["wl", "gf", "elo", "eup", "lande", "rad", "stark", "waals", "term"]


def _build_linelists():
    lists = {}
    methods = [-1, 0, 1, 2, 3, 4, 5]
    for i, key in enumerate(ATOMIC_KEYS):
        lid = i + 1
        method = methods[(i * 3 + 1) % len(methods)]
        listtype = ("atomic", "atomic", "hfs", "atomic", "iso")[i % 5]
        lists[lid] = (key, "atom", method, listtype, SECONDARY_KEYS.get(key),
                      f"ATOMS/{key}/{key}_lines.bin")
    for i, key in enumerate(MOLECULAR_KEYS):
        lid = len(ATOMIC_KEYS) + i + 1
        method = methods[(i * 5 + 2) % len(methods)]
        lists[lid] = (key, "mol", method, "molecular", SECONDARY_KEYS.get(key),
                      f"MOLECULES/{key}/{key}_lines.bin")
    return lists


LINELISTS = _build_linelists()
LIST_ID = {v[0]: k for k, v in LINELISTS.items()}
ATOMIC_LIST_IDS = [k for k, v in LINELISTS.items() if v[1] == "atom"]
MOLECULAR_LIST_IDS = [k for k, v in LINELISTS.items() if v[1] == "mol"]

ORB = "spdfghik"
LLET = "SPDFGHIKLMN"
EVEN_PREFIX = "abcdefgh"
ODD_PREFIX = "zyxwvuts"
NIST_CLASSES = ["AAA", "AA", "A+", "A", "B+", "B", "C+", "C", "D+", "D", "D-", "E"]
COMMENTS = ["HFS", "blend", "isotope 13C", 'see "NIST"', "Kurucz's calc", "unc. 50%",
            "fit\\lab", "IS", "tentative", "Ritz", "w/o HFS", "perturbed", "blend w\\ Fe",
            "'doubtful'", "10% blend", "lab"]
MIN_DE4 = 100000  # 10 cm^-1: no transition longer than 1e7 A

# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def half(x2):
    """A doubled quantum number as text: 7 -> '7/2', 4 -> '2'."""
    return str(x2 // 2) if x2 % 2 == 0 else f"{x2}/2"


def fnum(fmt, value, decimals):
    """Format without a negative zero."""
    return fmt % (round(value, decimals) + 0.0)


def energy_str(e4):
    return f"{e4 // 10000}.{e4 % 10000:04d}".rjust(14)


def hill_formula(symbols):
    counts = {}
    for s in symbols:
        counts[s] = counts.get(s, 0) + 1
    order = []
    if "C" in counts:
        order = ["C"] + (["H"] if "H" in counts else [])
    order += sorted(s for s in counts if s not in order)
    return "".join(s + (str(counts[s]) if counts[s] > 1 else "") for s in order)


def inchikey(inchi):
    digest = hashlib.sha256(inchi.encode("ascii")).digest()
    letters = "".join(chr(65 + b % 26) for b in digest)
    return f"{letters[:14]}-{letters[14:22]}SA-N"


class Level:
    __slots__ = ("e4", "j2", "g", "line", "ell")

    def __init__(self, e4, j2, g, line, ell):
        self.e4 = e4      # energy x 1e4 (int)
        self.j2 = j2      # 2J (int) or None when unknown
        self.g = g        # printed Lande value (float) or None when 99.00
        self.line = line  # (energy F14.4, J F6.1, Lande F7.2, coupling A2 + term A86)
        self.ell = ell    # line list id of the energy


class Species:
    def __init__(self, index, name, kind, z=0, stage=0, comps=(), ie_ev=0.0, mass=0.0,
                 inchi="", mol_ground=None):
        self.index = index
        self.name = name
        self.kind = kind          # 'atom' or 'mol'
        self.z = z
        self.stage = stage
        self.comps = list(comps)  # component atom symbols (molecules)
        self.ie_ev = ie_ev
        self.mass = mass
        self.inchi = inchi
        self.mol_ground = mol_ground
        self.levels = []
        self.nbound = 0
        self.hydrogenic = False
        self.jbuckets = {}


def atom_species(z, stage):
    sym = SYMBOLS[z - 1]
    hydrogenic = stage == z
    if hydrogenic:
        ie = RYDBERG_INF / (1 + ELECTRON_AMU / MASSES[z - 1]) * z * z / EV_TO_CM
    else:
        ie = IE1[z - 1] * STAGE_FACTOR[stage - 1]
    inchi = f"InChI=1S/{sym}" + (f"/q+{stage - 1}" if stage > 1 else "")
    sp = Species(100 * z + stage, f"{sym} {stage}", "atom", z=z, stage=stage, ie_ev=ie,
                 mass=MASSES[z - 1], inchi=inchi)
    sp.hydrogenic = hydrogenic
    return sp


def molecule_species(pos):
    name, comps, ie, inchi, ground = MOLECULES[pos]
    comps = comps.split()
    if ie is None:
        ie = round(sum(IE1[Z_OF[c] - 1] for c in comps) / len(comps), 3)
    if inchi is None:
        inchi = f"InChI=1S/{hill_formula(comps)}"
    mass = sum(MASSES[Z_OF[c] - 1] for c in comps)
    return Species(10001 + pos, name, "mol", comps=comps, ie_ev=ie, mass=mass, inchi=inchi,
                   mol_ground=ground)


# ---------------------------------------------------------------------------
# Species selection
# ---------------------------------------------------------------------------


def choose_species(n_species, seed):
    rng = random.Random(f"vald-synth/{seed}/species")
    atom_keys = [(z, st) for z in range(1, 93) for st in range(1, min(z, MAX_STAGE) + 1)]
    n_mol = 0 if n_species < 3 else max(1, round(0.2 * n_species))
    n_atom = n_species - n_mol
    if n_atom > len(atom_keys):  # highly charged ions too
        atom_keys += [(z, st) for z in range(1, 93) for st in range(MAX_STAGE + 1, min(z, HIGH_STAGE) + 1)]
    if n_atom > len(atom_keys):
        n_atom = len(atom_keys)
        n_mol = n_species - n_atom
    elif n_mol > len(MOLECULES):
        n_mol = len(MOLECULES)
        n_atom = n_species - n_mol
    if n_mol > len(MOLECULES) or n_atom > len(atom_keys):
        raise SystemExit(f"--species {n_species} is more than the {len(atom_keys)} atoms "
                         f"and {len(MOLECULES)} molecules this generator knows")
    mol_pos = {m[0]: i for i, m in enumerate(MOLECULES)}
    chosen_atoms, chosen_mols = [], []
    order = []
    for name in PRIORITY:
        if name in mol_pos:
            if len(chosen_mols) < n_mol:
                chosen_mols.append(mol_pos[name])
                order.append(("mol", mol_pos[name]))
        else:
            sym, st = name.split()
            key = (Z_OF[sym], int(st))
            if len(chosen_atoms) < n_atom:
                chosen_atoms.append(key)
                order.append(("atom", key))

    def weighted_pick(pool, weights, count):
        # weighted sampling without replacement (Efraimidis-Spirakis), deterministic
        scored = []
        for item, w in zip(pool, weights):
            u = rng.random()
            scored.append((-(u ** (1.0 / w)), item))
        scored.sort()
        return [item for _, item in scored[:count]]

    rest_atoms = [k for k in atom_keys if k not in chosen_atoms]
    weights = [(3.0 if z <= 30 else 1.0) * (2.0 if st <= 2 else 1.0) for z, st in rest_atoms]
    for key in weighted_pick(rest_atoms, weights, n_atom - len(chosen_atoms)):
        order.append(("atom", key))
    rest_mols = [i for i in range(len(MOLECULES)) if i not in chosen_mols]
    for pos in weighted_pick(rest_mols, [1.0] * len(rest_mols), n_mol - len(chosen_mols)):
        order.append(("mol", pos))
    out = []
    for kind, key in order:
        out.append(atom_species(*key) if kind == "atom" else molecule_species(key))
    return out


# ---------------------------------------------------------------------------
# Atomic levels
# ---------------------------------------------------------------------------

SHELL_TABLE = [  # (Zmin, Zmax, n, l) of the open shell of the neutral atom
    (1, 2, 1, 0), (3, 4, 2, 0), (5, 10, 2, 1), (11, 12, 3, 0), (13, 18, 3, 1),
    (19, 20, 4, 0), (21, 30, 3, 2), (31, 36, 4, 1), (37, 38, 5, 0), (39, 48, 4, 2),
    (49, 54, 5, 1), (55, 56, 6, 0), (57, 71, 4, 3), (72, 80, 5, 2), (81, 86, 6, 1),
    (87, 88, 7, 0), (89, 92, 5, 3)]


def shell_profile(z, stage):
    for zmin, zmax, n, l in SHELL_TABLE:
        if zmin <= z <= zmax:
            cap = 2 * (2 * l + 1)
            occ = max(1, min(cap, z - zmin + 1 - (stage - 1)))
            if l == 0:
                outs = [(n, 1), (n + 1, 0), (n + 1, 1), (n, 2), (n + 2, 0), (n + 1, 2),
                        (n, 3), (n + 2, 1), (n + 3, 0), (n + 1, 3), (n + 1, 4)]
            else:
                outs = [(n + 1, 0), (n + 1, 1), (n + 2, 0), (n + 1, 2), (n + 2, 1),
                        (n + 3, 0), (n + 1, 3), (n + 2, 2), (n + 2, 3), (n + 3, 4),
                        (n + 4, 0)]
            outs = [(a, b) for a, b in outs if b < a]
            return n, l, cap, occ, outs
    raise ValueError(z)


def orb(n, l, occ=1):
    return f"{n}{ORB[l]}{occ if occ > 1 else ''}"


def ls_terms_for(rng):
    """A random LS term: (multiplicity, L)."""
    mult = rng.choice((1, 2, 2, 3, 3, 4, 4, 5, 6, 7))
    big_l = rng.choice((0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 6))
    return mult, big_l


def j2_range(a2, b2):
    """Doubled values |a-b| .. a+b for doubled a, b."""
    return list(range(abs(a2 - b2), a2 + b2 + 1, 2))


def parent_term(rng, parity, k=None, l=None, cap=None):
    """A parent term (of k electrons in shell l when given), text without ')'."""
    if k is not None and (k == 1 or k == cap - 1):
        mult, big_l = 2, l
    elif k is not None and k == cap:
        mult, big_l = 1, 0
    else:
        mult, big_l = ls_terms_for(rng)
        if k is not None:
            mult = min(mult, min(k, cap - k) + 1)
    return mult, big_l, f"({mult}{LLET[big_l]}{'*' if parity else ''}"


def make_atom_term(rng, prof, ground=False, force_ls=False):
    """Return (coupling, config, term, [(J2, lande or None)])."""
    n, l, cap, occ, outs = prof
    r = rng.random()
    coupling = "LS" if ground or force_ls or r < 0.65 else ("JJ" if r < 0.77 else ("JK" if r < 0.90 else "LK"))
    if coupling == "LS":
        v = 0 if ground else rng.random()
        pieces = []
        parity = 0
        single_shell = False
        if v < 0.35:  # 3d6.4s2
            k = occ
            pieces.append(orb(n, l, k))
            parity += l * k
            o = outs[0]
            ko = 2 if (o[1] == 0 and rng.random() < 0.6) else 1
            pieces.append(orb(o[0], o[1], ko))
            parity += o[1] * ko
        elif v < 0.60:  # 3d7.(4F).4p
            k = max(1, occ - rng.randint(0, 1))
            pieces.append(orb(n, l, k))
            parity += l * k
            if 1 < k < cap:
                pieces.append(parent_term(rng, parity % 2, k, l, cap)[2] + ")")
            o = rng.choice(outs[:6])
            pieces.append(orb(*o))
            parity += o[1]
        elif v < 0.75:  # 3d6.(5D).4s.4p.(3P*)
            k = max(1, occ - 1)
            pieces.append(orb(n, l, k))
            parity += l * k
            pieces.append(parent_term(rng, parity % 2, k, l, cap)[2] + ")")
            o1, o2 = outs[0], rng.choice(outs[1:6])
            pieces.append(orb(*o1))
            pieces.append(orb(*o2))
            parity += o1[1] + o2[1]
            pl2 = rng.randint(abs(o1[1] - o2[1]), o1[1] + o2[1])
            star2 = "*" if (o1[1] + o2[1]) % 2 else ""
            pieces.append(f"({rng.choice((1, 3))}{LLET[pl2]}{star2})")
        elif v < 0.85:  # 2p6.3s2.3p : closed shell prefix
            pieces.append(orb(n, l, cap))
            parity += l * cap
            o1 = outs[0]
            pieces.append(orb(o1[0], o1[1], 2 if o1[1] == 0 else 1))
            parity += o1[1] * (2 if o1[1] == 0 else 1)
            o2 = rng.choice(outs[1:6])
            pieces.append(orb(*o2))
            parity += o2[1]
        else:  # 3d3 : a single open shell, seniority terms
            k = max(1, min(cap - 1, occ - rng.randint(0, 2))) if cap > 2 else max(1, occ)
            pieces.append(orb(n, l, k))
            parity += l * k
            single_shell = True
        parity %= 2
        mult, big_l = ls_terms_for(rng)
        if ground:
            mult, big_l = rng.choice(((5, 2), (4, 3), (3, 1), (2, 2), (1, 0), (6, 0)))
        star = "*" if parity else ""
        style = rng.random()
        base = f"{mult}{LLET[big_l]}"
        if ground:
            term = "a" + base + star
        elif single_shell and not parity and style < 0.6:
            term = base + str(rng.randint(1, 5))  # seniority: 3d3 2D2
        elif style < 0.60:
            term = (ODD_PREFIX if parity else EVEN_PREFIX)[rng.randrange(8)] + base + star
        elif style < 0.90:
            term = base + star
        else:  # 2p6.3s2.3p 3(3G)5H
            pm, pl = ls_terms_for(rng)
            term = f"{rng.randint(1, 4)}({pm}{LLET[pl]}){base}{star}"
        s2 = mult - 1
        levels = []
        for j2 in j2_range(2 * big_l, s2):
            if j2 == 0:
                g = 0.0
            else:
                jj, ss = j2 / 2, s2 / 2
                g = 1.0 + (jj * (jj + 1) + ss * (ss + 1) - big_l * (big_l + 1)) / (2 * jj * (jj + 1))
            levels.append((j2, round(g, 2)))
        return coupling, ".".join(pieces), term, levels

    # JJ, JK and LK: a core (parent) plus an outer electron
    k = max(1, occ - 1) if occ > 1 else 1
    core = orb(n, l, k)
    parity_core = (l * k) % 2
    pm, pl, ptxt = parent_term(rng, parity_core, k, l, cap)
    jc2 = rng.choice(j2_range(2 * pl, pm - 1))
    if coupling == "JJ":
        o = rng.choice(outs[:5])
        parity = (parity_core + o[1]) % 2
        j22 = max(1, 2 * o[1] + rng.choice((-1, 1)))
        if rng.random() < 0.5:
            config = f"{core}.{ptxt}<{half(jc2)}>).{orb(*outs[0])}.{orb(*o)}" \
                if o != outs[0] else f"{core}.{ptxt}<{half(jc2)}>).{orb(*o)}"
            if o != outs[0]:
                parity = (parity + outs[0][1]) % 2
        else:
            config = f"{core}.{orb(*o)}"
        term = f"({half(jc2)},{half(j22)})" + ("*" if parity else "")
        js = j2_range(jc2, j22)
    else:
        highl = [x for x in outs if x[1] >= 2] or outs
        o = rng.choice(highl)
        parity = (parity_core + o[1]) % 2
        star = "*" if parity else ""
        if coupling == "JK":
            config = f"{core}.{ptxt}<{half(jc2)}>).{orb(*o)}"
            k2 = rng.choice(j2_range(jc2, 2 * o[1]))
        else:
            ltot = rng.choice(list(range(abs(pl - o[1]), pl + o[1] + 1)))
            config = f"{core}.{ptxt}).{orb(*o)}\\ {LLET[ltot]}"
            k2 = rng.choice(j2_range(2 * ltot, 1))
        if coupling == "JK" and rng.random() < 0.3:
            term = f"(1/2)[{half(k2)}]{star}"
        else:
            term = f"2[{half(k2)}]{star}"
        js = j2_range(k2, 1)
    levels = [(j2, round(rng.uniform(0.3, 1.7), 2)) for j2 in js]
    return coupling, config, term, levels


QUIRKS = ("dq", "sq", "pct", "bs")


def apply_quirk(rng, kind, coupling, config, term):
    if kind == "dq":
        term += '"'
    elif kind == "sq":
        if coupling == "LK":
            term += "'"
        else:
            config += "'"
    elif kind == "pct":
        term += f" {rng.randint(40, 95)}%"
    else:
        term += "\\"
    return config, term


def make_levels_atom(sp, n_levels, rng, forced, ell_ids):
    ie_cm = sp.ie_ev * EV_TO_CM
    ie4 = int(round(ie_cm * 1e4))
    raw = []  # (e4, j2, g, coupling, desc)
    used = set()

    def unique(e4):
        while e4 in used:
            e4 += 1 + rng.randrange(97)
        used.add(e4)
        return e4

    if sp.hydrogenic:
        for n in range(1, min(n_levels, 40) + 1):
            e4 = unique(int(round(ie_cm * (1.0 - 1.0 / (n * n)) * 1e4)))
            raw.append((e4, 2 * n * n - 1, None, "  ", f"n={n}", 0))
    else:
        prof = shell_profile(sp.z, sp.stage)
        n_ai = max(1, round(0.05 * n_levels)) if n_levels >= 8 else 0
        n_bound = n_levels - n_ai
        term_no = 0
        forced_quirks = list(QUIRKS) if forced else []
        while len(raw) < n_levels:
            ground = term_no == 0
            ai = len(raw) >= n_bound
            # J is integer for an even number of electrons, half-integer otherwise
            want = (sp.z - sp.stage + 1) % 2
            for attempt in range(200):
                coupling, config, term, jl = make_atom_term(rng, prof, ground=ground,
                                                            force_ls=attempt >= 20)
                if all(j2 % 2 == want for j2, _ in jl):
                    break
            else:
                raise AssertionError("no term with the right J parity")
            quirk = None
            if not ground:
                if forced_quirks:
                    quirk = forced_quirks.pop(0)
                elif rng.random() < 0.006:
                    quirk = rng.choice(QUIRKS)
            if quirk:
                config, term = apply_quirk(rng, quirk, coupling, config, term)
            desc = f"{config} {term}"
            room = (n_levels if ai else n_bound) - len(raw)
            if len(jl) > room:
                jl = jl[:room]
            c = rng.uniform(1.0, 60.0) * (1 if (ai or ground or rng.random() < 0.6) else -1)
            jmin = jl[0][0] / 2
            offs = [c * ((j2 / 2) * (j2 / 2 + 1) - jmin * (jmin + 1)) for j2, _ in jl]
            if ground:
                base = -min(offs)
            elif ai:
                base = ie_cm * (1.003 + 0.25 * rng.random()) + 1.0
            else:
                base = ie_cm * (0.02 + 0.95 * rng.betavariate(2.2, 1.3))
                lowest = base + min(offs)
                if lowest < 50.0:
                    base += 50.0 - lowest
            if not ground and base + min(offs) < 0:
                offs = [abs(o) for o in offs]
            ell = rng.choice(ell_ids)
            for (j2, g), off in zip(jl, offs):
                e4 = int(round((base + off) * 1e4))
                if ground and off == min(offs):
                    e4 = 0
                raw.append((unique(e4), j2, g, coupling, desc, ell))
            term_no += 1
    # sort by energy; level 0 is the ground level at 0.0000
    raw.sort(key=lambda t: t[0])
    assert raw[0][0] == 0, "the ground level must be at 0.0000"
    raw = [list(r) for r in raw]
    n = len(raw)
    same_pair = set()
    if not sp.hydrogenic and n >= 20 and rng.random() < 0.3:
        # unresolved fine structure: two J levels of one term at the same energy
        for i in range(3, n - 1):
            a, b = raw[i], raw[i + 1]
            if a[4] == b[4] and a[1] != b[1] and a[0] < ie4 and b[0] < ie4:
                b[0] = a[0]
                same_pair = {i, i + 1}
                break
    unknown = {}
    if forced and n >= 3:
        unknown = {1: " ", 2: "X"}
    for i in range(1, n):
        if i not in unknown and i not in same_pair and rng.random() < 0.03:
            unknown[i] = rng.choice((" ", "X"))
    if sp.hydrogenic:
        ell_default = ell_ids[0]
    for i, r in enumerate(raw):
        e4, j2, g, coupling, desc = r[0], r[1], r[2], r[3], r[4]
        ell = r[5] if not sp.hydrogenic else ell_default
        if i in unknown:
            j2 = None
            jstr = "     X" if unknown[i] == "X" else "      "
            g = None
        else:
            jstr = "%6.1f" % (j2 / 2)
            if g is not None and rng.random() < 0.10:
                g = None
        gstr = "  99.00" if g is None else fnum("%7.2f", g, 2)
        line = (energy_str(e4), jstr, gstr, coupling + desc.ljust(86))
        sp.levels.append(Level(e4, j2, g, line, ell))
    sp.nbound = sum(1 for lv in sp.levels if lv.e4 < ie4) if not sp.hydrogenic else n


# ---------------------------------------------------------------------------
# Molecular levels
# ---------------------------------------------------------------------------


def make_levels_mol(sp, n_levels, rng, forced, ell_ids):
    homo = len(sp.comps) == 2 and sp.comps[0] == sp.comps[1]
    light = any(c == "H" for c in sp.comps)
    nstates = rng.randint(2, 5)
    if forced:
        nstates = max(3, nstates)
    gmult, glam = sp.mol_ground or (rng.choice((1, 2, 2, 3, 4)), rng.choice((0, 0, 1, 2)))
    # more levels than a molecule's usual bands hold: longer rotational ladders
    stretch = 1.0 if n_levels <= 1000 else n_levels / 400
    states = []
    tes = sorted(rng.uniform(4000.0, 45000.0) for _ in range(nstates - 1))
    upper_labels = iter("ABCDEFG")
    lower_labels = iter("abcdefg")
    for s in range(nstates):
        if s == 0:
            mult, lam, label, te = gmult, glam, "X", 0.0
        else:
            same = rng.random() < 0.65
            mult = gmult if same else rng.choice(
                [m for m in (1, 2, 3, 4, 5) if m != gmult and m % 2 == gmult % 2])
            lam = rng.choice((0, 1, 1, 2))
            label = next(upper_labels) if same else next(lower_labels)
            te = tes[s - 1]
        if forced and s < 3:
            case = ("Hb", "Ha", "Hb")[s]
        elif lam > 0 and mult > 1:
            case = "Ha" if rng.random() < 0.75 else "Hb"
        else:
            case = "Hb" if rng.random() < 0.7 else "Ha"
        if case == "Ha" and lam == 0 and forced and s == 1:
            lam = 1  # the forced Hund's case (a) state is a Pi state
        zero_parity = case == "Hb" and ((forced and s == 2) or (not forced and rng.random() < 0.15))
        minus_sigma = lam == 0 and rng.random() < 0.2
        we = rng.uniform(1500.0, 3500.0) if light else rng.uniform(400.0, 2200.0)
        be = rng.uniform(5.0, 18.0) if light else rng.uniform(0.15, 2.0)
        states.append(dict(
            label=label, mult=mult, lam=lam, te=te, case=case, zero=zero_parity,
            minus=minus_sigma, we=we, wexe=we * rng.uniform(0.004, 0.02), be=be,
            alpha=be * rng.uniform(0.005, 0.015), aso=rng.uniform(-120.0, 120.0),
            gamma=rng.uniform(-0.05, 0.05), q=rng.uniform(1e-4, 5e-3),
            vmax=(12 if s == 0 else 6), jmax=round((40 if light else 120) * stretch),
            gu=("g" if s == 0 else rng.choice("gu")) if homo else None))
    sweights = [4.0] + [1.0] * (nstates - 1)
    cum = []
    tot = 0.0
    for w in sweights:
        tot += w
        cum.append(tot)
    zpe = states[0]["we"] * 0.5 - states[0]["wexe"] * 0.25
    seen = set()
    raw = []
    attempts = 0
    while len(raw) < n_levels:
        attempts += 1
        if attempts > 200 * n_levels + 10000:
            raise SystemExit(f"cannot make {n_levels} distinct levels for {sp.name}; "
                             "use fewer --levels")
        si = bisect.bisect(cum, rng.random() * tot)
        st = states[si]
        v = min(st["vmax"], int(-math.log(1.0 - rng.random()) * 2.0))
        kk = int(rng.random() ** 1.5 * st["jmax"])
        s2 = st["mult"] - 1
        lam = st["lam"]
        sigmas2 = list(range(-s2, s2 + 1, 2))
        sig2 = rng.choice(sigmas2)
        if st["case"] == "Ha":
            om2 = abs(2 * lam + sig2)
            j2 = om2 + 2 * kk
            par = rng.choice("ef")
            key = (si, v, om2, j2, par)
        else:
            nrot = lam + kk
            j2 = 2 * nrot + sig2
            if j2 < 0 or (nrot == 0 and sig2 != s2) or j2 < abs(2 * nrot - s2):
                continue
            if st["zero"]:
                par = "0"
            elif lam == 0:
                par = "+" if (nrot % 2 == 0) != st["minus"] else "-"
            else:
                par = rng.choice("+-")
            key = (si, v, nrot, j2, par)
        if key in seen:
            continue
        seen.add(key)
        vh = v + 0.5
        jj = j2 / 2
        e = st["te"] + st["we"] * vh - st["wexe"] * vh * vh - zpe
        bv = max(0.01, st["be"] - st["alpha"] * vh)
        if st["case"] == "Ha":
            om = om2 / 2
            e += st["aso"] * lam * (sig2 / 2) + bv * (jj * (jj + 1) - om * om)
            e += (1 if par == "e" else -1) * st["q"] * jj * (jj + 1) / 2
            omtxt = str(om2 // 2) if om2 % 2 == 0 else "%.1f" % om
            desc = f"{st['label']},{st['mult']},{lam},{par},{omtxt},{v}"
            if jj > 0:
                sgn = sig2 / 2 if 2 * lam + sig2 >= 0 else -sig2 / 2
                g = (lam + 2.0023 * sgn) * om / (jj * (jj + 1))
            else:
                g = 0.0
        else:
            e += bv * nrot * (nrot + 1) + st["gamma"] * (sig2 / 2) * (nrot + 0.5)
            if lam > 0:
                e += (1 if par == "+" else -1) * st["q"] * nrot * (nrot + 1) / 2
            desc = f"{st['label']},{st['mult']},{lam},{par},{nrot},{v}"
            if jj > 0:
                ss = s2 / 2
                g = 2.0023 * (jj * (jj + 1) + ss * (ss + 1) - nrot * (nrot + 1)) / (2 * jj * (jj + 1))
            else:
                g = 0.0
        if st["gu"]:
            desc += "," + st["gu"]
        raw.append([int(round(e * 1e4)), j2, round(g, 2), st["case"], desc])
    raw.sort(key=lambda r: r[0])
    shift = raw[0][0]
    used = set()
    for r in raw:
        e4 = r[0] - shift
        while e4 in used:
            e4 += 1
        used.add(e4)
        r[0] = e4
    raw.sort(key=lambda r: r[0])
    n = len(raw)
    unknown = {}
    for i in range(1, n):
        if rng.random() < 0.03:
            unknown[i] = rng.choice((" ", "X"))
    for i, (e4, j2, g, case, desc) in enumerate(raw):
        if i in unknown:
            j2, g = None, None
            jstr = "     X" if unknown[i] == "X" else "      "
        else:
            jstr = "%6.1f" % (j2 / 2)
            if rng.random() < 0.10:
                g = None
        gstr = "  99.00" if g is None else fnum("%7.2f", g, 2)
        line = (energy_str(e4), jstr, gstr, case + desc.ljust(86))
        sp.levels.append(Level(e4, j2, g, line, rng.choice(ell_ids)))
    sp.nbound = n


def setup_species(sp, n_levels, seed, forced_atom, forced_mol):
    rng = random.Random(f"vald-synth/{seed}/levels/{sp.index}")
    pool = ATOMIC_LIST_IDS if sp.kind == "atom" else MOLECULAR_LIST_IDS
    sp.wl_lists = rng.sample(pool, rng.randint(1, 3))
    sp.gf_lists = rng.sample(pool, rng.randint(1, 2))
    ell_ids = rng.sample(pool, rng.randint(1, 2))
    sp.lande_list = rng.choice(pool)
    sp.damp_list = rng.choice(pool)
    sp.term_list = rng.choice(pool)
    if forced_atom:
        sp.wl_lists = [LIST_ID["WA"], LIST_ID["K14"], LIST_ID["FMW"]]
        ell_ids = [LIST_ID["Wa"], LIST_ID["Wa"], LIST_ID["NIST10"]]
    if sp.kind == "atom":
        make_levels_atom(sp, n_levels, rng, forced_atom, ell_ids)
    else:
        make_levels_mol(sp, n_levels, rng, forced_mol, ell_ids)
    sp.nlev = len(sp.levels)
    buckets = {}
    for i in range(sp.nbound):
        j2 = sp.levels[i].j2
        if j2 is not None:
            buckets.setdefault(j2, []).append(i)
    sp.jbuckets = buckets
    sp.ie4 = int(round(sp.ie_ev * EV_TO_CM * 1e4))
    sp.idstr = "%6d" % sp.index


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------


class Generator:
    def __init__(self, args):
        self.args = args
        self.species = choose_species(args.species, args.seed)
        first_mol = True
        for i, sp in enumerate(self.species):
            forced_mol = sp.kind == "mol" and first_mol
            if sp.kind == "mol":
                first_mol = False
            setup_species(sp, args.levels, args.seed, i == 0, forced_mol)
        wrng = random.Random(f"vald-synth/{args.seed}/weights")
        weights = []
        for i, sp in enumerate(self.species):
            w = min(25.0, 0.3 + wrng.paretovariate(1.5)) * (0.6 if sp.kind == "mol" else 1.0)
            weights.append(w)
        if len(weights) > 1:
            weights[0] = 0.18 / 0.82 * sum(weights[1:])
        self.cum = []
        tot = 0.0
        for w in weights:
            tot += w
            self.cum.append(tot)
        self.total_weight = tot
        self.used_lists = set()
        self.used_keys = set()

    def header(self):
        a = self.args
        spread = max(sp.levels[-1].e4 - sp.levels[0].e4 for sp in self.species)
        lo = 1e12 / spread if spread > 0 else 0.0
        hi = 1e12 / MIN_DE4
        h1 = (f"Synthetic VALD3 extraction   Vacuum wavelength region: {lo:.5f} - {hi:.5f} A,"
              f"   Lines: {a.records},   Species: {len(self.species)},   Levels/species: {a.levels},"
              f"   Seed: {a.seed}")
        cols = [(0, "WL_ritz(A)"), (15, "WL_meas(A)"), (30, "Spec"), (36, "log_gf"),
                (44, "E_low(cm-1)"), (58, "J_lo"), (64, "E_up(cm-1)"), (78, "J_up"),
                (84, "Lan_lo"), (91, "Lan_up"), (98, "Lan_mn"), (105, "G_rad"),
                (112, "G_Stk"), (119, "G_Waals"), (127, "Lower level (coupling, configuration, term)"),
                (215, "Upper level (coupling, configuration, term)"), (304, "Accur"),
                (311, "T"), (312, "B"), (313, "Comment"), (329, "ll1-ll9 (line lists)")]
        h2 = ""
        for col, title in cols:
            h2 = h2.ljust(col) + title
        return h1 + "\n" + h2.rstrip() + "\n"

    def records(self):
        """Yield text chunks (several records each)."""
        a = self.args
        rng = random.Random(f"vald-synth/{a.seed}/records")
        rrng = random.Random(f"vald-synth/{a.seed}/references")
        rnd = rng.random
        species = self.species
        cum = self.cum
        tot = self.total_weight
        ref_fraction = a.ref_fraction
        used_lists = self.used_lists
        used_keys = self.used_keys
        ll_fmt = ["%4d" % i for i in range(0, 100)]
        blank16 = " " * 16
        out = []
        for rec in range(a.records):
            sp = species[bisect.bisect(cum, rnd() * tot)]
            levels = sp.levels
            nb = sp.nbound
            n = sp.nlev
            u = rnd()
            tflag = " "
            auto = False
            if nb < n and u < 0.03:
                auto = True
                tflag = "A"
            elif u < 0.9:
                pass
            elif u < 0.903:
                tflag = "A"  # flag A with lower < upper: treated as E1
            elif u < 0.918:
                tflag = "B"
            elif u < 0.933:
                tflag = "C"
            elif u < 0.937:
                tflag = "D"
            elif u < 0.940:
                tflag = "E"
            elif u < 0.943:
                tflag = "F"
            if auto:
                for _ in range(50):
                    lo = levels[nb + int(rnd() * (n - nb))]
                    up = levels[int(rnd() * nb)]
                    if lo.e4 - up.e4 >= MIN_DE4:
                        break
                else:
                    lo, up = levels[n - 1], levels[0]
                de = lo.e4 - up.e4
            else:
                for _ in range(100):
                    i = int(nb * rnd() * rnd())
                    li = levels[i]
                    if li.j2 is not None and tflag == " " and rnd() < 0.92 and not sp.hydrogenic:
                        bk = sp.jbuckets
                        j2 = li.j2
                        cands = [bk.get(j2 - 2), bk.get(j2), bk.get(j2 + 2)]
                        cands = [c for c in cands if c]
                        if j2 == 0:
                            cands = [c for c in cands if c is not bk.get(0)]
                        if not cands:
                            continue
                        c = cands[int(rnd() * len(cands))]
                        lj = levels[c[int(rnd() * len(c))]]
                    else:
                        lj = levels[int(rnd() * nb)]
                    de = lj.e4 - li.e4
                    if de >= MIN_DE4:
                        lo, up = li, lj
                        break
                    if de <= -MIN_DE4:
                        lo, up, de = lj, li, -de
                        break
                else:
                    lo = levels[0]
                    up = max(levels[:nb], key=lambda lv: lv.e4)
                    de = up.e4 - lo.e4
            ritz = 1e12 / de
            ritz_s = "%15.5f" % ritz
            if rnd() < 0.3:
                meas_s = "%15.5f" % (ritz * (1.0 + (rnd() - 0.5) * 6e-7))
            else:
                meas_s = "               "
            g = rng.gauss(-2.5, 1.8)
            if g < -9.9:
                g = -9.9 + rnd()
            elif g > 1.6:
                g = 1.6 - rnd()
            gf_s = fnum("%8.3f", g, 3)
            # Lande factors
            if lo.g is None or up.g is None or lo.j2 is None or up.j2 is None:
                mean_s = "  99.00"
            else:
                jl = lo.j2 / 2
                ju = up.j2 / 2
                gm = 0.5 * (lo.g + up.g) + 0.25 * (lo.g - up.g) * (jl * (jl + 1) - ju * (ju + 1))
                mean_s = fnum("%7.2f", gm, 2) if -999.0 < gm < 9999.0 else "  99.00"
            # damping
            gr_s = "  0.000" if rnd() < 0.2 else "%7.3f" % (6.0 + 3.0 * rnd())
            gs_s = "  0.000" if rnd() < 0.2 else "%7.3f" % (-7.0 + 3.0 * rnd())
            w = rnd()
            if w < 0.4:
                gw_s = "%8.3f" % (-8.5 + 2.0 * rnd())
            elif w < 0.8:
                gw_s = "%4d.%03d" % (100 + int(900 * rnd()), 100 + int(300 * rnd()))
            else:
                gw_s = "   0.000"
            # accuracy
            w = rnd()
            if w < 0.22:
                acc = "N" + NIST_CLASSES[int(rnd() * 12)].ljust(6)
            elif w < 0.37:
                acc = "E" + ("%.3f" % (0.005 + 0.6 * rnd() * rnd())).ljust(6)
            elif w < 0.42:
                acc = "C" + ("%.3f" % (rnd() * 0.99)).ljust(6)
            elif w < 0.52:
                acc = "P" + (("calc", "pred", "")[int(rnd() * 3)]).ljust(6)
            elif w < 0.62:
                acc = "_" + (NIST_CLASSES[int(rnd() * 12)] if rnd() < 0.4 else "").ljust(6)
            else:
                acc = "       "
            bflag = " " if rnd() < 0.4 else str(int(rnd() * 8))
            comment = blank16 if rnd() < 0.92 else COMMENTS[int(rnd() * len(COMMENTS))].ljust(16)
            # line lists
            wl = sp.wl_lists
            ll1 = wl[0] if (len(wl) == 1 or rnd() < 0.6) else wl[int(rnd() * len(wl))]
            ll2 = ll1 if rnd() < 0.75 else sp.gf_lists[int(rnd() * len(sp.gf_lists))]
            ll5 = sp.lande_list if rnd() < 0.8 else ll1
            ll6 = sp.damp_list if rnd() < 0.7 else ll1
            lls = [ll1, ll2, lo.ell, up.ell, ll5, ll6, ll6, ll6, sp.term_list]
            strip = rnd() < 0.05
            if strip:
                nz = 1 + int(8 * rnd() * rnd())
            else:
                w = rnd()
                nz = 0 if w < 0.7 else (1 if w < 0.95 else 2)
            nf = 9 - nz
            for k in range(nf):
                used_lists.add(lls[k])
            tail = "".join(ll_fmt[x] for x in lls[:nf])
            tail += ("    " if strip else "   0") * nz
            line = (ritz_s + meas_s + sp.idstr + gf_s
                    + lo.line[0] + lo.line[1] + up.line[0] + up.line[1]
                    + lo.line[2] + up.line[2] + mean_s + gr_s + gs_s + gw_s
                    + lo.line[3] + up.line[3] + " " + acc + tflag + bflag + comment + tail)
            if strip:
                line = line.rstrip(" ")
            out.append(line)
            if rnd() < ref_fraction:
                out.append(self.reference_line(rrng, lls[:nf], used_keys))
            if len(out) >= 8192:
                yield "\n".join(out) + "\n"
                out = []
        if out:
            yield "\n".join(out) + "\n"

    @staticmethod
    def reference_line(rrng, lls, used_keys):
        fields = []
        for k, lid in enumerate(lls):
            key, _, _, _, alt, _ = LINELISTS[lid]
            if alt and rrng.random() < 0.1:
                key = alt
            used_keys.add(key)
            if k == 0:
                f = "wl:" + key
                if rrng.random() < 0.15:
                    typ, extra = EXTRA_FIRST[int(rrng.random() * len(EXTRA_FIRST))]
                    used_keys.add(extra)
                    f += f",{typ}:{extra}"
            elif rrng.random() < 0.25:
                f = f"{FIELD_TYPES[k]}:{key}"
            else:
                f = key
            fields.append(f)
        sep = "  " if rrng.random() < 0.1 else " "
        return sep.join(fields)


# ---------------------------------------------------------------------------
# Companion files
# ---------------------------------------------------------------------------


def write_species_csv(path, species):
    rows = {sp.index: sp for sp in species}
    for sp in species:
        if sp.kind == "mol":
            for c in sp.comps:
                idx = 100 * Z_OF[c] + 1
                if idx not in rows:
                    rows[idx] = atom_species(Z_OF[c], 1)
    lines = ["#VER 2026-11-23 synthetic",
             "Use,Index,Name,Charge,InChI,InChIkey,Mass,Ion. en.,Fract.,Num. comp.,N1,N2,N3,N4,Dummy"]
    for idx in sorted(rows):
        sp = rows[idx]
        if sp.kind == "atom":
            inchi = sp.inchi if "," not in sp.inchi else f'"{sp.inchi}"'
            comps = [idx]
            charge = sp.stage - 1
        else:
            inchi = f'"{sp.inchi}"'
            comps = [100 * Z_OF[c] + 1 for c in sp.comps]
            charge = 0
        ns = comps + [0] * (4 - len(comps))
        lines.append(",".join(str(x) for x in [
            1, idx, sp.name, charge, inchi, inchikey(sp.inchi), "%.4f" % sp.mass,
            "%.3f" % sp.ie_ev, "1.000", len(comps), ns[0], ns[1], ns[2], ns[3], 0]))
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write("\n".join(lines) + "\n")


def write_linelists(path, used):
    with open(path, "w", encoding="ascii", newline="\n") as f:
        for lid in sorted(used):
            key, _, method, listtype, _, src = LINELISTS[lid]
            f.write(f"{src}\t{lid}\t{listtype}\t{method}\n")


AUTHORS = ["Kurucz, R. L.", "Bi{\\'e}mont, E.", "Sch{\\\"o}ning, T.", "Fuhr, J. R.",
           "Wiese, W. L.", "Barklem, P. S.", "Piskunov, N.", "Ryabchikova, T.",
           "Kupka, F.", "Nilsson, H.", "Ruffoni, M. P.", "{Den Hartog}, E. A.",
           "Lawler, J. E.", "Kramida, A.", "{Pehlivan Rhodin}, A.", "Bard, A.", "Kock, M.",
           "M{\\\"u}ller, R.", "Ralchenko, Yu.", "Bergemann, M.", "Gurell, J.",
           "Bl{\\'e}ret, P.", "Quinet, P.", "Pal{\\'e}ologue, J.", "L{\\\"o}fgren, S."]
JOURNALS = ["A\\&A", "ApJS", "ApJ", "MNRAS", "J. Phys. B", "JQSRT", "Phys. Scr.",
            "At. Data Nucl. Data Tables", "Can. J. Phys."]
TOPICS = ["{Fe} {\\sc i}", "{Fe}~{\\sc ii}", "{Ti} {\\sc ii}", "{Cr} {\\sc i}",
          "the {CO} molecule", "{TiO}", "rare-earth ions", "{Ni} {\\sc i} and {Ni} {\\sc ii}",
          "{C$_2$}", "singly ionised {\\it iron}-group elements"]


def bib_entry(seed, key):
    r = random.Random(f"vald-synth/{seed}/bib/{key}")
    authors = " and ".join(r.sample(AUTHORS, r.randint(1, 4)))
    topic = TOPICS[r.randrange(len(TOPICS))]
    year = r.randint(1968, 2025)
    kind = r.choice(("article", "article", "article", "article", "misc", "book",
                     "inproceedings", "phdthesis", "techreport"))
    pct = r.choice(("5", "10", "25", "50"))
    if kind == "article":
        title = r.choice((f"Transition probabilities in {topic} accurate to {pct}\\%",
                          f"Oscillator strengths for {topic} lines",
                          f"{{Laboratory}} wavelengths and energy levels of {topic}"))
        body = [("author", authors), ("title", "{" + title + "}"),
                ("journal", JOURNALS[r.randrange(len(JOURNALS))]), ("year", str(year)),
                ("volume", str(r.randint(1, 700))), ("pages", f"{r.randint(1, 900)}--{r.randint(901, 999)}")]
    elif kind == "misc":
        body = [("author", authors), ("title", f"{{{{VALD}}}} line list for {topic} ({pct}\\% sample)"),
                ("howpublished", "{Data file}"), ("year", str(year)),
                ("note", "Energies revised by {M{\\\"u}ller} (private comm.)")]
    elif kind == "book":
        body = [("author", authors), ("title", f"Atomic Spectra of {topic}"),
                ("publisher", "{Springer}"), ("address", "Berlin"), ("year", str(year))]
    elif kind == "inproceedings":
        body = [("author", authors), ("title", f"New {topic} data: a {pct}\\% improvement"),
                ("booktitle", "{Proc. {IAU} Symp.}"), ("year", str(year)),
                ("pages", str(r.randint(1, 500)))]
    elif kind == "phdthesis":
        body = [("author", authors.split(" and ")[0]), ("title", f"Spectroscopy of {topic}"),
                ("school", "Universit{\\'e} de Li{\\`e}ge"), ("year", str(year))]
    else:
        body = [("author", authors), ("title", f"Energy levels of {topic}"),
                ("institution", "{NIST}"), ("number", f"TN-{r.randint(100, 999)}"),
                ("year", str(year))]
    lines = [f"@{kind}{{{key},"]
    for i, (name, value) in enumerate(body):
        comma = "," if i < len(body) - 1 else ""
        lines.append(f"  {name} = {{{value}}}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_bibtex(path, seed, keys):
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write("% Synthetic VALD references (generate_dump.py)\n\n")
        for key in sorted(keys):
            f.write(bib_entry(seed, key) + "\n")


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def open_output(path):
    """Return (binary stream, list of streams to close in order)."""
    if path == "-":
        return sys.stdout.buffer, []
    raw = open(path, "wb")
    if path.endswith(".gz"):
        stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0)
    elif path.endswith(".bz2"):
        stream = bz2.BZ2File(raw, "wb")
    elif path.endswith(".xz"):
        stream = lzma.LZMAFile(raw, "wb")
    else:
        return raw, [raw]
    return stream, [stream, raw]


def fraction(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def positive(minimum):
    def check(text):
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}")
        return value
    return check


def by_wavelength(chunks, run=500_000):
    """The records of ``chunks`` sorted by wavelength (measured, else Ritz; stable), in
    chunks of text: sorted runs of ``run`` records in temporary files, then merged, so
    that memory stays bounded whatever the number of records."""
    import heapq
    import tempfile

    def records(text):
        lines = text.split("\n")[:-1]
        i = 0
        while i < len(lines):
            data = lines[i]
            ref = lines[i + 1] if i + 1 < len(lines) and lines[i + 1][:1].islower() else None
            i += 2 if ref is not None else 1
            measured = data[15:30].strip()
            wave = float(measured) if measured and float(measured) != 0 else float(data[0:15])
            yield wave, data + ("\n" + ref if ref is not None else "")

    def spill(batch):
        batch.sort(key=lambda item: item[0])
        f = tempfile.TemporaryFile("w+", encoding="ascii")
        f.writelines(f"{wave!r}\t{text.replace(chr(10), chr(0))}\n" for wave, text in batch)
        f.seek(0)
        return f

    def read(f):
        for line in f:
            wave, _, text = line.rstrip("\n").partition("\t")
            yield float(wave), text.replace("\0", "\n")

    runs, batch = [], []
    for chunk in chunks:
        batch.extend(records(chunk))
        if len(batch) >= run:
            runs.append(spill(batch))
            batch = []
    runs.append(spill(batch))
    out = []
    for _, text in heapq.merge(*map(read, runs), key=lambda item: item[0]):
        out.append(text)
        if len(out) >= 8192:
            yield "\n".join(out) + "\n"
            out = []
    if out:
        yield "\n".join(out) + "\n"
    for f in runs:
        f.close()


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Write a synthetic VALD transition dump (format: docs/format.md) "
                    "and optionally its companion files.")
    p.add_argument("-o", "--output", default="-", metavar="PATH",
                   help="output dump; '-' (default) = stdout; .gz/.bz2/.xz compress")
    p.add_argument("--records", type=positive(0), default=2000, metavar="N",
                   help="number of transitions (data lines), default 2000")
    p.add_argument("--species", type=positive(1), default=30, metavar="S",
                   help="number of species, default 30")
    p.add_argument("--levels", type=positive(2), default=100, metavar="L",
                   help="levels per species, default 100 (hydrogenic species: at most 40)")
    p.add_argument("--seed", type=int, default=1, metavar="K", help="random seed, default 1")
    p.add_argument("--ref-fraction", type=fraction, default=1.0, metavar="F",
                   help="fraction of data lines followed by a reference line, default 1.0")
    p.add_argument("--species-csv", metavar="PATH", help="also write the species list CSV")
    p.add_argument("--linelists", metavar="PATH", help="also write linelists.dat (TAB-separated)")
    p.add_argument("--bibtex", metavar="PATH", help="also write the BibTeX references")
    p.add_argument("--order", choices=("generated", "wavelength"), default="generated",
                   help="record order: as generated (species at random, the default) or by "
                        "wavelength, as VALD writes its dumps")
    args = p.parse_args(argv)

    gen = Generator(args)
    stream, closers = open_output(args.output)
    try:
        stream.write(gen.header().encode("ascii"))
        chunks = gen.records() if args.order == "generated" else by_wavelength(gen.records())
        for chunk in chunks:
            stream.write(chunk.encode("ascii"))
        stream.flush()
    except BrokenPipeError:
        # the reader went away (e.g. "| head"): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    finally:
        for c in closers:
            c.close()
    if args.species_csv:
        write_species_csv(args.species_csv, gen.species)
    if args.linelists:
        write_linelists(args.linelists, gen.used_lists)
    if args.bibtex:
        write_bibtex(args.bibtex, args.seed, gen.used_keys)
    return 0


if __name__ == "__main__":
    sys.exit(main())
