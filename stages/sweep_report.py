"""Sweep report: reads `dvc exp show --json` (every experiment of the repo) and writes plots/sweep.png
and a markdown table (accuracy vs distill.alpha, distill.temperature, prune.ratio; accuracy-latency
cloud). Run after `dvc queue start -j 2` has finished: python stages/sweep_report.py"""

import argparse
import json
from pathlib import Path

from edgecompress.io import write_text
from edgecompress.markdown import relative_link
from edgecompress.report.sweep import exp_show_json, experiment_rows, plot_sweep, sweep_table
from edgecompress.stage import log, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exp-show", help="a saved `dvc exp show --json` (default: run it here)")
    parser.add_argument("--plot", default="plots/sweep.png")
    parser.add_argument("--table", default="docs/sweep.md")
    args = parser.parse_args()
    shown = json.loads(Path(args.exp_show).read_text()) if args.exp_show else exp_show_json()
    rows = experiment_rows(shown)
    plot_sweep(rows, args.plot)
    link = relative_link(args.plot, Path(args.table).parent)
    write_text(args.table, "# Sweep\n\n" + sweep_table(rows) + f"\n![sweep]({link})\n")
    log.info("%d revisions -> %s, %s", len(rows), args.plot, args.table)


if __name__ == "__main__":
    run_stage(main)
