"""The SST-2 benchmark: the real pipeline on real data, and the models it competes with.

`distillery bench --data DIR` (or `make bench`) runs `bench.run`; see the README
section "Benchmark on SST-2" for what is measured and how.
"""
