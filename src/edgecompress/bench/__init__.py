"""Measurement: how fast, how big, how close to the machine's ceiling.

- `config`: the `bench` settings block;
- `timing`: the one timer (`time_callable`), the per-batch-size sweep (`latency_sweep`) and the
  named-block timer (`BlockTimer`) every pipeline uses;
- `environment`: the hardware/software fingerprint and the measured GEMM roofline;
- `profile`: per-operator tables and Chrome traces (torch.profiler, ONNX Runtime's profiler);
- `contention`: the machine's load around a measurement (`LoadMonitor`), one measurement retried while
  contended (`watched`, under a params block's `LoadPolicy`) and what metrics and REPORTs say of it:
  shared by the chain's benchmark and the zoo and detection timers;
- `chain`: the chain's `benchmark` stage: every variant loaded from its artifact and measured side by
  side, each in its own process.

Methodology (as in airbench and Torch-Pruning's `measure_latency`): warm-up iterations are run and
discarded (allocator, oneDNN primitive caches and lazy re-packing settle there), the thread count is
pinned for every variant, every timed call is recorded and summarised by its median and inter-quartile
range (robust to the scheduler noise of a shared CPU), CUDA timings use events with a synchronize, and
the environment is recorded next to the numbers.
"""
