"""Publishing files atomically (nccli/io/publish.py): the one way reports, figures, spreadsheets and torchrun
indexes reach their names."""

import os
import signal
import stat

import pytest
from cli_helpers import assert_user_error, invoke
from h5files import good_file

from nccli.errors import OutputError
from nccli.io import publish as publish_module
from nccli.io.publish import Staged, publish, remove_stale


def test_a_published_file_appears_whole_with_the_umask_permissions(tmp_path):
    target = tmp_path / "r.parquet"
    target.write_text("earlier")
    previous = os.umask(0o027)
    try:
        with publish(target) as temporary:
            assert temporary.parent == tmp_path and temporary.name.startswith(".r.parquet.")
            assert target.read_text() == "earlier"  # nothing is seen before the block ends
            temporary.write_text("new")
    finally:
        os.umask(previous)
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(path.name for path in tmp_path.iterdir()) == ["r.parquet"]


def test_an_error_while_writing_keeps_the_earlier_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "f.png"
    target.write_text("earlier")
    with pytest.raises(OutputError, match="cannot write") as caught:
        with publish(target) as temporary:
            temporary.write_text("half")
            raise OSError(28, "No space left on device")
    assert "No space left on device" in str(caught.value) and "\n" not in str(caught.value)
    assert target.read_text() == "earlier"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["f.png"]


def test_several_files_are_renamed_only_when_all_are_written(tmp_path):
    targets = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    with Staged(targets) as staged:
        staged.path(targets[0]).write_text("a")
        assert not any(target.exists() for target in targets)  # no commit yet
    assert not any(target.exists() for target in targets) and not list(tmp_path.iterdir())


def test_stale_temporaries_are_only_the_writers_own_names_whatever_the_target(tmp_path):
    """An --out with glob characters ('*') must not turn the cleanup into a pattern over other files."""
    unrelated = [tmp_path / ".notes.draft.tmp", tmp_path / ".r.parquet.backup.tmp", tmp_path / "r.parquet"]
    for path in unrelated:
        path.write_text("keep")
    for target in (tmp_path / "*", tmp_path / "r.parquet"):
        stale = tmp_path / f".{target.name}.0123456789ab.tmp"
        stale.write_text("half")
        remove_stale(target)
        assert not stale.exists()
    assert all(path.read_text() == "keep" for path in unrelated)


def test_a_planted_lock_link_or_hard_link_is_refused_and_its_target_untouched(tmp_path):
    path, victim, out = good_file(tmp_path / "a.h5"), tmp_path / "victim.txt", tmp_path / "r.parquet"
    victim.write_text("precious")
    (tmp_path / "r.parquet.lock").symlink_to(victim)
    assert_user_error(invoke("analyze", path, "--out", out), "lock file", "symbolic link")
    (tmp_path / "r.parquet.lock").unlink()
    os.link(victim, tmp_path / "r.parquet.lock")
    assert_user_error(invoke("analyze", path, "--out", out), "lock file", "hard link")
    assert victim.read_text() == "precious" and not out.exists()


def test_an_output_named_like_a_lock_file_is_refused(tmp_path):
    path = good_file(tmp_path / "a.h5")
    result = invoke("analyze", path, "--out", tmp_path / "r.parquet", "--classes", tmp_path / "r.parquet.lock")
    assert_user_error(result, "--classes", "nccli's lock files")
    assert not (tmp_path / "r.parquet").exists()


def test_a_ctrl_c_during_the_renames_acts_once_every_file_is_in_place(tmp_path, monkeypatch):
    """Published together or not at all: a signal between two renames waits for the last one."""
    targets = [tmp_path / "r.parquet", tmp_path / "c.parquet"]
    for target in targets:
        target.write_text("earlier")
    rename = os.replace

    def interrupted(source, target):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, here between the two renames
        rename(source, target)

    monkeypatch.setattr(publish_module.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt), Staged(targets) as staged:
        for target in targets:
            staged.path(target).write_text("new")
        staged.commit()
    assert staged.committed
    assert [target.read_text() for target in targets] == ["new", "new"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["c.parquet", "r.parquet"]


def test_a_flushed_set_is_not_flushed_again(tmp_path, monkeypatch):
    targets = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    synced = []
    monkeypatch.setattr(publish_module, "sync", synced.append)
    with Staged(targets) as staged:
        staged.flush()
        staged.commit()
    assert sorted(synced) == sorted([*staged.temporary.values(), tmp_path])
