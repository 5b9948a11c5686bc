"""phicenter.io, the one place files are written: whole files or none, folders published at once, appended
records cut back on failure, one permission policy, the newest checkpoint that loads, injected faults."""

from __future__ import annotations

import errno
import json
import stat

import pytest
from tests.faults import failing_writes

from phicenter import io


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_write_replaces_the_whole_file_with_the_usual_mode(tmp_path):
    path = tmp_path / "sub" / "a.json"
    io.write_json(path, {"x": 1, "nan": float("nan")})
    assert json.loads(path.read_text()) == {"x": 1, "nan": None}
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~io._UMASK == io.FILE_MODE
    io.write_file(path, "text")
    assert path.read_text() == "text" and leftovers(path.parent) == []


@pytest.mark.parametrize("data", [b"0123456789" * 100, lambda f: f.write(b"x" * 1000)], ids=["bytes", "writer"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, data):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with failing_writes("1:ENOSPC"):
        with pytest.raises(io.WriteError) as info:
            io.write_file(path, data)
    e = info.value
    assert e.errno == errno.ENOSPC and e.path == path and isinstance(e, OSError)
    assert str(e) == f"cannot write {path}: No space left on device (injected) (ENOSPC)"
    assert path.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_the_fault_counts_matching_writes_and_fires_once_or_from_then_on(tmp_path):
    with failing_writes("2:EIO:b.txt"):
        io.write_file(tmp_path / "a.txt", "1")  # not counted: no match
        io.write_file(tmp_path / "b.txt", "1")  # the first b.txt
        with pytest.raises(io.WriteError, match="Input/output error"):
            io.write_file(tmp_path / "b.txt", "2")
        io.write_file(tmp_path / "b.txt", "3")  # fired once: disarmed
    assert (tmp_path / "b.txt").read_text() == "3"
    with failing_writes("2+:EACCES"):
        io.write_file(tmp_path / "a.txt", "2")
        for _ in range(3):
            with pytest.raises(io.WriteError, match="EACCES"):
                io.write_file(tmp_path / "a.txt", "3")
    assert (tmp_path / "a.txt").read_text() == "2"


@pytest.mark.parametrize("spec", ["0:ENOSPC", "1:ENOENT", "x:EIO", "ENOSPC", ""])
def test_a_wrong_fault_is_refused(spec):
    with pytest.raises(ValueError, match="must be N:ERRNO"):
        io.parse_fault(spec)


def test_write_with_a_writer_that_opens_the_file_itself_keeps_the_previous(tmp_path):
    last, prev = tmp_path / "last.ckpt", tmp_path / "prev.ckpt"
    for text in ("one", "two"):
        io.write_with(last, lambda tmp, text=text: open(tmp, "w").write(text), keep=prev)
    assert last.read_text() == "two" and prev.read_text() == "one"
    with failing_writes("1:ENOSPC"), pytest.raises(io.WriteError, match=str(last)):
        io.write_with(last, lambda tmp: open(tmp, "w").write("three"), keep=prev)
    assert last.read_text() == "two" and prev.read_text() == "one" and leftovers(tmp_path) == []


def test_a_folder_is_published_whole_or_not_at_all(tmp_path):
    target = tmp_path / "ab" / "key"
    with failing_writes("1:ENOSPC:b.bin"), pytest.raises(io.WriteError, match=str(target / "b.bin")):
        io.publish_folder(target, {"a.bin": b"a" * 100, "b.bin": b"b" * 100})
    assert not target.exists() and leftovers(target.parent) == []
    assert io.publish_folder(target, {"a.bin": b"a", "b.bin": b"b"})
    assert sorted(p.name for p in target.iterdir()) == ["a.bin", "b.bin"]
    assert stat.S_IMODE(target.stat().st_mode) == io.DIR_MODE
    assert stat.S_IMODE((target / "a.bin").stat().st_mode) == io.FILE_MODE
    assert not io.publish_folder(target, {"a.bin": b"other"})  # one stands: it is kept
    assert (target / "a.bin").read_bytes() == b"a"


def test_an_append_that_fails_is_cut_back_to_the_last_whole_record(tmp_path):
    f = io.AppendFile(tmp_path / "events")
    f.write(b"first;")
    with failing_writes("1:ENOSPC"), pytest.raises(io.WriteError, match="events"):
        f.write(b"second;" * 10)
    f.write(b"third;")
    f.close()
    assert (tmp_path / "events").read_bytes() == b"first;third;"


def test_lines_appended_after_a_killed_writer_start_on_a_new_line(tmp_path):
    """A part row a killed process left (no newline yet) is cut off as the file is opened again."""
    for before, kept in (
        (b"step,tag\n0,a\n1,b", b"step,tag\n0,a\n"),
        (b"step,t", b""),
        (b"0,a\n", b"0,a\n"),
        (b"", b""),
    ):
        path = tmp_path / "scalars.csv"
        path.write_bytes(before)
        f = io.AppendFile(path, record_end=b"\n")
        f.write(b"2,c\n")
        f.close()
        assert path.read_bytes() == kept + b"2,c\n", before


def test_newest_loadable_skips_what_does_not_load(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_text("not json")
    c.write_text('{"v": 3}')
    said = []
    found = io.newest_loadable([a, b, c], lambda p: json.loads(p.read_text()), said.append)
    assert found == (c, {"v": 3})
    assert said == [f"checkpoint {a} is unreadable (JSONDecodeError); falling back to the one before it"]
    assert io.newest_loadable([b], json.loads) is None


def test_a_folder_without_write_bits_is_not_writable_even_for_root(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    assert io.writable(ro) and io.writable(ro / "not" / "yet")  # made when first written
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert not io.writable(ro) and not io.writable(ro / "not" / "yet")
    finally:
        ro.chmod(0o755)
