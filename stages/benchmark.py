"""Stage `benchmark`: every variant of the chain loaded from its saved artifact and measured side by
side on the same test split in one run: accuracy, params, MACs, size, latency/throughput per batch size
(median and IQR), peak RSS, against a GEMM roofline measured in the same run; plots."""

from pathlib import Path

from edgecompress.bench.chain import chain_variants, run_benchmark
from edgecompress.io import read_json, write_json, write_text
from edgecompress.params import Params
from edgecompress.report.chain_plots import write_plots
from edgecompress.stage import log, read_params, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, {"data": "prepared data directory", "models": "models directory",
                                "quantize_metrics": "metrics of the quantize stage (variant list)",
                                "metrics": "benchmark metrics JSON to write", "plots": "directory for the plots",
                                "profile_dir": "directory for profiler tables and traces"})
    config = read_params(args.params, Params).bench
    specs, skipped = chain_variants(models_dir=args.models, quantized_dir=Path(args.models) / "quantized",
                                    quantize_metrics=read_json(args.quantize_metrics), compile=config.compile,
                                    device=config.device)
    profile_dir = Path(args.profile_dir)
    profile_dir.mkdir(parents=True, exist_ok=True)
    if not config.profile:
        write_text(profile_dir / "README.txt", "Profiling is off: set bench.profile: true in params.yaml.\n")
    results = run_benchmark(specs, skipped, prepared_dir=args.data, config=config, profile_dir=profile_dir)
    write_plots(results, args.plots)
    write_json(args.metrics, results)
    log.info("benchmarked %d variants (%d skipped)", len(results["variants"]),
             sum("skipped" in v for v in results["variants"].values()))


if __name__ == "__main__":
    run_stage(main)
