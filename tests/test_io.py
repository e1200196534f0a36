import pytest

from gsx.io import atomic_path, library_versions, write_json_atomic, write_text_atomic


def test_write_then_read(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "a.json", {"x": 1})
    assert path.read_text() == '{\n  "x": 1\n}\n'


def test_failed_write_keeps_old_file(tmp_path):
    target = write_text_atomic(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_folder_replaced_whole(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "old.bin").write_text("1")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.bin").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["new.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_versions_recorded():
    versions = library_versions()
    assert versions["torch"].startswith("2.13.0")
    assert versions["sae-lens"] == "6.54.12"
