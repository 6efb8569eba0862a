"""Reports computed from metrics files only: nothing in them is typed by hand.

- `chain_metrics`: the chain's metrics read back, variants ordered, speedups and performance goals;
- `chain_plots`: the benchmark's plots (Pareto front, bars, batch-size and static-INT8 analyses);
- `chain`: the chain's REPORT.md, one function per section;
- `sweep`: a table and plot of the experiments of a `dvc exp` sweep.
"""
