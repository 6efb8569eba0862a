"""Shared fixtures: a throw-away copy of the repository with a tiny configuration."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# Small enough that each training stage takes seconds on 2 CPU cores.
TINY_PARAMS = {
    "data": {"max_samples": 400},
    "model": {"teacher": {"arch": "resnet20", "width": 0.5}, "student": {"arch": "resnet20", "width": 0.25}},
    "train": {"batch_size": 32},
    "teacher": {"epochs": 1},
    "student": {"epochs": 1},
    # eager timing of the prune steps (the exported runtimes have unit tests): no export per step
    "prune": {"finetune_epochs": 1, "latency": {"runtime": "eager", "warmup": 1, "repeats": 3, "min_time_s": 0}},
    # fbgemm/qnnpack engines and fp16 take the same paths as ptq_x86 through the stages (their kernels have
    # unit tests): leaving them out keeps the end-to-end test's repeated quantize/benchmark runs short.
    # No float-fallback search in the end-to-end runs (a 1-epoch model may exceed the budget): tests/test_quantize_gate.py.
    "quantize": {"calibration_samples": 64, "qat_epochs": 1, "max_accuracy_drop": None,
                 "variants": ["ptq_x86", "ptq_custom", "dynamic", "qat", "onnx_fp32", "onnx_int8", "openvino_fp32",
                              "openvino_int8"]},
    # In-process, no torch.compile, no unpruned references (tests/test_bench.py covers them).
    "bench": {"batch_sizes": [1, 4], "warmup": 1, "repeats": 3, "min_time_s": 0, "compile": False, "isolate": False,
              "unpruned_references": False, "max_load": None},  # a busy CI runner must not make the suite wait
}


def deep_update(base: dict, changes: dict) -> dict:
    """Recursively merge `changes` into `base` (in place) and return it."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def write_params(repo: Path, changes: dict) -> None:
    """Apply `changes` on top of the repo's params.yaml."""
    path = repo / "params.yaml"
    path.write_text(yaml.safe_dump(deep_update(yaml.safe_load(path.read_text()), changes), sort_keys=False))


def tool_env() -> dict[str, str]:
    """Environment whose PATH finds this interpreter's `python` and `dvc` first."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("EDGECOMPRESS_LOG", "WARNING")
    return env


def run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its output when it exits non-zero."""
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\n"
                    f"stderr:\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is as fast, and far faster while another job holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The repository's tracked (and untracked, not ignored) files in a fresh git repo, committed."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split("\n")
    dest = tmp_path / "repo"
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "test@example.com"],
                ["git", "config", "user.name", "test"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest
