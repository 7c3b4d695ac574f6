"""--precision on the CPU: bf16 autocast where the CPU does bfloat16 natively and trains
faster for it, decided by a probe in a child process (a CPU that advertises bfloat16 and
faults on it kills the probe, not the run), kept per machine in a cache file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from charrnn import devices
from charrnn.config import TrainConfig

CPU = torch.device("cpu")


@pytest.fixture
def probe_env(tmp_path, monkeypatch):
    """A fresh cache folder and no remembered answer, before and after."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    devices.cpu_bf16.cache_clear()
    yield tmp_path / "charrnn" / "cpu-bf16.json"
    devices.cpu_bf16.cache_clear()


def fake_probe(monkeypatch, code: str) -> list:
    """Replace the probe's code; the list records each time a child is started."""
    started = []
    real = subprocess.run

    def run(args, **kw):
        started.append(args)
        return real(args, **kw)

    monkeypatch.setattr(devices, "_PROBE", code)
    monkeypatch.setattr(devices.subprocess, "run", run)
    return started


def test_a_cpu_without_bfloat16_flags_is_never_probed(probe_env, monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx2", "fma"})
    started = fake_probe(monkeypatch, "raise SystemExit(1)")
    assert devices.cpu_bf16() is False and started == []
    assert not probe_env.exists()


def test_a_probe_that_faults_means_float32_and_is_remembered(probe_env, monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    started = fake_probe(monkeypatch, "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    assert devices.cpu_bf16() is False and len(started) == 1
    assert list(json.loads(probe_env.read_text()).values()) == [{"bf16": False, "speedup": None}]
    devices.cpu_bf16.cache_clear()
    assert devices.cpu_bf16() is False and len(started) == 1  # the cache answers; no second child


@pytest.mark.parametrize("speedup, expected", [(1.6, True), (1.05, False)])
def test_bf16_is_chosen_only_when_the_probe_step_is_faster(probe_env, monkeypatch, speedup, expected):
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx512_bf16"})
    fake_probe(monkeypatch, f"import json; print(json.dumps({{'ok': True, 'speedup': {speedup}}}))")
    assert devices.cpu_bf16() is expected
    assert devices.use_bf16(CPU, "auto") is expected
    assert devices.use_bf16(CPU, "float32") is False and devices.use_bf16(CPU, "bf16") is True


def test_a_probe_that_computes_wrongly_is_refused(probe_env, monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"amx_bf16"})
    fake_probe(monkeypatch, "import json; print(json.dumps({'ok': False, 'speedup': 0.0}))")
    assert devices.cpu_bf16() is False


def test_an_unwritable_cache_only_costs_a_probe(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    devices.cpu_bf16.cache_clear()
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx512_bf16"})
    fake_probe(monkeypatch, "import json; print(json.dumps({'ok': True, 'speedup': 2.0}))")
    try:
        assert devices.cpu_bf16() is True
    finally:
        devices.cpu_bf16.cache_clear()
    assert blocker.read_text() == "not a folder"


@pytest.mark.slow  # a child process
def test_the_real_probe_runs_on_this_cpu():
    """The probe's own code: autocast works on every CPU (slowly without native bfloat16),
    so it must report a correct bf16 step and a positive speed ratio here."""
    out = subprocess.run([sys.executable, "-c", devices._PROBE, "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"] is True and result["speedup"] > 0


def test_fp32_is_read_as_float32():
    assert TrainConfig(max_steps=1, precision="fp32").precision == "float32"
    with pytest.raises(Exception, match="precision must be one of auto, float32, bf16"):
        TrainConfig(max_steps=1, precision="fp16")


def test_the_probe_never_imports_from_the_working_folder(probe_env, monkeypatch, tmp_path):
    """A json.py in the folder charrnn runs in must not be what the probe imports."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "json.py").write_text("raise SystemExit('the folder json.py was imported')\n")
    monkeypatch.chdir(folder)
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx512_bf16"})
    code = devices._PROBE.split("import json, math, time, torch")[0] + (
        "import json\nprint(json.dumps({'ok': True, 'speedup': 1.5}))\n")
    fake_probe(monkeypatch, code)
    assert devices.cpu_bf16() is True


def test_a_killed_probe_is_not_remembered(probe_env, monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx512_bf16"})
    started = fake_probe(monkeypatch, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert devices.cpu_bf16() is False and not probe_env.exists()
    devices.cpu_bf16.cache_clear()
    assert devices.cpu_bf16() is False and len(started) == 2  # asked again


def test_unreadable_probe_output_means_float32_for_now(probe_env, monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx512_bf16"})
    fake_probe(monkeypatch, "print('null')")
    assert devices.cpu_bf16() is False and not probe_env.exists()
