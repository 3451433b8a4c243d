# The bench, side by side with its peers (bench/): `make bench` is the quick mode (seconds, what
# CI runs through the tests), `make bench-full` measures every peer and rewrites docs/benchmarks.md.
.PHONY: bench bench-full

bench:
	bash scripts/bench

bench-full:
	bash scripts/bench --full
