"""Exact resume: kill -9 the importer at random moments, rerun, and the database (and the
reject file) are those of an uninterrupted run."""
import random
import subprocess
import sys
import time

import pytest

from node_common.models import ImportRun
from tests.conftest import (ROOT, SAMPLE, clear, cli_env, content, database_url, generate_dump,
                            run_cli, summary_rows, write_dump)

BAD_LINES = {  # physical line number -> a line the importer must reject
    101: b"     5000.12345               abc  -1.234\n",
    602: b"\x00\xfe\xff binary garbage\n",
    5803: b"   4567.89000" + b" " * 17 + b"  2601****************\n",
    14003: b"     5000.12345     5000.12000    26  -1.234\n",
}


@pytest.fixture(scope="module")
def dump_with_rejects(tmp_path_factory):
    path = generate_dump(tmp_path_factory.mktemp("resume") / "clean.dat", records=8000, seed=11)
    lines = path.read_bytes().splitlines(keepends=True)
    for number in sorted(BAD_LINES):
        lines.insert(number - 1, BAD_LINES[number])
    dump = path.with_name("dump.dat")
    dump.write_bytes(b"".join(lines))
    return dump


def command(url, dump, rejects, stdin):
    args = [sys.executable, str(ROOT / "valdimport.py"), "--database-url", url, "import",
            "--batch-size", "20", "--reject-file", str(rejects)]
    return args if stdin else args + ["--file", str(dump)]


def start(url, dump, rejects, stdin):
    if not stdin:
        return subprocess.Popen(command(url, dump, rejects, stdin), cwd=ROOT, env=cli_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    producer = subprocess.Popen(["cat", str(dump)], stdout=subprocess.PIPE)
    process = subprocess.Popen(command(url, dump, rejects, stdin), stdin=producer.stdout,
                               cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    producer.stdout.close()
    return process


def finish(url, dump, rejects, stdin):
    process = start(url, dump, rejects, stdin)
    out, err = process.communicate(timeout=300)
    return process.returncode, out.decode(), err.decode()


def committed(alias):
    return max(ImportRun.objects.using(alias).values_list("committed_line", flat=True), default=0)


def wait_for_progress(alias, process, beyond, timeout=60):
    deadline = time.monotonic() + timeout
    while committed(alias) <= beyond and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize("stdin", [False, True], ids=["file", "stdin"])
def test_killed_imports_resume_to_the_same_database(engine, tmp_path, dump_with_rejects, stdin):
    url, rejects = database_url(engine), tmp_path / "dump.rejects"
    code, out, err = finish(url, dump_with_rejects, rejects, stdin)
    assert code == 3, err  # finished, with rejected lines
    reference, reference_rejects = content(engine), rejects.read_text()
    reference_counts = summary_rows(out)
    assert [int(line.split("\t")[0]) for line in reference_rejects.splitlines()] == sorted(BAD_LINES)
    clear(engine)
    rejects.unlink()

    rng = random.Random(f"{engine}-{stdin}")
    killed_mid_import = 0
    for attempt in range(4):
        process = start(url, dump_with_rejects, rejects, stdin)
        if attempt % 2 == 0:  # a random moment once batches are being committed
            wait_for_progress(engine, process, committed(engine))
            time.sleep(rng.uniform(0, 0.25))
        else:  # any random moment, start-up and re-reading included
            time.sleep(rng.uniform(0.05, 1.0))
        assert process.poll() is None, "the import ended before it could be killed"
        before = committed(engine)
        process.kill()
        process.wait()
        killed_mid_import += before > 0
    assert killed_mid_import >= 2

    code, out, err = finish(url, dump_with_rejects, rejects, stdin)
    assert code == 3, out + err
    rows = summary_rows(out)
    assert int(rows["resumed"].split()[-1].replace(",", "")) > 1
    assert content(engine) == reference
    assert rejects.read_text() == reference_rejects
    for label in ("lines read", "imported", "skipped", "rejected", "transitions"):
        assert rows[label].split()[0] == reference_counts[label].split()[0], label


def test_a_completed_run_adds_nothing_and_restart_imports_a_changed_file(engine, tmp_path, dump_with_rejects):
    url, rejects = database_url(engine), tmp_path / "r"
    dump = tmp_path / "d.dat"
    dump.write_bytes(dump_with_rejects.read_bytes())
    assert finish(url, dump, rejects, False)[0] == 3
    before = content(engine)
    code, out, _ = finish(url, dump, rejects, False)
    assert code == 0 and summary_rows(out)["transitions"] == "0"
    assert content(engine) == before
    lines = dump.read_bytes().splitlines(keepends=True)
    lines[10] = lines[10].replace(b" 1", b" 3", 1)  # a changed data line
    dump.write_bytes(b"".join(lines))
    changed = subprocess.run(command(url, dump, rejects, False) + ["--restart"], cwd=ROOT,
                             env=cli_env(), capture_output=True, text=True)
    assert changed.returncode == 3
    after = content(engine)
    assert len(after["transitions"]) == 2 * len(before["transitions"])
    assert ImportRun.objects.using(engine).filter(status="completed").count() == 3


def one_line_refusal(result):
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.startswith("valdimport: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_another_input_over_an_import_is_refused_unless_append_or_clear(engine, tmp_path, sample_lines):
    """A revised release, a copy with one changed log gf, a copy with records left out."""
    url = database_url(engine)
    assert run_cli("import", "--file", write_dump(tmp_path / "vald.dat", sample_lines), url=url,
                   cwd=tmp_path).returncode == 0
    before = content(engine)
    changed = list(sample_lines)
    changed[-2] = changed[-2][:36] + b"  -9.999" + changed[-2][44:]  # after the first 64 KiB
    early = list(sample_lines)
    early[10] = early[10][:36] + b"  -9.999" + early[10][44:]
    others = {"revised": generate_dump(tmp_path / "revised.dat", records=2000, seed=2),
              "changed": write_dump(tmp_path / "changed.dat", changed),
              "changed early": write_dump(tmp_path / "early.dat", early),
              "records left out": write_dump(tmp_path / "shorter.dat", sample_lines[:1000] + sample_lines[1200:])}
    for name, path in others.items():
        err = one_line_refusal(run_cli("import", "--file", path, url=url, cwd=tmp_path))
        assert "--append adds its transitions to those, --clear replaces them" in err, name
    err = one_line_refusal(run_cli("import", url=url, stdin=b"".join(changed), cwd=tmp_path))
    assert "standard input differs from the input of run" in err and "--clear" in err
    err = one_line_refusal(run_cli("import", "--append", url=url, stdin=b"".join(changed), cwd=tmp_path))
    assert "a pipe cannot be read again" in err and "rerun with --restart instead of --append" in err
    assert content(engine) == before
    appended = run_cli("import", "--file", others["revised"], "--append", url=url, cwd=tmp_path)
    assert appended.returncode == 0 and summary_rows(appended.stdout.decode())["transitions"] == "2,000"
    assert len(content(engine)["transitions"]) == 4000
    replaced = run_cli("import", "--file", others["changed"], "--clear", "--yes", url=url, cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    transitions = content(engine)["transitions"]
    assert len(transitions) == 2000 and transitions[-1] != before["transitions"][-1]


@pytest.mark.parametrize("part", ["1002 lines", "20 lines", "cut in a line"])
def test_a_part_of_an_imported_input_finds_nothing_new(engine, tmp_path, sample_lines, part):
    url = database_url(engine)
    assert run_cli("import", "--file", SAMPLE, url=url, cwd=tmp_path).returncode == 0
    before = content(engine)
    data = {"1002 lines": b"".join(sample_lines[:1002]), "20 lines": b"".join(sample_lines[:20]),
            "cut in a line": b"".join(sample_lines)[:300_000]}[part]
    result = run_cli("import", url=url, stdin=data, cwd=tmp_path)  # head -1002 vald.dat | ...
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith("import: found nothing new: the input is a part of "
                                             "what run ")
    lines = len(data.splitlines())
    assert summary_rows(result.stdout.decode())["lines read"] == f"{lines:,}"
    assert content(engine) == before


@pytest.mark.parametrize("changed", [600, 994, 1000])
def test_a_part_with_a_changed_line_is_another_input(engine, tmp_path, sample_lines, changed):
    """Also in the part's last lines, after the last digest the run recorded."""
    url = database_url(engine)
    assert run_cli("import", "--file", SAMPLE, url=url, cwd=tmp_path).returncode == 0
    part = sample_lines[:1002]
    assert not part[changed][:1].islower()  # a data line
    part[changed] = part[changed][:36] + b"  -9.999" + part[changed][44:]
    err = one_line_refusal(run_cli("import", url=url, stdin=b"".join(part), cwd=tmp_path))
    assert "standard input differs from the input of run" in err


def test_a_part_whose_unchecked_end_is_too_long_to_compare_is_refused(engine, tmp_path, sample_lines,
                                                                      monkeypatch):
    import valdimport as vi
    monkeypatch.setattr(vi.UncheckedTail, "LIMIT", 1000)  # bytes: less than the part's last lines
    vi.import_dump(str(SAMPLE), using=engine)
    part = tmp_path / "part.dat"
    part.write_bytes(b"".join(sample_lines[:1002]))
    with pytest.raises(vi.UsageError, match="are too many to compare with the database"):
        vi.import_dump(str(part), using=engine, reject_file=str(tmp_path / "rej"))
