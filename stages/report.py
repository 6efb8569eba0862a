"""Stage `report`: REPORT.md generated from the metrics files only (no number typed by hand): results
table, KD gain, pruning, quantization, speedups, goals met or not, params, environment, plots."""

import yaml

from edgecompress.data import load_meta
from edgecompress.params import Params
from edgecompress.report.chain import build_report
from edgecompress.stage import log, read_params, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, {"data": "prepared data directory", "metrics_dir": "metrics directory",
                                "plots": "directory with the benchmark plots", "out": "report file to write"})
    read_params(args.params, Params)  # validated like every stage; the report shows the values recorded in metrics
    with open(args.params) as handle:
        params = yaml.safe_load(handle)
    build_report(args.metrics_dir, args.plots, args.out, params={**params, "dataset": load_meta(args.data)})
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    run_stage(main)
