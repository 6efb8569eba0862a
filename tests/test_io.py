"""Atomic writes and safe checkpoint loading."""

from pathlib import Path

import pytest
import torch

from edgecompress import EdgecompressError
from edgecompress.io import (UnsafePickleError, atomic_path, atomic_write, load_torch, read_json, save_torch, write_json,
                             write_text)


def test_exception_mid_save_leaves_previous_file_intact(tmp_path):
    target = tmp_path / "model.pt"
    save_torch(target, {"w": torch.ones(3)})
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_write(target, "wb") as handle:
            handle.write(b"partial garbage")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left behind


def test_path_writer_failing_leaves_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "trace.json"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target, suffix=".json") as tmp:
            Path(tmp).write_text("half")
            raise RuntimeError("exporter crashed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["trace.json"]
    with atomic_path(target) as tmp:
        Path(tmp).write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["trace.json"]


def test_unserialisable_object_mid_save_keeps_previous_json(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.9})
    with pytest.raises(TypeError):
        write_json(target, {"accuracy": object()})
    assert read_json(target) == {"accuracy": 0.9}


def test_corrupt_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EdgecompressError, match="teacher.pt"):
        load_torch(bad)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a pickled module, not a state dict
    with pytest.raises(UnsafePickleError, match="weights_only"):  # a type callers can tell from a corrupt file
        load_torch(path)
    (tmp_path / "corrupt.pt").write_bytes(b"not a zip file")
    with pytest.raises(EdgecompressError) as corrupt:
        load_torch(tmp_path / "corrupt.pt")
    assert not isinstance(corrupt.value, UnsafePickleError)


def test_unsafe_pickle_message_keeps_the_cause_and_drops_the_unsafe_advice(tmp_path):
    import os

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("true",))
    path = tmp_path / "evil.pt"
    torch.save({"x": RunsCode()}, path)
    with pytest.raises(EdgecompressError) as exc:
        load_torch(path)
    message = str(exc.value)
    assert "system" in message and "\n" not in message            # the cause: a blocked GLOBAL
    assert "set to `False`" not in message and "Re-running" not in message  # not torch's advice to do it anyway


def test_missing_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(EdgecompressError, match="not found"):
        load_torch(tmp_path / "nope.pt")


def test_atomic_dir_replaces_whole_directory_or_nothing(tmp_path):
    from edgecompress.io import atomic_dir

    out = tmp_path / "subset"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "b.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # previous content intact
    with atomic_dir(out) as tmp:
        (tmp / "c.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subset"]  # no temporary or old folder left


def test_interrupted_live_logging_leaves_the_previous_curves(tmp_path):
    """dvclive empties its folder when it starts: an interrupted stage used to lose the previous run's curves
    while printing "previous outputs are intact" (issue 16, finding 5)."""
    from edgecompress.stage import open_live

    live_dir = tmp_path / "dvclive" / "distill"
    with open_live(live_dir) as live:
        live.log_metric("train/loss", 1.0)
        live.next_step()
    before = sorted(p.relative_to(live_dir) for p in live_dir.rglob("*"))
    assert before
    with pytest.raises(KeyboardInterrupt):
        with open_live(live_dir) as live:
            live.log_metric("train/loss", 2.0)
            live.next_step()
            raise KeyboardInterrupt
    assert sorted(p.relative_to(live_dir) for p in live_dir.rglob("*")) == before
    assert "2.0" not in (live_dir / "plots" / "metrics" / "train" / "loss.tsv").read_text()
    assert [p.name for p in live_dir.parent.iterdir()] == ["distill"]  # no temporary folder left behind
