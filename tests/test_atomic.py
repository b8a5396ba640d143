"""Atomic writes: complete file or previous file, never a partial one or a leftover temp."""

import errno
import os

import numpy as np
import pytest
import torch

from mwm import atomic
from mwm.atomic import atomic_save_npz, atomic_torch_save, atomic_write_bytes, atomic_write_text
from mwm.errors import UserError


def test_writers_produce_exact_files_and_no_temp_files(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "sub" / "b.txt", "héllo")  # creates the folder
    atomic_save_npz(tmp_path / "c.npz", {"x": np.arange(5, dtype=np.int16)})
    atomic_torch_save({"w": torch.ones(3)}, tmp_path / "d.pt")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "héllo"
    with np.load(tmp_path / "c.npz") as data:
        np.testing.assert_array_equal(data["x"], np.arange(5))
    assert torch.equal(torch.load(tmp_path / "d.pt")["w"], torch.ones(3))
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "c.npz", "d.pt", "sub"]


def test_disk_full_at_fsync_keeps_old_file_and_raises_user_error(tmp_path, monkeypatch):
    target = tmp_path / "episode.npz"
    atomic_save_npz(target, {"x": np.zeros(3)})
    before = target.read_bytes()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    with pytest.raises(UserError, match=r"no space left on device writing .*episode\.npz: free disk space"):
        atomic_save_npz(target, {"x": np.ones(1000)})
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["episode.npz"]


def test_disk_full_midway_through_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    atomic_write_bytes(target, b"old")

    def half_then_full(obj, f):
        f.write(b"PK partial")
        f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(UserError, match="earlier files are intact"):
        atomic_torch_save({"w": torch.ones(2)}, target)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_non_disk_errors_propagate_and_clean_up(tmp_path):
    with pytest.raises(ValueError, match="dtype object"):
        atomic_save_npz(tmp_path / "x.npz", {"bad": np.array([{}, None], dtype=object)})

    def broken(f):
        f.write(b"half")
        raise RuntimeError("serializer bug")

    with pytest.raises(RuntimeError):
        atomic._atomic_write(str(tmp_path / "y.bin"), broken)
    assert os.listdir(tmp_path) == []


def test_unwritable_target_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(UserError, match=str(blocker)):
        atomic_write_bytes(blocker / "inside.bin", b"x")  # parent is a file, not a folder
