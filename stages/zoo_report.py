"""Stage `zoo_report`: REPORT.md of the zoo pipeline from its metrics files."""

from edgecompress.stage import log, run_stage, stage_args
from edgecompress.zoo.report import build_report


def main() -> None:
    args = stage_args(__doc__, {"zoo": "metrics/zoo.json", "quantize": "metrics/zoo_quantize.json",
                                "plots": "plots directory (linked from the report)", "out": "REPORT.md to write"})
    build_report(args.zoo, args.quantize, args.plots, args.out)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    run_stage(main)
