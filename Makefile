# Benchmarks and the fault suite, against the real processes on loopback (docs/benchmarks.md).
# Needs redis-server on PATH and the bench extras: .venv/bin/pip install -e '.[test,bench]'

PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
RESULTS ?= bench/results

.PHONY: bench plots faults faults-smoke instructions

# every benchmark script in sequence; each writes its JSON to $(RESULTS)/
bench:
	$(PYTHON) -m bench.streaming all
	$(PYTHON) -m bench.runpod all
	$(PYTHON) -m bench.features all
	$(PYTHON) -m bench.pipeline all
	$(MAKE) plots

# worker instructions per item under valgrind (bare job, a reply's fixed part, a short reply):
# the throughput comparison counted in instructions instead of timed (5-8 minutes)
instructions:
	$(PYTHON) -m bench.instructions all

# PNGs of the raw samples in $(RESULTS)/ (a plot whose JSON is missing is skipped)
plots:
	$(PYTHON) -m bench.plots --results $(RESULTS) --out docs/benchmarks

# the full fault suite (several minutes); exits non-zero if any target is missed
faults:
	$(PYTHON) -m bench.faults --json $(RESULTS)/faults.json

# every fault check, briefly (about a minute on 2 cores; tests/test_faults_smoke.py runs it in CI)
faults-smoke:
	$(PYTHON) -m bench.faults --smoke --json $(RESULTS)/faults-smoke.json
