"""Bad inputs and failures through the command line, as a table: each row is a command line (built on a
trained run, a temporary folder, and any failure it simulates), the exit status, and a fragment of the
message. Every row must give at most two lines on stderr (one ``ppl-vae: ...`` line, after the blank
line an interruption prints), no traceback, and change no run: the files of every run directory it
touches (and of any data folder it names) are as they were, and no directory appears under --out-dir.

One trained run (2 epochs on 100 of the 8x8 digits) is shared by the module; rows that damage a run
work on a copy of it.
"""

from __future__ import annotations

import builtins
import datetime
import errno
import hashlib
import io
import os
import shutil
import signal
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from ppl_vae.cli import main
from ppl_vae.errors import FitInterrupted
from ppl_vae.runs import RunDir

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "vae_digits.yaml")
#: what every fit in the table adds, so that a row that is not refused stays short
TINY = ["--set", "train.epochs=1", "--set", "data.num_train=100", "--set", "train.progress=false"]


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished 2-epoch run of configs/vae_digits.yaml; no row may change it."""
    out = tmp_path_factory.mktemp("bad_inputs")
    argv = ["fit", DIGITS, "--set", "train.epochs=2", "--set", "data.num_train=100", "--set", "train.progress=false"]
    assert main([*argv, "--no-figures", "--out-dir", str(out), "--name", "run"]) == 0
    return out / "run"


@dataclass
class Ctx:
    """What a row's builder works with, and what the test checks after the row has run."""

    run: Path  #: the shared trained run
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    out: Path  #: the --out-dir of fits: it must gain no directory
    #: run directories and data folders whose contents must be as they were
    watched: list[Path] = field(default_factory=list)
    #: folders that must gain no entry (the --out-dir, and any other a row names)
    no_new_entries: list[Path] = field(default_factory=list)
    finalizers: list[Callable[[], None]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)  #: simulated failures that fired

    def copy_run(self) -> Path:
        path = Path(shutil.copytree(self.run, self.tmp / f"run-copy-{len(self.watched)}"))
        self.watched.append(path)
        return path

    def file(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def fit(self, *args: str) -> list[str]:
        return ["fit", DIGITS, *TINY, *args, "--out-dir", str(self.out)]


@dataclass
class Case:
    build: Callable[[Ctx], list[str]]
    code: int
    fragments: tuple[str, ...]
    #: text the message must not hold (torch's advice to load a checkpoint with weights_only=False)
    absent: tuple[str, ...] = ()
    #: files of the watched runs that may change (stated exceptions: a resume that ran before the disk filled up)
    may_change: tuple[str, ...] = ()
    #: further checks after the row ran
    then: Callable[[Ctx], None] | None = None


def row(id: str, build, code: int, *fragments: str, marks=(), **kw):
    return pytest.param(Case(build, code, fragments, **kw), id=id, marks=marks)


#: not run state: the writer's OS lock, which a refused resume may take (and write its pid into) before refusing
NOT_STATE = (".lock",)


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every file (size, mtime, digest) and folder under ``root``."""
    out: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.name in NOT_STATE:
            continue
        if path.is_dir():
            out[rel] = ("dir",)
        else:
            st = path.stat()
            out[rel] = (st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def _screen_lines(err: str) -> list[str]:
    """The non-blank lines stderr leaves on a terminal: a progress bar redrawn with carriage returns and
    cleared before the message takes no line of its own."""
    return [shown for line in err.split("\n") if (shown := line.rsplit("\r", 1)[-1]).strip()]


# -- simulated failures ------------------------------------------------------------------------


def _refuse_writes_under(monkeypatch: pytest.MonkeyPatch, root: Path, access: bool) -> None:
    """Every write under ``root`` fails as on a read-only file system (EROFS): opening a file to write,
    creating a folder, renaming into it. For a process that chmod cannot stop (root).

    With ``access``, ``os.access`` also says so (as for a read-only mount), and a command refuses up front;
    without, the command meets the error of the write itself."""
    root = root.resolve()

    def inside(path) -> bool:
        try:
            return Path(os.fsdecode(path)).resolve().is_relative_to(root)
        except (TypeError, ValueError):
            return False

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_open, real_os_open, real_mkdir, real_replace = builtins.open, os.open, os.mkdir, os.replace
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def fake_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and inside(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & writes and kwargs.get("dir_fd") is None and inside(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if kwargs.get("dir_fd") is None and inside(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def fake_replace(src, dst, *args, **kwargs):
        if kwargs.get("dst_dir_fd") is None and inside(dst):
            refuse(dst)
        return real_replace(src, dst, *args, **kwargs)

    real_access = os.access

    def fake_access(path, mode, *args, **kwargs):
        if mode & os.W_OK and inside(path):
            return False
        return real_access(path, mode, *args, **kwargs)

    if access:
        monkeypatch.setattr(os, "access", fake_access)
    for module in (builtins, io):
        monkeypatch.setattr(module, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "replace", fake_replace)
    monkeypatch.setattr(os, "rename", fake_replace)


def _read_only(ctx: Ctx, root: Path, access: bool = True) -> Path:
    """Make ``root`` read-only: chmod (folders 0o555, files 0o444) where that stops writes; where it does not
    (the tests run as root), simulate a read-only file system under it (see :func:`_refuse_writes_under`)."""
    paths = [root, *root.rglob("*")]
    for p in reversed(paths):
        p.chmod(0o555 if p.is_dir() else 0o444)
    ctx.finalizers.append(lambda: [p.chmod(0o755 if p.is_dir() else 0o644) for p in paths])
    probe = root / ".write-probe"
    try:
        probe.touch()
    except PermissionError:
        return root  # chmod is enough
    probe.unlink()
    _refuse_writes_under(ctx.monkeypatch, root, access)
    return root


def _fsync_disk_full(ctx: Ctx) -> None:
    """The disk fills up as the run's files are written (fsync reports ENOSPC, as on delayed allocation)."""

    def fsync(fd):
        ctx.calls.append("fsync")
        raise _enospc()

    ctx.monkeypatch.setattr(os, "fsync", fsync)


class _FullFile:
    """A file whose disk fills up after ``room`` bytes."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise _enospc()
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def _checkpoint_disk_full(ctx: Ctx) -> None:
    """The disk fills up in the middle of writing a checkpoint (torch.save turns that into a RuntimeError)."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        ctx.calls.append("torch.save")
        return real_save(obj, _FullFile(f, 1000), *args, **kwargs)

    ctx.monkeypatch.setattr(torch, "save", save)


def _savefig_disk_full(ctx: Ctx) -> None:
    from matplotlib.figure import Figure

    def savefig(self, fname, *args, **kwargs):
        ctx.calls.append("savefig")
        raise _enospc()

    ctx.monkeypatch.setattr(Figure, "savefig", savefig)


def _raise_in(ctx: Ctx, target: str, name: str, error: BaseException) -> None:
    """Replace ``target.name`` (a module or class, by import path) by a function that raises ``error``."""

    def fail(*args, **kwargs):
        ctx.calls.append(name)
        raise error

    ctx.monkeypatch.setattr(f"{target}.{name}", fail)


def _no_network(ctx: Ctx) -> None:
    import torchvision.datasets.utils

    def download_url(url, root, filename=None, md5=None, *args, **kwargs):
        ctx.calls.append("download_url")
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    ctx.monkeypatch.setattr(torchvision.datasets.utils, "download_url", download_url)


# -- builders of rows that need more than a command line ---------------------------------------


def _config_file(text: str | bytes, name: str = "config.yaml"):
    return lambda ctx: ["fit", ctx.file(name, text), *TINY, "--out-dir", str(ctx.out)]


def _damaged_run_config(text: str, *command: str):
    def build(ctx: Ctx) -> list[str]:
        run = ctx.copy_run()
        (run / "config.yaml").write_text(text)
        return [c.replace("RUN", str(run)) for c in command]

    return build


def _damaged_checkpoint(damage: Callable[[Path], None], *command: str):
    def build(ctx: Ctx) -> list[str]:
        run = ctx.copy_run()
        damage(run / "checkpoint.pt")
        return [c.replace("RUN", str(run)) for c in command]

    return build


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a checkpoint" * 10)


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _foreign(path: Path) -> None:
    torch.save({"format": "ppl_vae.checkpoint/2", "made": datetime.date(2020, 1, 1)}, path)


def _other_latent_dim(*command: str):
    """A run whose config.yaml asks for another latent size than its checkpoint holds."""

    def build(ctx: Ctx) -> list[str]:
        run = ctx.copy_run()
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["model"]["latent_dim"] = 3
        (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        return [c.replace("RUN", str(run)) for c in command]

    return build


def _partial_mnist(ctx: Ctx) -> list[str]:
    """An MNIST folder without its test images, and no network."""
    data = ctx.tmp / "data"
    raw = data / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (raw / name).write_bytes(b"never read: a missing file is reported first")
    ctx.watched.append(data)
    _no_network(ctx)
    return ctx.fit("--set", "data.name=mnist", "--data-dir", str(data))


def _no_binarized_mnist(ctx: Ctx) -> list[str]:
    data = ctx.tmp / "data"
    data.mkdir()
    ctx.watched.append(data)  # not even an empty binarized_mnist/ folder may be left behind
    _no_network(ctx)
    return ctx.fit("--set", "data.name=binarized_mnist", "--data-dir", str(data))


def _no_mnist_download_off(ctx: Ctx) -> list[str]:
    data = ctx.tmp / "data"
    data.mkdir()
    ctx.watched.append(data)
    return ctx.fit("--set", "data.name=mnist", "--set", "data.download=false", "--data-dir", str(data))


def _read_only_out_dir(ctx: Ctx) -> list[str]:
    ro = ctx.tmp / "locked"
    ro.mkdir()
    ctx.no_new_entries.append(_read_only(ctx, ro))
    return ["fit", DIGITS, *TINY, "--out-dir", str(ro / "runs")]


def _read_only_run(*command: str, access: bool = True):
    def build(ctx: Ctx) -> list[str]:
        run = _read_only(ctx, ctx.copy_run(), access)
        return [c.replace("RUN", str(run)) for c in command]

    return build


def _fsync_full(*command: str):
    def build(ctx: Ctx) -> list[str]:
        _fsync_disk_full(ctx)
        return [c.replace("RUN", str(ctx.run)) for c in command]

    return build


def _disk_full_new_fit(ctx: Ctx) -> list[str]:
    _checkpoint_disk_full(ctx)
    return ctx.fit()


def _disk_full_resume(ctx: Ctx) -> list[str]:
    run = ctx.copy_run()
    _checkpoint_disk_full(ctx)
    return ["fit", "--resume", str(run), "--set", "train.epochs=3", "--no-figures"]


def _checkpoint_survives(ctx: Ctx) -> None:
    run = RunDir(ctx.watched[-1])
    assert "torch.save" in ctx.calls
    assert run.load_checkpoint()["epoch"] == 2
    assert not [p.name for p in run.path.iterdir() if ".tmp-" in p.name]  # the half-written temporary file is gone


def _disk_full_sample(ctx: Ctx) -> list[str]:
    _savefig_disk_full(ctx)
    return ["sample", str(ctx.run), "-n", "4", "--out", str(ctx.tmp / "figures" / "s.png")]


def _interrupt(target: str, name: str, error: BaseException):
    def build(ctx: Ctx) -> list[str]:
        _raise_in(ctx, target, name, error)
        return ctx.fit()

    return build


def _fired(name: str):
    def check(ctx: Ctx) -> None:
        assert name in ctx.calls, f"the simulated failure in {name} never happened: the row tests nothing"

    return check


SIGTERM_STOP = FitInterrupted("interrupted by SIGTERM at epoch 1, step 2; resume with: ppl-vae fit --resume RUN",
                              signal=signal.SIGTERM)
CTRL_C_STOP = FitInterrupted("interrupted at epoch 1, step 2; resume with: ppl-vae fit --resume RUN")
# A fit that has started stops with a checkpoint (FitInterrupted); Ctrl-C before that is a plain KeyboardInterrupt.

ROWS = [
    # -- the command line and the config ------------------------------------------------------------
    row("missing-config-file", lambda c: ["fit", str(c.tmp / "nope.yaml"), "--out-dir", str(c.out)], 2, "nope.yaml", "does not exist"),
    row("fit-without-config", lambda c: ["fit"], 2, "CONFIG"),
    row("unknown-command", lambda c: ["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    row("unknown-option", lambda c: ["evaluate", str(c.run), "--bogus"], 2, "unrecognized arguments: --bogus"),
    row("unknown-key-set", lambda c: c.fit("--set", "train.epoch=3"), 2, "train.epoch", "did you mean 'epochs'"),
    row("unknown-key-in-file", _config_file("model:\n  latent_dims: 4\n"), 2, "model.latent_dims"),
    row("unknown-section-in-file", _config_file("trian:\n  epochs: 4\n"), 2, "unknown section 'trian'"),
    row("unknown-section-set", lambda c: c.fit("--set", "trian.epochs=3"), 2, "unknown section 'trian'"),
    row("wrong-type", lambda c: c.fit("--set", "train.epochs=many"), 2, "train.epochs", "int"),
    row("malformed-set", lambda c: c.fit("--set", "epochs"), 2, "--set expects section.key=value"),
    row("set-value-not-yaml", lambda c: c.fit("--set", "model.hidden_dims=[64"), 2, "cannot parse the value '[64'", "line 1"),
    row("unknown-estimator", lambda c: c.fit("--set", "estimator.name=bogus"), 2, "unknown estimator.name 'bogus'"),
    row("corruption-kind", lambda c: c.fit("--set", "guide.corruption.kind=blur"), 2, "guide.corruption.kind", "'blur'"),
    row("contractive-without-delta", lambda c: c.fit("--set", "guide.contractive.weight=0.1"), 2, "needs head: delta"),
    row("adversarial-weight", lambda c: c.fit("--set", "adversarial.weight=-1"), 2, "adversarial.weight", "-1"),
    row("stack-with-model", lambda c: c.fit("--set", "stack.layers=[8]"), 2, "remove the model section"),
    row("prior-section-not-vqvae", lambda c: c.fit("--set", "prior.epochs=2"), 2, "prior: section", "model 'vae'", "model.name: vqvae"),
    row("prior-section-bad-epochs", _config_file("model: {name: vqvae}\nguide: {name: vqvae}\nprior: {epochs: 0}\n"), 2, "prior.epochs", "positive"),
    row("fit-prior-not-vqvae", lambda c: ["fit-prior", str(c.copy_run())], 2, "fit-prior needs a VQ-VAE run"),
    row("fit-prior-missing-run", lambda c: ["fit-prior", str(c.tmp / "nope")], 2, "does not exist"),
    row("fit-prior-bad-epochs", lambda c: ["fit-prior", str(c.copy_run()), "--epochs", "0"], 2, "prior.epochs", "positive"),
    row("config-yaml-syntax", _config_file("train:\n  epochs: [1, 2\n"), 2, "not valid YAML", "line 3, column 1"),
    row("config-is-a-list", _config_file("- data\n- model\n"), 2, "config.yaml", "top level is a list"),
    row("config-is-binary", _config_file(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "picture.yaml"), 2, "not a text (YAML) file"),
    row("config-is-a-folder", lambda c: ["fit", str(c.tmp), *TINY, "--out-dir", str(c.out)], 2, "is a folder"),
    # -- settings that would give silently wrong results -----------------------------------------
    row("fractions-sum-above-one", lambda c: c.fit("--set", "data.val_fraction=0.6", "--set", "data.test_fraction=0.6"),
        2, "data.val_fraction + data.test_fraction must be below 1"),
    row("fractions-leave-no-training-set", lambda c: c.fit("--set", "data.val_fraction=0.5003", "--set", "data.test_fraction=0.4996"),
        2, "leave no training points"),
    row("negative-max-points", lambda c: ["evaluate", str(c.run), "--max-points", "-5"], 2, "--max-points must be a positive int"),
    row("negative-num-samples", lambda c: ["evaluate", str(c.run), "--num-samples", "-3"], 2, "--num-samples must be a positive int"),
    row("zero-samples", lambda c: ["sample", str(c.run), "-n", "0"], 2, "-n must be a positive int"),
    row("samples-not-an-int", lambda c: ["sample", str(c.run), "-n", "abc"], 2, "invalid int value: 'abc'"),
    row("evaluate-device-tpu", lambda c: ["evaluate", str(c.run), "--device", "tpu"], 2, "--device", "'tpu'"),
    row("sample-device-tpu", lambda c: ["sample", str(c.run), "--device", "tpu"], 2, "--device", "'tpu'"),
    # -- a diverging fit: the project's NonFiniteLossError, naming epoch and step ----------------------
    row("lr-1e12", lambda c: c.fit("--set", "optim.lr=1e12"), 2, "at epoch 1, step", "lower optim.lr"),
    row("lr-1e38", lambda c: c.fit("--set", "optim.lr=1e38"), 2, "at epoch 1, step", "lower optim.lr"),
    # -- run directories ---------------------------------------------------------------------------
    row("evaluate-missing-run", lambda c: ["evaluate", str(c.tmp / "no-such-run")], 2, "no-such-run", "does not exist"),
    row("sample-missing-run", lambda c: ["sample", str(c.tmp / "no-such-run")], 2, "no-such-run", "does not exist"),
    row("resume-missing-run", lambda c: ["fit", "--resume", str(c.tmp / "no-such-run")], 2, "no-such-run", "does not exist"),
    row("resume-dir-without-config", lambda c: ["fit", "--resume", str(c.out)], 2, "config.yaml is missing"),
    row("resume-config-yaml-syntax", _damaged_run_config("data: [\n", "fit", "--resume", "RUN"), 2, "config.yaml is not valid YAML"),
    row("resume-config-is-a-list", _damaged_run_config("- 1\n", "fit", "--resume", "RUN"), 2, "config.yaml", "top level is a list"),
    row("evaluate-config-yaml-syntax", _damaged_run_config("data: [\n", "evaluate", "RUN"), 2, "config.yaml is not valid YAML"),
    row("resume-non-train-override", lambda c: ["fit", "--resume", str(c.run), "--set", "model.latent_dim=4"],
        2, "model.latent_dim", "train.*"),
    # -- checkpoints ---------------------------------------------------------------------------------
    row("corrupted-checkpoint", _damaged_checkpoint(_garbage, "evaluate", "RUN", "-k", "2"), 2,
        "checkpoint.pt", "corrupted or truncated", absent=("weights_only",)),
    row("truncated-checkpoint", _damaged_checkpoint(_truncated, "sample", "RUN", "-n", "4"), 2,
        "checkpoint.pt", "corrupted or truncated", absent=("weights_only",)),
    row("checkpoint-with-foreign-objects", _damaged_checkpoint(_foreign, "evaluate", "RUN"), 2,
        "checkpoint.pt", "cannot be read", absent=("weights_only", "trust")),
    row("checkpoint-not-matching-config", _other_latent_dim("evaluate", "RUN", "-k", "2"), 2, "does not match"),
    row("resume-checkpoint-not-matching-config", _other_latent_dim("fit", "--resume", "RUN", "--set", "train.epochs=3"),
        2, "model.latent_dim"),
    # -- data files ----------------------------------------------------------------------------------
    row("mnist-missing-download-off", _no_mnist_download_off, 2, "MNIST", "download is off"),
    row("mnist-partial-no-network", _partial_mnist, 2, "t10k-images-idx3-ubyte[.gz] missing", "download failed",
        then=_fired("download_url")),
    row("binarized-mnist-no-network", _no_binarized_mnist, 2, "binarized_mnist_train.amat[.gz]", "download failed",
        then=_fired("download_url")),
    # -- a read-only location, a full disk -----------------------------------------------------------
    row("read-only-out-dir", _read_only_out_dir, 2, "cannot write", "read-only"),
    row("read-only-run-evaluate", _read_only_run("evaluate", "RUN", "-k", "2", "--max-points", "10"), 2, "cannot write"),
    # as root, these two meet the failed write itself (elsewhere chmod makes them refuse up front, as the two above)
    row("read-only-run-sample", _read_only_run("sample", "RUN", "-n", "4", access=False), 2, "cannot write"),
    row("read-only-run-resume", _read_only_run("fit", "--resume", "RUN", "--set", "train.epochs=3", access=False),
        2, "cannot write"),
    row("disk-full-fit", _disk_full_new_fit, 2, "the disk is full", then=_fired("torch.save")),
    row("disk-full-resume-keeps-checkpoint", _disk_full_resume, 2, "the disk is full", "last checkpoint is kept", "--resume",
        may_change=("config.yaml", "metrics.jsonl"), then=_checkpoint_survives),
    row("disk-full-evaluate", _fsync_full("evaluate", "RUN", "-k", "2", "--max-points", "10"), 2, "the disk is full",
        then=_fired("fsync")),
    row("disk-full-sample", _disk_full_sample, 2, "the disk is full", "figures", then=_fired("savefig")),
    # -- interruptions -------------------------------------------------------------------------------
    row("ctrl-c-reading-config", _interrupt("ppl_vae.config", "load_config", KeyboardInterrupt()), 130, "ppl-vae: interrupted"),
    row("ctrl-c-loading-data", _interrupt("ppl_vae.experiment", "load_dataset", KeyboardInterrupt()), 130, "ppl-vae: interrupted"),
    row("ctrl-c-before-first-checkpoint", _interrupt("ppl_vae.runs.RunDir", "save_checkpoint", KeyboardInterrupt()),
        130, "ppl-vae: interrupted", then=_fired("save_checkpoint")),
    row("fit-stopped-by-ctrl-c", _interrupt("ppl_vae.experiment", "fit_experiment", CTRL_C_STOP), 130, "interrupted at epoch 1"),
    row("fit-stopped-by-sigterm", _interrupt("ppl_vae.experiment", "fit_experiment", SIGTERM_STOP), 143, "interrupted by SIGTERM"),
]


def _main(argv: list[str]) -> int:
    try:
        return main(argv)
    except KeyboardInterrupt as err:  # would end the whole test session
        pytest.fail(f"main let {err!r} through")


@pytest.mark.parametrize("case", ROWS)
def test_bad_input(case: Case, trained_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs"
    out.mkdir()
    ctx = Ctx(trained_run, tmp_path, monkeypatch, out, watched=[trained_run], no_new_entries=[out])
    try:
        argv = case.build(ctx)
        before = {path: _snapshot(path) for path in ctx.watched}
        listings = {path: sorted(os.listdir(path)) for path in ctx.no_new_entries}
        capsys.readouterr()
        code = _main(argv)
        err = capsys.readouterr().err
        monkeypatch.undo()  # no simulated failure while the checks read files
        for finalize in reversed(ctx.finalizers):
            finalize()
        ctx.finalizers.clear()

        assert code == case.code, err
        assert "Traceback" not in err, err
        lines = _screen_lines(err)
        assert 1 <= len(lines) <= 2, err
        assert lines[-1].startswith("ppl-vae: error: " if case.code == 2 else "ppl-vae: "), err
        for fragment in case.fragments:
            assert fragment in err, (fragment, err)
        for text in case.absent:
            assert text not in err, (text, err)
        for path, files in before.items():
            after = _snapshot(path)
            changed = {k for k in set(files) | set(after) if files.get(k) != after.get(k)}
            assert changed <= set(case.may_change), f"{path}: {sorted(changed)} changed"
        for path, listing in listings.items():
            assert sorted(os.listdir(path)) == listing, f"{path} gained {set(os.listdir(path)) - set(listing)}"
        if case.then is not None:
            case.then(ctx)
    finally:
        for finalize in reversed(ctx.finalizers):
            finalize()


# -- what is not refused -----------------------------------------------------------------------


def test_sample_creates_the_folder_of_out(trained_run, tmp_path, capsys):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    out = run / "no" / "such" / "dir" / "s.png"
    assert main(["sample", str(run), "-n", "4", "--out", str(out)]) == 0, capsys.readouterr().err
    assert out.is_file() and out.with_name("s_reconstructions.png").is_file()


def test_sigterm_during_a_fit_checkpoints_and_exits_143(trained_run, tmp_path, monkeypatch, capsys):
    """A real SIGTERM in the middle of an epoch: fit stops after the step with a checkpoint, and the CLI
    says how to resume, in one line, with the exit status a shell reports for SIGTERM."""
    from ppl_vae.data import Batches

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    real_epoch = Batches.epoch

    def epoch(self, *args, **kwargs):
        for i, item in enumerate(real_epoch(self, *args, **kwargs)):
            yield item
            if i == 0:
                # never SIGTERM a process that has no handler for it: that would end the test run
                assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Batches, "epoch", epoch)
    capsys.readouterr()
    code = _main(["fit", "--resume", str(run), "--set", "train.epochs=3", "--no-figures"])
    err = capsys.readouterr().err
    assert code == 143, err
    assert "Traceback" not in err and len(_screen_lines(err)) == 1, err
    assert "SIGTERM" in err and f"ppl-vae fit --resume {run}" in err
    state = RunDir(run).load_checkpoint()
    # The signal arrives as the second batch is drawn: that step runs, and the checkpoint resumes after it.
    assert (state["epoch"], state["step"]) == (2, 2)
