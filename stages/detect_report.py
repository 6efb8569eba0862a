"""Stage `detect_report`: REPORT.md of the detection pipeline from its metrics files."""

from edgecompress.detection.report import build_report
from edgecompress.stage import log, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, {"metrics": "metrics/detection.json", "data_metrics": "metrics/detection_data.json",
                                "import_metrics": "metrics/detect_import.json (may be absent)",
                                "profile_metrics": "metrics/detect_profile.json (may be absent)",
                                "compress_metrics": "metrics/detect_compress.json (may be absent)",
                                "train_metrics": "metrics/detect_train.json (may be absent)",
                                "plots": "directory of the mAP-vs-time plots", "out": "REPORT.md to write"})
    build_report(args.metrics, args.data_metrics, args.import_metrics, args.plots, args.out, args.profile_metrics,
                 args.compress_metrics, args.train_metrics)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    run_stage(main)
