"""The level index: every stored level key -> state id, in memory for the whole run."""
import numpy as np
import pytest

import valdimport as vi
from node_atom.models import State
from tests.conftest import content, expected_content, generate_dump, key_columns, write_dump
from tests.lines import data_line, dump


def test_keys_are_found_across_the_tail_and_the_merged_arrays():
    rng = np.random.default_rng(1)
    index = vi.LevelKeys()
    species = rng.integers(1, 999_999, 300_000)
    energy = rng.integers(-10**13, 10**13, 300_000)
    j = rng.integers(-1, 99_999, 300_000)
    keys = np.unique(vi.level_keys(species, energy, j))
    ids = np.arange(1, len(keys) + 1)
    order = rng.permutation(len(keys))
    for part in np.array_split(order, 37):  # batches of new keys, in any order
        index.add(keys[part], ids[part])
    assert len(index.keys) > 0 and len(index) == len(keys)  # the tail was merged at least once
    assert (index.lookup(keys) == ids).all()
    assert (index.lookup(keys + 1j) == -1).all()  # one energy step away: another level
    assert (key_columns(keys[:100])[0] * 131072 + key_columns(keys[:100])[2] + 1
            == keys[:100].real).all()


def test_sent_levels_hold_every_key_added_across_merges():
    rng = np.random.default_rng(2)
    keys = np.unique(vi.level_keys(rng.integers(1, 9_999, 200_000), rng.integers(0, 10**10, 200_000),
                                   rng.integers(-1, 999, 200_000)))
    sent, order = vi.SentLevels(), rng.permutation(len(keys))
    for part in np.array_split(order[:150_000], 11):
        sent.carry(keys[part])
    assert len(sent.hashes.keys) > 0  # merged at least once
    assert carried(sent, keys[order[:150_000]]).all()
    assert not carried(sent, keys[order[150_000:]]).any()
    again = vi.SentLevels(sent.all_hashes())  # as a parser process receives them
    assert carried(again, keys[order[:150_000]]).all()


def carried(sent, keys):
    return sent.hashes.contains(vi.level_hashes(keys))


@pytest.mark.parametrize("parts", [(2601, 57404501, 40), (1, 0, -1), (999999, 9999999999999, 99999),
                                   (10001, -125000, 5), (26, -9999999999999, -1)])
def test_array_keys_equal_the_reference_parser_keys(parts):
    key = vi.level_keys(*(np.array([p]) for p in parts))[0]
    assert key == vi.level_key(*parts)
    assert tuple(int(c[0]) for c in key_columns(np.array([key]))) == parts


def test_more_distinct_levels_than_any_batch(engine, tmp_path):
    path = generate_dump(tmp_path / "many.dat", records=1500, seed=5, species=20, levels=400)
    summary = vi.import_dump(str(path), using=engine, batch_size=40, workers=1)
    expected = expected_content(path)
    assert len(expected["states"]) > 40 * 2 * 5  # far more levels than one batch names
    stored = content(engine)
    assert stored["states"] == expected["states"]
    assert stored["transitions"] == expected["transitions"]
    assert summary.tally.states_new == len(expected["states"])


def test_levels_stored_by_an_earlier_run_are_found_not_stored_again(engine, tmp_path):
    path = generate_dump(tmp_path / "d.dat", records=1200, seed=6, species=15, levels=200)
    lines = path.read_bytes().splitlines(keepends=True)
    head = write_dump(tmp_path / "head.dat", lines[:802])
    first = vi.import_states(str(head), using=engine)
    second = vi.import_dump(str(path), using=engine, batch_size=100, workers=1)
    expected = expected_content(path)
    assert content(engine)["states"] == expected["states"]
    assert content(engine)["transitions"] == expected["transitions"]
    assert first.tally.states_new + second.tally.states_new == len(expected["states"])
    assert second.tally.states_existing == first.tally.states_new  # each found once, not per batch


def test_unknown_j_is_one_level_whether_blank_or_x(engine, tmp_path):
    lines = [data_line(lower_j="      ", ritz="     5000.00000"), data_line(lower_j="     X", ritz="     5001.00000"),
             data_line(lower_j="   0.0", ritz="     5002.00000")]
    path = tmp_path / "j.dat"
    path.write_bytes(dump(*lines))
    vi.import_dump(str(path), using=engine)
    lower = State.objects.using(engine).filter(energy_scaled=57404501).order_by("J_scaled")
    assert [(s.J, s.J_scaled) for s in lower] == [(None, -1), (0, 0)]
    assert content(engine)["states"] == expected_content(path)["states"]


from tests.test_rejects import refusing_database  # noqa: E402,F401  (a fixture)


def test_a_level_whose_row_was_refused_is_parsed_again_when_a_later_batch_needs_it(
        refusing_database, tmp_path):
    """The parser carries a level's row once. When the database refuses the record that
    carried it (loggf >= 5 here), a later batch names the level without its row, and the
    writer parses that batch again to get it."""
    engine = refusing_database
    new_level = dict(upper_energy="    44444.4444", upper_term="3d6.4s.4p z7F*")
    lines = [data_line(ritz=f"{5000 + i:15.5f}") for i in range(3)]
    lines.append(data_line(ritz="     5100.00000", loggf="   6.000", **new_level))  # refused
    lines += [data_line(ritz=f"{5200 + i:15.5f}") for i in range(3)]
    lines.append(data_line(ritz="     5300.00000", **new_level))  # a later batch needs it
    path = tmp_path / "d.dat"
    path.write_bytes(dump(*lines))
    summary = vi.import_dump(str(path), using=engine, batch_size=4, workers=0,
                             reject_file=str(tmp_path / "r"))
    assert (summary.tally.imported, summary.tally.rejected) == (7, 1)
    level = State.objects.using(engine).get(energy_scaled=444444444)
    assert level.term_desc == "3d6.4s.4p z7F*"
    assert content(engine)["states"] == expected_content(path)["states"]  # its levels are used by others too


def test_levels_whose_hashes_collide_in_the_parser_are_still_stored(engine, tmp_path, monkeypatch):
    # the parser remembers the levels it carried as 64-bit hashes; with a hash that makes
    # every level of a species collide, a level's row is left out of its batch, and the
    # writer must parse that batch again to get it
    path = generate_dump(tmp_path / "d.dat", records=3000, species=20, levels=200)
    parse, again = vi.parse_batch, []

    def parse_counting_again(data, first_line=1, config=vi.ParseConfig(), shipped=None):
        again.extend([first_line] if shipped is None else [])
        return parse(data, first_line, config, shipped)

    monkeypatch.setattr(vi, "parse_batch", parse_counting_again)
    monkeypatch.setattr(vi, "level_hashes", lambda keys: (np.asarray(keys).real // 2**17).astype(np.uint64))
    vi.import_dump(str(path), using=engine, workers=0, batch_size=500)
    assert again, "no batch was parsed again"
    stored, expected = content(engine), expected_content(path)
    assert (stored["states"], stored["transitions"]) == (expected["states"], expected["transitions"])
