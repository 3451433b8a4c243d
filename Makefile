# The bench, side by side with its peers (bench/): `make bench` is the quick mode (about a minute,
# what CI runs through the tests); `make bench-full` measures every peer and rewrites
# docs/benchmarks.md, its chart and the README's Speed paragraph; `make bench-report` rewrites
# them again from the last full run's results (bench/results/full.json), measuring nothing.
.PHONY: bench bench-full bench-report

bench:
	bash scripts/bench

bench-full:
	bash scripts/bench --full

bench-report:
	.venv/bin/python -m bench.report
