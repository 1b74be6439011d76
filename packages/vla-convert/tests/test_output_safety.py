"""Bad output locations and flags: each gets its named error, and the source checkpoint (and any
existing output) is byte-for-byte intact afterwards. Also: umask-respecting permissions, cleanup
of partial dirs left by a SIGKILLed run, and CLI errors without tracebacks."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from vla_convert._testing import random_openpi_params, tiny_dims, write_openpi_checkpoint
from vla_convert.cli import main
from vla_convert.convert import convert_openpi
from vla_convert.errors import LoraConfigError, ModelMismatchError, OutputPathError
from vla_convert.lora import LoraSpec


def _digest(root: Path) -> dict[str, str]:
    """path -> sha256 of every file under root (the proof of no data loss)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    return write_openpi_checkpoint(
        root / "run" / "500", random_openpi_params(tiny_dims(), seed=4), norm_stats={"a": [1]}
    )


@pytest.fixture
def private_source(source: Path, tmp_path: Path) -> Path:
    """A copy the test may point outputs into (the shared one must stay pristine)."""
    import shutil

    copy = tmp_path / "ckpt" / "500"
    shutil.copytree(source, copy)
    return copy


@pytest.mark.parametrize(
    "where", ["step", "params", "inside_step", "inside_params", "parent", "grandparent"]
)
def test_output_overlapping_the_source_is_refused(private_source: Path, where: str) -> None:
    step = private_source
    out = {
        "step": step,
        "params": step / "params",
        "inside_step": step / "converted",
        "inside_params": step / "params" / "converted",
        "parent": step.parent,
        "grandparent": step.parent.parent,
    }[where]
    before = _digest(step.parent.parent)
    for checkpoint_dir in (step, step / "params"):
        with pytest.raises(OutputPathError, match="source checkpoint"):
            convert_openpi(checkpoint_dir, out, layout="openpi", overwrite=True)
    assert _digest(step.parent.parent) == before
    assert not (step / "converted").exists()


def test_output_symlinked_to_the_source_is_refused(private_source: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(private_source)
    before = _digest(private_source)
    with pytest.raises(OutputPathError, match="is the source checkpoint"):
        convert_openpi(private_source, link, layout="openpi", overwrite=True)
    assert _digest(private_source) == before and link.is_symlink()


def test_cli_refuses_overlap_without_traceback(private_source: Path) -> None:
    before = _digest(private_source)
    argv = ["openpi", "--checkpoint-dir", str(private_source), "--out", str(private_source)]
    result = _run_cli([*argv, "--overwrite", "--no-progress"])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert "OutputPathError" in result.stderr and "Traceback" not in result.stderr
    assert _digest(private_source) == before


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_output_permissions_follow_the_umask(source: Path, tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        convert_openpi(source, tmp_path / "out", layout="openpi")
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    for path in out.rglob("*"):
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == want, path


def test_permission_denied_is_a_named_error(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(*args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    with pytest.raises(OutputPathError, match="permission denied on"):
        convert_openpi(source, tmp_path / "out", layout="openpi")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_location_cli_error_without_traceback(source: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = _run_cli(
            ["openpi", "--checkpoint-dir", str(source), "--out", str(locked / "o"), "--no-progress"]
        )
    finally:
        locked.chmod(0o755)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "permission denied" in result.stderr.lower() and str(locked) in result.stderr


def test_cli_reports_os_errors_without_traceback(
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import vla_convert.cli as cli

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device", str(tmp_path / "o"))

    monkeypatch.setattr(cli, "convert_openpi", full)
    assert main(["openpi", "--checkpoint-dir", str(source), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vla-convert: error: OSError: No space left on device")
    assert str(tmp_path / "o") in err


def test_contradicted_variant_is_refused(source: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelMismatchError, match=r"gemma_2b'.*width 48 \(variant says 2048\)"):
        convert_openpi(source, tmp_path / "o", paligemma_variant="gemma_2b")
    with pytest.raises(ModelMismatchError, match="expert was declared"):
        convert_openpi(source, tmp_path / "o", action_expert_variant="gemma_300m")
    assert not (tmp_path / "o").exists()


def test_lora_flags_without_adapters_are_refused(source: Path, tmp_path: Path) -> None:
    with pytest.raises(LoraConfigError, match="match no adapters"):
        convert_openpi(source, tmp_path / "o", lora=LoraSpec(4, 4.0))
    argv = ["openpi", "--checkpoint-dir", str(source), "--out", str(tmp_path / "o")]
    result = _run_cli([*argv, "--lora", "tower=expert,alpha=4", "--no-progress"])
    assert result.returncode == 1 and "match no adapters" in result.stderr
    assert "Traceback" not in result.stderr and "Event loop" not in result.stderr
    assert not (tmp_path / "o").exists()


_KILL_AFTER_FIRST_TENSOR = """
import os, signal, sys
import vla_convert.writer as writer
original = writer.StreamingSafetensorsWriter.write
def write(self, name, tensor):
    original(self, name, tensor)
    os.kill(os.getpid(), signal.SIGKILL)
writer.StreamingSafetensorsWriter.write = write
from vla_convert.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run_cli(argv: list[str], code: str | None = None) -> subprocess.CompletedProcess[str]:
    script = code or "import sys\nfrom vla_convert.cli import main\nsys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", script, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_partial_dir_of_a_killed_run_is_cleaned_by_the_next(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["openpi", "--checkpoint-dir", str(source), "--out", str(out), "--no-progress"]
    killed = _run_cli(argv, _KILL_AFTER_FIRST_TENSOR)
    assert killed.returncode == -signal.SIGKILL
    partials = [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial-")]
    assert len(partials) == 1 and not out.exists()
    # a partial dir of a run still alive (this process) must survive
    alive = tmp_path / f".out.partial-{socket.gethostname()}-{os.getpid()}-live"
    alive.mkdir()
    convert_openpi(source, out, layout="openpi")
    assert not partials[0].exists() and alive.is_dir()
    assert (out / "model.safetensors").is_file()


def test_previous_output_of_a_run_killed_mid_swap_is_restored(tmp_path: Path) -> None:
    from vla_convert.writer import clean_stale_partials

    out = tmp_path / "out"
    trash = tmp_path / ".out.old-abc123"
    (trash / "out").mkdir(parents=True)
    (trash / "out" / "model.safetensors").write_text("previous")
    clean_stale_partials(out)
    assert (out / "model.safetensors").read_text() == "previous" and not trash.exists()
