"""`python -m miniai train` answers bad arguments the argparse way: its usage line, the reason, exit status 2.

The cases the issue names run as real subprocesses, all at once (each pays seconds of imports) and none may start
training; the rest of the number checks call the same parser in this process.
"""
import gc
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BAD = {  # argv after `python -m miniai train` -> what stderr must say after "error: "
    "epochs 0": (["--epochs", "0"], "argument --epochs: must be a positive integer, got '0'"),
    "bs -5": (["--bs", "-5"], "argument --bs: must be a positive integer, got '-5'"),
    "lr 0": (["--lr", "0"], "argument --lr: must be a positive finite number, got '0'"),
    "lr -1e-3": (["--lr=-1e-3"], "argument --lr: must be a positive finite number, got '-1e-3'"),
    "n-train 0": (["--n-train", "0"], "argument --n-train: must be a positive integer, got '0'"),
    "data without files": (["--data", "{tmp}"], "argument --data: {tmp} (given as --data) holds no usable "
                                                "fashion_mnist data: it lacks train-images-idx3-ubyte"),
}
SMALL = ["--epochs", "1", "--n-train", "64", "--n-valid", "32", "--device", "cpu"]  # the case's flags come after


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case of BAD, run concurrently: {case: (CompletedProcess, its --out dir)}."""
    tmp = tmp_path_factory.mktemp("empty")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("MINIAI_DATA", None)
    procs = {case: subprocess.Popen([sys.executable, "-m", "miniai", "train", *SMALL,
                                     *(a.format(tmp=tmp) for a in argv), "--out", str(tmp / f"out {case}")],
                                    cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for case, (argv, _) in BAD.items()}
    done = {}
    for case, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        done[case] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return tmp, done


@pytest.mark.parametrize("case", list(BAD))
def test_bad_argument_gives_usage_reason_and_status_2(runs, case):
    tmp, done = runs
    run, reason = done[case], BAD[case][1].format(tmp=tmp)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("usage: python -m miniai train"), run.stderr
    assert f"error: {reason}" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert run.stdout == "" and not (tmp / f"out {case}").exists()  # it stopped before training


@pytest.mark.parametrize("argv, reason", [
    (["--bs", "2.5"], "argument --bs: must be a positive integer, got '2.5'"),
    (["--lr", "nan"], "argument --lr: must be a positive finite number, got 'nan'"),
    (["--lr", "inf"], "argument --lr: must be a positive finite number, got 'inf'"),
    (["--lr", "1e300"], "argument --lr: must be at most 1e30"),  # overflowed inside AdamW: a traceback
    (["--lr", "1e-50"], "argument --lr: must be at least 1.2e-38 (float32's smallest normal number; "),  # 0: untrained
    (["--n-valid", "0"], "argument --n-valid: must be a positive integer, got '0'"),
    (["--device", "tpu:3"], "argument --device: not a device: 'tpu:3'"),
    (["--device", "cuda:7"], "argument --device: 'cuda:7' is not available on this machine"),
    (["--n-train", "99999999"], "--n-train must be in 1..60000, got 99999999"),
    (["--holdout", "60000"], "--holdout must be in 1..59999 training images, got 60000"),  # named 'holdout'
    (["--recipe", "fast", "--sched", "cosine"], "--sched cosine does not combine with --recipe fast"),
    (["--seed", "99999999999999999999"], "argument --seed: must be an integer in 0..2**32-1"),  # a traceback
    (["--seed", "-99999999999999999999"], "argument --seed: must be an integer in 0..2**32-1"),
    (["--seed", "4294967338"], "argument --seed: must be an integer in 0..2**32-1"),  # 42 + 2**32: seed 42's run
    (["--seed", "-1"], "argument --seed: must be an integer in 0..2**32-1"),  # 2**32 - 1's run
    (["--bs", "64", "--sched", "onecycle"], "schedule 'onecycle' needs at least 2 optimizer steps, and this fit "
                                            "has 1"),  # a traceback: T_max must be a whole number >= 2
    (["--recipe", "five", "--bs", "21"], "the 64 training images in batches of 21 leave a last batch of 1 image "
                                         "(on each process), on which the model's BatchNorm layers can't train"),
])
def test_more_bad_numbers_in_process(capsys, argv, reason):
    """The same parser in this process (milliseconds): the rest of the number checks, each with train's usage (the
    errors train() finds showed the top-level usage)."""
    from miniai.__main__ import main
    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL, *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"error: {reason}" in err and err.startswith("usage: python -m miniai train")


def test_miniai_data_without_files_is_a_usage_error(tmp_path, monkeypatch, capsys):
    from miniai.__main__ import main
    monkeypatch.setenv("MINIAI_DATA", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("usage: python -m miniai")
    assert f"error: {tmp_path} (given as $MINIAI_DATA) holds no usable fashion_mnist data" in err


def test_an_empty_miniai_data_is_a_usage_error_not_the_system_data(monkeypatch, capsys):
    """MINIAI_DATA=$DIR with DIR unset read the system's Fashion-MNIST without a word; an empty --out is refused for
    just that reason, and $MINIAI_DATA names a directory as firmly as --data."""
    from miniai.__main__ import main
    from miniai.sources import DataNotFoundError, find_source
    monkeypatch.setenv("MINIAI_DATA", "")
    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("usage: python -m miniai")
    assert "$MINIAI_DATA is set but empty" in err and "unset MINIAI_DATA" in err
    with pytest.raises(DataNotFoundError, match=r"\$MINIAI_DATA is set but empty"):
        find_source()
    monkeypatch.delenv("MINIAI_DATA")  # and an empty path= or --data (a "$DIR" unset) is no current directory
    with pytest.raises(DataNotFoundError, match=r"path='' names no directory"):
        find_source(path="")
    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL, "--data", ""])
    assert info.value.code == 2 and "--data='' names no directory" in capsys.readouterr().err


def test_an_out_dir_holding_an_earlier_run_is_refused_before_training(tmp_path, capsys):
    """A second run with the same --out silently replaced the first run's model.pt, result.json and plots."""
    from miniai.__main__ import main
    (tmp_path / "model.pt").write_bytes(b"the first run's weights")
    (tmp_path / "result.json").write_text("{}")
    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "already holds a run (model.pt, result.json)" in err and "--overwrite" in err
    assert (tmp_path / "model.pt").read_bytes() == b"the first run's weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "result.json"]  # nothing written, no training


def test_an_out_dir_with_a_tilde_is_in_the_home_directory_all_of_it(tmp_path, monkeypatch, capsys):
    """--out '~/runs' (quoted, or as --out=~/runs, which the shell leaves) put model.pt, result.json and the plots in
    ./~/runs and log.csv in $HOME/runs (CSVLoggerCB expands ~): a second run then died on the log's FileExistsError."""
    from miniai.__main__ import main
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    main(["train", *SMALL, "--out=~/runs"])
    runs = {p.name for p in (home / "runs").iterdir()}
    assert list(cwd.iterdir()) == [] and {"model.pt", "result.json", "log.csv"} <= runs
    with pytest.raises(SystemExit) as info:  # the second run is told, before training, as any reused --out is
        main(["train", *SMALL, "--out=~/runs"])
    assert info.value.code == 2 and "already holds a run" in capsys.readouterr().err


def test_a_schedule_refused_keeps_the_earlier_runs_files(tmp_path, capsys):
    """--overwrite removed the earlier run's files just before a fit that then failed on its schedule."""
    from miniai.__main__ import main
    (tmp_path / "model.pt").write_bytes(b"the first run's weights")
    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL, "--bs", "64", "--sched", "onecycle", "--out", str(tmp_path), "--overwrite"])
    assert info.value.code == 2 and "needs at least 2 optimizer steps" in capsys.readouterr().err
    assert (tmp_path / "model.pt").read_bytes() == b"the first run's weights"


def test_a_recipe_whose_one_cycle_has_no_room_is_refused_before_removing_anything(tmp_path, capsys):
    """The check above covered --sched only: --recipe on a one-step fit raised a traceback (pct_start 1.5) after
    --overwrite had removed the earlier run's files."""
    from miniai.__main__ import main
    (tmp_path / "model.pt").write_bytes(b"the first run's weights")
    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL, "--bs", "64", "--recipe", "fast", "--out", str(tmp_path), "--overwrite"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "recipe fast's one-cycle needs at least 2 optimizer steps" in err
    assert (tmp_path / "model.pt").read_bytes() == b"the first run's weights"


def test_overwrite_replaces_an_earlier_runs_files(tmp_path, capsys):
    from miniai.__main__ import main
    (tmp_path / "model.pt").write_bytes(b"the first run's weights")
    frozen = gc.get_freeze_count()
    assert main(["train", *SMALL, "--out", str(tmp_path), "--overwrite"]) == 0
    # the command (cli) freezes the collector's objects as it ends its own process; main, called from Python (with
    # argv, or reading sys.argv as a sweep script's runpy would), leaves the caller's garbage collectable
    assert gc.get_freeze_count() == frozen
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["miniai", "train", *SMALL, "--out", str(tmp_path), "--overwrite"])
        assert main() == 0
        with pytest.raises(SystemExit):  # the command itself, as a sweep script would run it: it freezes at exit only
            runpy.run_module("miniai", run_name="__main__")
    assert gc.get_freeze_count() == frozen
    assert (tmp_path / "model.pt").read_bytes() != b"the first run's weights"
    assert {"model.pt", "result.json", "log.csv", "loss.png"} <= {p.name for p in tmp_path.iterdir()}
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["valid_on"] == "the first 32 test images"  # --n-valid 32: it said "the test set"
    assert result["world_size"] == 1  # bs is per process: under torchrun, re-running the command alone halved it
    assert "(on the first 32 test images)" in capsys.readouterr().out


def test_the_held_out_count_printed_is_the_one_validated_on(tmp_path, capsys):
    """--holdout 1000 --n-valid 200 printed 'held-out (1000 training images)' for an accuracy on 200."""
    from miniai.__main__ import main
    assert main(["train", *SMALL, "--holdout", "1000", "--n-valid", "200", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "result.json").read_text())["valid_on"] == "200 held-out training images"
    assert "held-out (200 training images) accuracy" in capsys.readouterr().out


def test_an_out_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    from miniai.__main__ import main
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL, "--out", str(tmp_path / "afile")])
    assert info.value.code == 2 and "is a file; --out names a directory" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "mine"


def test_an_overwrite_run_stopped_part_way_puts_the_earlier_run_back_whole(tmp_path, monkeypatch, capsys):
    """Ctrl-C in an --overwrite run once left its own log.csv beside the earlier run's files (half of two runs in
    one directory); then the earlier run was deleted before training, and a run stopped part way lost both."""
    from miniai.__main__ import main
    from miniai.learner import Learner
    for name in ("model.pt", "result.json", "loss.png", "schedule.png"):
        (tmp_path / name).write_bytes(b"the first run's")

    def interrupted(self, *args, **kwargs):
        (tmp_path / "log.csv").write_text("epoch,train\n0,train\n")  # this run's rows so far (CSVLoggerCB's)
        raise KeyboardInterrupt
    monkeypatch.setattr(Learner, "fit", interrupted)
    assert main(["train", *SMALL, "--out", str(tmp_path), "--overwrite"]) == 130
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".miniai-run") == [
        "loss.png", "model.pt", "result.json", "schedule.png"]  # no log.csv of this run, no folder set aside
    assert all(p.read_bytes() == b"the first run's" for p in tmp_path.iterdir() if not p.name.startswith(".miniai"))
    # and what it says fits a command, not a script (the fit's note advised adding CheckpointCB(path))
    err = capsys.readouterr().err
    assert "the command keeps no checkpoints" in err and "holds the earlier run's files again" in err


def test_an_overwrite_run_that_fails_keeps_the_earlier_run(tmp_path, capsys):
    """--overwrite deleted the earlier run's model before training: a run that then blew up (--lr 1e30) left
    neither the earlier model nor a new one."""
    from miniai.__main__ import main
    first = ["train", "--epochs", "1", "--n-train", "256", "--n-valid", "64", "--device", "cpu", "--out", str(tmp_path)]
    assert main(first) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert main([*first, "--lr", "1e30", "--overwrite"]) == 1
    assert "holds the earlier run's files again" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert after == before and not any(p.is_dir() for p in tmp_path.iterdir())


def test_the_recorded_command_runs_again_when_pasted_into_a_shell(tmp_path):
    """result.json's command joined the arguments with spaces: an --out with a space in it named two words."""
    import shlex
    from miniai.__main__ import main
    out = tmp_path / "my runs"
    assert main(["train", *SMALL, "--out", str(out)]) == 0
    words = shlex.split(json.loads((out / "result.json").read_text())["command"])
    assert words[:3] == ["python", "-m", "miniai"] and words[3:] == ["train", *SMALL, "--out", str(out)]


def test_an_empty_out_is_a_usage_error(capsys):
    """--out "" (a script's unset $OUTDIR) trained, exited 0 and saved nothing: the weights lost without a word."""
    from miniai.__main__ import main
    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL, "--out", ""])
    assert info.value.code == 2 and "argument --out: must name a directory, got ''" in capsys.readouterr().err


def test_an_out_under_a_file_is_a_usage_error_before_training(tmp_path, capsys, monkeypatch):
    """--out afile/run trained the whole run, then ended in a NotADirectoryError traceback: nothing saved."""
    from miniai.__main__ import main
    from miniai.learner import Learner
    (tmp_path / "afile").write_text("mine")
    monkeypatch.setattr(Learner, "fit", lambda self, *a, **k: pytest.fail("trained before refusing --out"))
    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL, "--out", str(tmp_path / "afile" / "run")])
    assert info.value.code == 2 and "can't make the directory" in capsys.readouterr().err


def test_overwrite_deletes_nothing_when_an_earlier_output_name_is_a_directory(tmp_path, capsys):
    """--overwrite unlinked the earlier files in turn and stopped at one that is a directory (IsADirectoryError,
    a traceback), the files before it already deleted."""
    from miniai.__main__ import main
    (tmp_path / "model.pt").write_bytes(b"the first run's")
    (tmp_path / "loss.png").mkdir()
    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL, "--out", str(tmp_path), "--overwrite"])
    assert info.value.code == 2 and "loss.png is a directory" in capsys.readouterr().err
    assert (tmp_path / "model.pt").read_bytes() == b"the first run's"


def test_an_out_dir_that_is_a_broken_link_is_refused_naming_the_link(tmp_path, capsys):
    """--out a link to a folder that is gone (a scratch disk not mounted) was refused as "can't make the directory
    (File exists)", though ls says it does not exist, and the link was not named (probe cli, s27)."""
    from miniai.__main__ import main
    (tmp_path / "run").symlink_to(tmp_path / "scratch" / "run")
    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "is a link to" in err and "scratch" in err and "File exists" not in err
    assert (tmp_path / "run").is_symlink() and not (tmp_path / "scratch").exists()
    (tmp_path / "hop").symlink_to(tmp_path / "run")  # (a folder under the link, and a chain: regression round 31)
    for out in (tmp_path / "run" / "exp1", tmp_path / "hop"):
        with pytest.raises(SystemExit) as info:
            main(["train", *SMALL, "--out", str(out)])
        err = capsys.readouterr().err
        assert info.value.code == 2 and "File exists" not in err and str(tmp_path / "scratch" / "run") in err, err


def test_a_broken_link_named_like_an_output_is_refused_before_training(tmp_path, monkeypatch, capsys):
    """A dangling result.json link in --out passed the check (exists() is False for it); after training, writing
    through it raised FileNotFoundError, a traceback, and model.pt, written after it, was never saved."""
    from miniai.__main__ import main
    from miniai.learner import Learner
    (tmp_path / "result.json").symlink_to(tmp_path / "nowhere" / "zzz")
    monkeypatch.setattr(Learner, "fit", lambda self, *a, **k: pytest.fail("trained before refusing --out"))
    for extra in ([], ["--overwrite"]):
        with pytest.raises(SystemExit) as info:
            main(["train", *SMALL, "--out", str(tmp_path), *extra])
        assert info.value.code == 2
        assert "result.json is a link to " in capsys.readouterr().err
    assert (tmp_path / "result.json").is_symlink()
    (tmp_path / "result.json").unlink()  # a link to a file not there yet, in a folder that is: written through
    (tmp_path / "store").mkdir()
    (tmp_path / "result.json").symlink_to(tmp_path / "store" / "result.json")

    class Reached(Exception):
        pass

    def reached(self, *a, **k):
        raise Reached
    monkeypatch.setattr(Learner, "fit", reached)
    with pytest.raises(Reached):
        main(["train", *SMALL, "--out", str(tmp_path)])


def test_an_existing_out_that_cant_be_written_in_is_not_called_unmade(tmp_path, monkeypatch, capsys):
    """A read-only --out that exists was refused with "can't make the directory": what failed was its lock file."""
    import errno

    import miniai.utils
    from miniai.__main__ import main

    def read_only(path, what):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(miniai.utils, "claim_dir", read_only)
    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL, "--out", str(tmp_path)])
    assert info.value.code == 2
    assert f"--out {tmp_path}: can't write in the directory (Read-only file system)" in capsys.readouterr().err


def test_a_diverging_run_ends_with_advice_for_the_command(capsys):
    """--lr 1e8 ended in a NonFiniteLossError traceback advising learn.lr_find(), GradClipCB and CheckpointCB(path),
    none of which a command-line user can give."""
    from miniai.__main__ import main
    assert main(["train", *SMALL, "--bs", "16", "--lr", "1e8"]) == 1
    err = capsys.readouterr().err
    assert "training loss is nan" in err and "a lower --lr" in err and "Traceback" not in err
    assert "lr_find" not in err and "GradClipCB" not in err


def test_ctrl_c_while_cleaning_up_after_a_diverged_run_still_says_why_it_failed(monkeypatch, capsys):
    """(regression round T1) Ctrl-C pressed in a cleanup after the loss went NaN: the command said only
    'interrupted ... run it again', and the same --lr fails the same way."""
    from miniai.__main__ import main
    from miniai.callbacks import progress
    cleanup = progress.ProgressCB.cleanup_epoch

    def slow_cleanup(self, learn):
        cleanup(self, learn)
        if isinstance(learn.stopped_by, Exception) and not type(learn.stopped_by).__name__.startswith("Cancel"):
            raise KeyboardInterrupt
    monkeypatch.setattr(progress.ProgressCB, "cleanup_epoch", slow_cleanup)
    assert main(["train", *SMALL, "--bs", "16", "--lr", "1e8"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "training loss is nan" in err and "a lower --lr" in err


def test_a_second_run_into_an_out_in_use_is_refused_and_a_dead_runs_claim_is_taken_over(tmp_path, capsys):
    """Two runs started together with one --out both passed the check for an earlier run (nothing was written
    yet) and wrote into the same directory: log.csv of one, result.json and model.pt of the other."""
    from miniai.__main__ import main
    from tests.synth import held_by_another_process
    with held_by_another_process(tmp_path) as pid, pytest.raises(SystemExit) as info:
        main(["train", *SMALL, "--out", str(tmp_path)])
    assert info.value.code == 2 and f"in use by another run (process {pid})" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == [".miniai-run"]  # left by the holder, whose lock ended with it
    assert main(["train", *SMALL, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "model.pt").exists() and not (tmp_path / ".miniai-run").exists()


def test_a_refused_run_leaves_no_directory_it_made(tmp_path, capsys):
    """--out was made (with its parents) before train()'s own checks, so a refused run left it behind."""
    from miniai.__main__ import main
    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL, "--recipe", "fast", "--sched", "cosine", "--out", str(tmp_path / "a" / "b")])
    assert info.value.code == 2 and "does not combine" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_a_count_too_large_after_holdout_names_the_flags(tmp_path, capsys):
    """--holdout 39 --n-train 5 (of 40 images) said 'n_train must be in 1..1, got 5': get_dls's parameter, not the
    flag, and no word of --holdout taking the other images."""
    from miniai.__main__ import main
    from tests.test_data import fake_fashion, write_fashion_dir
    d = write_fashion_dir(tmp_path / "fm", fake_fashion(), gz=False)
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "1", "--device", "cpu", "--data", str(d), "--holdout", "39", "--n-train", "5"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("usage: python -m miniai train")
    assert ("error: --n-train must be in 1..1, got 5: --holdout 39 took the other 39 of the 40 training images"
            in err), err


def test_the_flag_names_replace_only_get_dls_own_words():
    """The rewrite of get_dls's parameter names into flags also rewrote a path holding them ('runs/n_valid=2')."""
    from miniai.__main__ import _as_flags
    assert _as_flags("n_train must be in 1..1, got 100: holdout=59999 took the other 59999 of the 60000 training "
                     "images") == ("--n-train must be in 1..1, got 100: --holdout 59999 took the other 59999 of the "
                               "60000 training images")
    path_error = "/runs/n_valid=2/holdout=3/train-images: truncated"
    assert _as_flags(path_error) == path_error


def test_overwrite_removes_nothing_when_one_earlier_file_cannot_be_removed(tmp_path, monkeypatch, capsys):
    """The files before an undeletable one (an immutable schedule.png) were deleted, then a traceback: the earlier
    run mostly gone and no new one."""
    from pathlib import Path

    from miniai.__main__ import main
    for name in ("model.pt", "result.json", "loss.png", "schedule.png"):
        (tmp_path / name).write_bytes(b"the first run's")
    real_rename = Path.rename

    def stuck(self, target):
        if self.name == "schedule.png":
            raise PermissionError(1, "Operation not permitted")
        return real_rename(self, target)
    monkeypatch.setattr(Path, "rename", stuck)
    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL, "--out", str(tmp_path), "--overwrite"])
    assert info.value.code == 2
    assert f"--overwrite can't remove {tmp_path / 'schedule.png'} (Operation not permitted)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "loss.png", "model.pt", "result.json", "schedule.png"]
    assert all((tmp_path / n).read_bytes() == b"the first run's" for n in ("model.pt", "result.json", "loss.png"))


def test_ctrl_c_while_the_plots_are_drawn_names_what_was_saved(tmp_path, monkeypatch, capsys):
    """Interrupted while drawing schedule.png, it said 'nothing of this run was saved' beside a complete model.pt."""
    from miniai.__main__ import main
    from miniai.callbacks.scheduling import RecorderCB

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(RecorderCB, "plot", interrupted)
    assert main(["train", *SMALL, "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "interrupted while saving" in err and "model.pt, result.json" in err and "schedule.png" in err
    assert "nothing of this run was saved" not in err and (tmp_path / "model.pt").is_file()


def test_a_full_disk_while_saving_writes_the_model_first_and_names_what_was_saved(tmp_path, monkeypatch, capsys):
    """(probe P5, session 22) torch.save failing (ENOSPC) left result.json, written first, reporting a finished run
    with no model.pt beside it, under a raw OSError traceback."""
    import errno

    import torch

    from miniai.__main__ import main
    from miniai.callbacks.scheduling import RecorderCB

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    assert main(["train", *SMALL, "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "error while saving the outputs: [Errno 28] No space left on device" in err and "Traceback" not in err
    assert "none of this run's outputs is complete" in err and not (tmp_path / "a" / "result.json").exists()
    assert "run it again with --overwrite (--out" in err  # (its log.csv is there: T2)
    monkeypatch.undo()
    monkeypatch.setattr(RecorderCB, "plot", full)  # model.pt and result.json written, then the disk is full
    assert main(["train", *SMALL, "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "model.pt, result.json, loss.png in --out" in err and "complete; schedule.png not written" in err
    assert (tmp_path / "b" / "model.pt").is_file()


def test_a_run_whose_validation_loss_is_nan_writes_nothing_and_exits_1(tmp_path, capsys):
    """--lr 1e30 for one epoch left weights of ~1e30, finite, so the NaN guard passed them; the validation loss was
    NaN, yet the command printed an accuracy, saved model.pt and result.json and exited 0."""
    from miniai.__main__ import main
    assert main(["train", "--epochs", "1", "--n-train", "256", "--n-valid", "64", "--device", "cpu", "--lr", "1e30",
                 "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "validation loss is nan" in err and "a lower --lr" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model.pt").exists() and not (tmp_path / "run" / "result.json").exists()


@pytest.mark.parametrize("channels, n_classes, size, column, reason", [
    (3, 10, 28, "image", r"--data .*: its images have 3 channels.*1-channel"),
    (1, 15, 28, "image", r"--data .*: it has 15 classes.*10"),
    (1, 10, 56, "image", r"--data .*: its images are 56x56.*28x28"),  # trained a 40-output model, exit 0
    (1, 10, 28, "img", r"dataset needs columns 'image' and 'label', has \['img', 'label'\]")])  # a traceback
def test_data_the_commands_model_cannot_train_on_is_a_usage_error(tmp_path, capsys, channels, n_classes, size,
                                                                  column, reason):
    """A saved DatasetDict of RGB images (or of 15 classes) started training and ended in a 75-line torch traceback
    (the conv's channel count; a target out of bounds): the command's models take 1 channel and 10 classes."""
    import numpy as np
    from datasets import Array2D, Array3D, ClassLabel, Dataset, DatasetDict, Features

    from miniai.__main__ import main
    rng = np.random.default_rng(0)
    image = Array3D((size, size, 3), "uint8") if channels == 3 else Array2D((size, size), "uint8")
    shape = (size, size, 3) if channels == 3 else (size, size)
    feats = Features({column: image, "label": ClassLabel(num_classes=n_classes)})

    def split(n):
        return Dataset.from_dict({column: [rng.integers(0, 256, shape).astype(np.uint8) for _ in range(n)],
                                  "label": [i % n_classes for i in range(n)]}, features=feats)
    DatasetDict(train=split(32), test=split(16)).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(tmp_path / "dd"), "--epochs", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "usage:" in err and "Traceback" not in err
    assert __import__("re").search(reason, err), err


def test_a_saved_datasetdict_s_validation_split_is_named_as_what_was_validated_on(tmp_path, capsys, monkeypatch):
    """A DatasetDict with train, validation and test splits validates on 'validation' (the first of validation,
    valid, test, dev), and result.json and the printed line said "the test set": a figure tuned on validation
    written down as test accuracy."""
    import numpy as np
    from datasets import Array2D, ClassLabel, Dataset, DatasetDict, Features

    from miniai.__main__ import main
    monkeypatch.setenv("MINIAI_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    feats = Features({"image": Array2D((28, 28), "uint8"), "label": ClassLabel(num_classes=10)})

    def split(n):
        return Dataset.from_dict({"image": [rng.integers(0, 256, (28, 28)).astype(np.uint8) for _ in range(n)],
                                  "label": [i % 10 for i in range(n)]}, features=feats)
    DatasetDict(train=split(32), validation=split(16), test=split(8)).save_to_disk(str(tmp_path / "dd"))
    for extra, said in (([], "split 'validation'"), (["--n-valid", "8"], "the first 8 images of split 'validation'")):
        out = tmp_path / f"run{len(extra)}"
        assert main(["train", "--data", str(tmp_path / "dd"), "--epochs", "1", "--device", "cpu", "--out", str(out),
                     *extra]) == 0
        assert json.loads((out / "result.json").read_text())["valid_on"] == said
        assert f"(on {said})" in capsys.readouterr().out


def test_overwrite_without_out_is_a_usage_error(capsys):
    """--overwrite without --out trained and saved nothing, without a word: the user meant to keep the run."""
    from miniai.__main__ import main
    with pytest.raises(SystemExit) as e:
        main(["train", *SMALL, "--overwrite"])
    assert e.value.code == 2 and "--overwrite replaces the files of an earlier run in --out" in capsys.readouterr().err


def _earlier_run(out: Path) -> dict:
    for name in ("model.pt", "result.json", "loss.png", "schedule.png"):
        (out / name).write_bytes(b"the first run's")
    return {p.name: p.read_bytes() for p in out.iterdir()}


def test_an_overwrite_run_stopped_by_sigterm_puts_the_earlier_run_back(tmp_path, monkeypatch, capsys):
    """timeout, a job scheduler or torchrun stop a run with SIGTERM: it died at once, leaving the earlier run's
    files in a hidden .miniai-overwritten.<pid> folder that nothing ever mentioned again."""
    import signal
    from miniai.__main__ import main
    from miniai.learner import Learner
    before = _earlier_run(tmp_path)

    def terminated(self, *args, **kwargs):
        (tmp_path / "log.csv").write_text("epoch,train\n0,train\n")
        os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(Learner, "fit", terminated)
    assert main(["train", *SMALL, "--out", str(tmp_path), "--overwrite"]) == 143
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != ".miniai-run"} == before
    assert "stopped (SIGTERM)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back as it was


def test_files_a_killed_overwrite_run_moved_aside_are_named_before_anything_runs(tmp_path, capsys):
    """SIGKILL can't be caught: the earlier run's files stay in the folder set aside, and each later run (plain or
    --overwrite) went on without a word of them."""
    from miniai.__main__ import main
    aside = tmp_path / ".miniai-overwritten.4242"
    aside.mkdir()
    (aside / "model.pt").write_bytes(b"the first run's")
    for flags in ([], ["--overwrite"]):
        with pytest.raises(SystemExit) as info:
            main(["train", *SMALL, "--out", str(tmp_path), *flags])
        err = capsys.readouterr().err
        assert info.value.code == 2 and ".miniai-overwritten.4242, the files of an earlier run" in err
        assert "move them back" in err and (aside / "model.pt").read_bytes() == b"the first run's"
    (aside / "model.pt").rename(tmp_path / "model.pt")  # as the message says: moved back, the empty folder left
    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL, "--out", str(tmp_path)])
    assert "already holds a run (model.pt)" in capsys.readouterr().err and not aside.exists()


def test_a_stopped_run_says_to_run_again_with_overwrite_when_it_left_a_partial_log(tmp_path, monkeypatch, capsys):
    """After Ctrl-C the note said 'run it again', and running it again was refused: --out held the stopped run's
    log.csv."""
    from miniai.__main__ import main
    from miniai.learner import Learner

    def interrupted(self, *args, **kwargs):
        (tmp_path / "log.csv").write_text("epoch,train\n0,train\n")
        raise KeyboardInterrupt
    monkeypatch.setattr(Learner, "fit", interrupted)
    assert main(["train", *SMALL, "--out", str(tmp_path)]) == 130
    assert f"run it again with --overwrite (--out {tmp_path} holds this run's partial log.csv)" in \
        capsys.readouterr().err


def test_model_pt_is_never_left_half_written(tmp_path, monkeypatch, capsys):
    """Ctrl-C while model.pt was written left a truncated file, which the note called 'not written'."""
    import torch
    from miniai.__main__ import main

    def half(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a model")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", half)
    assert main(["train", *SMALL, "--out", str(tmp_path)]) == 130
    assert "model.pt" in capsys.readouterr().err
    assert not (tmp_path / "model.pt").exists() and not any(p.name.startswith(".model") for p in tmp_path.iterdir())


def test_a_reader_that_goes_away_does_not_lose_the_run(tmp_path):
    """`miniai train | head -2`: the next print raised BrokenPipeError mid-training, and the run was lost."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "miniai", "train", "--epochs", "2", "--n-train", "256",
                             "--n-valid", "64", "--bs", "32", "--device", "cpu", "--out", str(tmp_path)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()
    proc.stdout.close()  # as head does after its lines
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err
    assert (tmp_path / "model.pt").is_file() and "Traceback" not in err



def test_a_run_with_stdout_closed_trains_and_saves(tmp_path, monkeypatch):
    """`miniai train ... >&-` (sys.stdout is None) ended before training: ProgressCB called sys.stdout.isatty()."""
    from miniai.__main__ import main
    monkeypatch.setattr(sys, "stdout", None)
    assert main(["train", *SMALL, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "model.pt").is_file()


def test_a_run_whose_stdout_fails_to_write_trains_and_saves(tmp_path):
    """stdout on a full device (/dev/full) ended the run with an OSError traceback; a gone reader already did not."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "miniai", "train", *SMALL, "--out", str(tmp_path)], cwd=ROOT,
                              env=env, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "model.pt").is_file() and "Traceback" not in proc.stderr


def test_an_overwrite_run_under_torchrun_leaves_rank_0s_moved_aside_files_to_it(tmp_path, monkeypatch):
    """Rank 1 took the folder rank 0 had just moved the earlier run's files into for a killed run's leftovers, and
    refused (exit 2), telling the user to move them back while rank 0 ran: 2 runs in 5 failed under torchrun."""
    import miniai.distributed as distributed
    from miniai.__main__ import main
    (tmp_path / "model.pt").write_bytes(b"earlier")
    aside = tmp_path / ".miniai-overwritten.abc"
    aside.mkdir()
    (aside / "log.csv").write_text("rank 0's, moved aside a moment ago\n")
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(Exception):  # (not SystemExit, the refusal: past the checks, a lone rank 1 fails later)
        main(["train", *SMALL, "--out", str(tmp_path), "--overwrite"])
    assert (aside / "log.csv").is_file()


def test_a_run_whose_norm_statistics_overflow_ends_with_words_for_the_command(capsys):
    """--lr 1e3 for 2 epochs left a BatchNorm's running_var inf with finite weights: the message the command printed
    pointed to "the advice below", which it had cut, and to Python code and checkpoint names it has none of."""
    from miniai.__main__ import main
    assert main(["train", "--epochs", "2", "--n-train", "512", "--n-valid", "256", "--bs", "128", "--device", "cpu",
                 "--lr", "1e3"]) == 1
    err = capsys.readouterr().err
    assert "running statistic" in err and "a lower --lr" in err and "Traceback" not in err
    assert "below" not in err and "learn." not in err and "checkpoint" not in err.replace("keeps no checkpoints", "")


def test_a_step_or_plateau_schedule_over_one_epoch_is_a_usage_error(capsys):
    """--sched step --epochs 1: StepLR(step_size=1) drops the lr after the one epoch, when no batch trains with it
    (the schedule check warned of it, which a CLI user can't act on)."""
    from miniai.__main__ import main
    with pytest.raises(SystemExit) as info:
        main(["train", *SMALL, "--epochs", "1", "--sched", "step"])
    assert info.value.code == 2 and "schedule 'step' lowers the lr" in capsys.readouterr().err
    for epochs in ("1", "3"):  # (session 22: plateau's schedule can't act before the 4th epoch (patience 1))
        with pytest.raises(SystemExit) as info:
            main(["train", *SMALL, "--epochs", epochs, "--sched", "plateau"])
        assert info.value.code == 2 and "the first epoch that can train at a lower lr is the 4th" in \
            capsys.readouterr().err


def test_data_removed_while_training_does_not_cost_the_trained_model(tmp_path, monkeypatch, capsys):
    """(probe P25, session 23) After the fit, the command read the data directory again to name the validation
    split, before writing model.pt: a --data folder moved or cleaned up meanwhile ended the run in DataNotFoundError
    (saying "given as path="), and the trained model was lost."""
    import shutil

    from miniai.__main__ import main
    from miniai.learner import Learner
    from miniai.sources import find_source
    data = tmp_path / "data"
    shutil.copytree(find_source("fashion_mnist").where, data)
    fit = Learner.fit

    def fit_then_remove(self, *args, **kwargs):
        fit(self, *args, **kwargs)
        shutil.rmtree(data)
    monkeypatch.setattr(Learner, "fit", fit_then_remove)
    assert main(["train", *SMALL, "--data", str(data), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.pt").is_file() and (tmp_path / "out" / "result.json").is_file()


@pytest.mark.parametrize("argv", [["--bs", "63"], ["--recipe", "fast", "--bs", "21", "--epochs", "2"]])
def test_a_last_batch_of_one_image_trains_a_model_whose_batchnorm_can(argv, capsys):
    """(probe P33, session 23) A last batch of one image was refused for every model, "on which the model's
    BatchNorm layers can't train": the reference CNN's and the fast recipe's BatchNorm2d see 2x2 and 4x4 maps and
    train on one image. Only a model that can't (the ResNet recipes' BatchNorm1d of the logits) is refused."""
    from miniai.__main__ import main
    assert main(["train", *SMALL, *argv]) == 0


def test_result_json_records_the_data_settings_device_and_versions_a_run_used(tmp_path, monkeypatch):
    """(probe P67) With $MINIAI_DATA set, result.json said 'the test set' and its command had no --data: run again,
    the command trained on other data (0.838 for 0.700), and nothing recorded the data, lr, schedule, device or
    versions."""
    import platform

    import torch

    from miniai.__main__ import main
    from miniai.sources import SYSTEM_DATA_DIR
    monkeypatch.setenv("MINIAI_DATA", str(SYSTEM_DATA_DIR))
    assert main(["train", *SMALL, "--out", str(tmp_path / "a")]) == 0
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["data"] == f"IDX files in {SYSTEM_DATA_DIR} ($MINIAI_DATA)"
    assert (result["lr"], result["sched"], result["device"]) == (2e-2, "none", "cpu")
    assert (result["n_train"], result["n_valid"], result["holdout"]) == (64, 32, None)
    assert result["versions"] == {"python": platform.python_version(), "torch": torch.__version__,
                                  "miniai": __import__("miniai").__version__}


def test_a_stopped_run_whose_stderr_reader_has_gone_still_exits_130(tmp_path, monkeypatch):
    """(probe P67) `miniai train ... 2>&1 | head -1`, then Ctrl-C: the stop message's print raised BrokenPipeError,
    and the command exited 1, not 130, misread by the script driving it."""
    from miniai.__main__ import main
    from miniai.callbacks.scheduling import RecorderCB

    class Gone:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            raise OSError("no file")

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(RecorderCB, "plot", interrupted)
    monkeypatch.setattr(sys, "stderr", Gone())
    assert main(["train", *SMALL, "--out", str(tmp_path)]) == 130


def test_a_full_disk_while_drawing_a_plot_leaves_no_truncated_file(tmp_path, monkeypatch, capsys):
    """(probe P67) loss.png was written in place: a full disk left a truncated 12 KB image that the message called
    'not written'. Every output goes through a part file, renamed once complete."""
    import errno

    from matplotlib.figure import Figure

    from miniai.__main__ import main

    def full(self, fname, *args, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Figure, "savefig", full)
    assert main(["train", *SMALL, "--out", str(tmp_path)]) == 1
    assert "loss.png, schedule.png not written" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["log.csv", "model.pt",
                                                                                        "result.json"]
    assert not list(tmp_path.glob(".*.part"))


def test_result_json_holds_this_runs_own_time_beside_the_processs(tmp_path):
    """(probe P67) A script calling main() three times got wall_s counted from the process start: 5.3 s recorded for
    a run of 0.6 s. run_s is the run's own."""
    from miniai.__main__ import main
    for name in ("a", "b"):
        assert main(["train", *SMALL, "--out", str(tmp_path / name)]) == 0
    first, second = (json.loads((tmp_path / name / "result.json").read_text()) for name in ("a", "b"))
    assert second["wall_s"] >= first["run_s"] + second["run_s"] and second["run_s"] >= second["fit_s"]
