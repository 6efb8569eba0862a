"""Stage `benchmark`: every variant of the chain loaded from its saved artifact and measured side by
side on the same test split in one run: accuracy, params, MACs, size, latency/throughput per batch size
(median and IQR), peak RSS, against a GEMM roofline measured in the same run; plots. The unpruned
student is also built for and timed on the pruned model's fastest FP32 and INT8 runtimes, so the report
can say how much of pruning's MAC reduction became time on each."""

import tempfile
from pathlib import Path

from edgecompress.bench.chain import chain_variants, measure_watched, run_benchmark
from edgecompress.bench.pruning import best_runtimes, headline_batch, pruning_effect, reference_specs
from edgecompress.data import make_loader
from edgecompress.io import read_json, write_json, write_text
from edgecompress.models import load_checkpoint
from edgecompress.params import Params
from edgecompress.quantize.artifacts import build_variant
from edgecompress.quantize.common import calibration_tensors
from edgecompress.report.chain_plots import write_plots
from edgecompress.stage import log, read_params, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, {"data": "prepared data directory", "models": "models directory",
                                "quantize_metrics": "metrics of the quantize stage (variant list)",
                                "metrics": "benchmark metrics JSON to write", "plots": "directory for the plots",
                                "profile_dir": "directory for profiler tables and traces"})
    params = read_params(args.params, Params)
    config = params.bench
    specs, skipped = chain_variants(models_dir=args.models, quantized_dir=Path(args.models) / "quantized",
                                    quantize_metrics=read_json(args.quantize_metrics), compile=config.compile,
                                    device=config.device)
    profile_dir = Path(args.profile_dir)
    profile_dir.mkdir(parents=True, exist_ok=True)
    if not config.profile:
        write_text(profile_dir / "README.txt", "Profiling is off: set bench.profile: true in params.yaml.\n")
    results = run_benchmark(specs, skipped, prepared_dir=args.data, config=config, profile_dir=profile_dir)
    if config.unpruned_references:
        results["pruning"] = measure_pruning(results["variants"], params, args.data, Path(args.models) / "student.pt")
    write_plots(results, args.plots)
    write_json(args.metrics, results)
    log.info("benchmarked %d variants (%d skipped)", len(results["variants"]),
             sum("skipped" in v for v in results["variants"].values()))


def measure_pruning(variants: dict, params: Params, prepared_dir: str, student_path: Path) -> dict:
    """The unpruned student timed on the pruned model's fastest FP32 and INT8 runtimes (built with the
    quantize stage's builders, settings and calibration images; gate fallbacks aside), and the effect."""
    config, quantize = params.bench, params.quantize.config()
    best = best_runtimes(variants, headline_batch(config.batch_sizes))
    loader = make_loader(prepared_dir, "train", batch_size=quantize.calibration_batch_size, train=False,
                         seed=params.quantize.seed)
    calib = calibration_tensors(loader, quantize.calibration_samples)
    student, _ = load_checkpoint(student_path)
    with tempfile.TemporaryDirectory() as tmp:
        specs = reference_specs(best, student_path=student_path, folder=tmp, build=lambda name, folder: build_variant(
            name, student.eval(), calib=calib, config=quantize, out_dir=folder).path)
        references = {role: measure_watched(spec, prepared_dir=prepared_dir, config=config)
                      for role, spec in specs.items()}
    for role, result in references.items():
        log.info("unpruned %s (%s): %s ms/sample", role, specs[role].name, result["latency_ms"])
    return {**pruning_effect(variants, references, best, config.batch_sizes),
            "references": {role: {k: r[k] for k in ("name", "format", "accuracy", "latency_ms", "size_mb")}
                           for role, r in references.items()}}


if __name__ == "__main__":
    run_stage(main)
