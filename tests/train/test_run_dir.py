"""The run folder: probes leave nothing, one run at a time, a killed run's leftovers are cleared."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cigl_bayes.train.run_dir import LOCK_NAME, OutputDirError, check_writable_dir, check_writable_file, locked_run_dir

REPO = Path(__file__).resolve().parents[2]


def test_checks_leave_nothing_behind(tmp_path: Path) -> None:
    check_writable_dir(tmp_path / "a" / "b")
    check_writable_file(tmp_path / "c" / "model.npz")
    check_writable_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_checks_refuse_files_and_folders_in_the_wrong_place(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for check, path, needle in ((check_writable_dir, a_file, "is a file"), (check_writable_dir, a_file / "sub", "is a file"),
                                (check_writable_file, tmp_path, "is a folder"), (check_writable_file, a_file / "m.npz", "is a file")):
        with pytest.raises(OutputDirError, match=needle):
            check(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_second_holder_is_refused_until_the_first_lets_go(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with locked_run_dir(out):
        assert (out / LOCK_NAME).read_text() == str(os.getpid())
        with pytest.raises(OutputDirError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            with locked_run_dir(out):
                pass
        (out / "metrics.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]  # the lock file goes with the lock
    with locked_run_dir(out):
        pass


def test_a_failed_run_leaves_no_folder_it_created(tmp_path: Path) -> None:
    out = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError):
        with locked_run_dir(out):
            raise RuntimeError("bad input found after locking")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_holder_frees_the_folder_and_its_temporaries_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = (
        "import sys, time\n"
        "from cigl_bayes.train.run_dir import locked_run_dir\n"
        "with locked_run_dir(sys.argv[1]) as folder:\n"
        "    (folder / '.checkpoint.pt.k9x2.tmp').write_bytes(b'half a checkpoint')\n"
        "    (folder / 'checkpoint.pt').write_bytes(b'the last complete one')\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(600)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(OutputDirError, match="in use by another run"):
            with locked_run_dir(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    assert (out / ".checkpoint.pt.k9x2.tmp").exists() and (out / LOCK_NAME).exists()  # what kill -9 leaves
    with locked_run_dir(out):
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "checkpoint.pt"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]
