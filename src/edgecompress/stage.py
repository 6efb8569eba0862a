"""Plumbing every stage script of every pipeline shares: arguments, params, dvclive, and the rule that
a user error is one line on stderr with exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, ContextManager

from edgecompress import EdgecompressError, distributed
from edgecompress.config import load_settings
from edgecompress.io import atomic_dir

log = logging.getLogger("edgecompress")


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(): logging set up, user errors as one line on stderr and exit status 2."""
    logging.basicConfig(level=os.environ.get("EDGECOMPRESS_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*deprecated.*")
    try:
        main()
        distributed.destroy()
    except EdgecompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted; previous outputs are intact (files are replaced only when complete)",
              file=sys.stderr)
        sys.exit(130)


def stage_args(description: str, paths: dict[str, str]) -> argparse.Namespace:
    """Parse `--params` plus the stage's path arguments (`paths`: name -> help); all required."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for name, help_text in paths.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, help=help_text)
    return parser.parse_args()


def read_params(path: str | Path, schema: type) -> Any:
    """The params file validated against a pipeline's `schema` (the whole file, before any work), logged."""
    params = load_settings(path, schema)
    log.info("params from %s validated", path)
    return params


def read_training_params(path: str | Path, schema: type) -> Any:
    """read_params for a training stage: with `train.nproc > 1` outside torchrun, the stage re-runs
    itself under torchrun here (and this process exits with its status)."""
    params = read_params(path, schema)
    distributed.relaunch_under_torchrun(params.train)
    return params


def open_live(live_dir: str | Path, *, enabled: bool = True) -> ContextManager[Any]:
    """A dvclive logger writing per-step curves under `live_dir` (no DVC experiment, no dvc.yaml, no
    HTML report: the stage's dvc.yaml entry declares the plots), or a null context yielding None
    where this process must not write (a helper rank). It writes into a fresh folder beside `live_dir`
    that replaces it only when the block completes: dvclive empties its folder when it starts, so an
    interrupted run would otherwise lose the previous curves (issue 16)."""
    if not enabled:
        return contextlib.nullcontext(None)
    return _atomic_live(Path(live_dir))


@contextlib.contextmanager
def _atomic_live(live_dir: Path) -> Any:
    from dvclive import Live  # imports DVC's machinery: only where a stage logs

    with atomic_dir(live_dir) as tmp, Live(dir=str(tmp), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        yield live
