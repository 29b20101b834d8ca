# Two entry points for a fresh clone: `make demo` and `make test`. Both create .venv and install
# everything pinned by constraints.txt (CPU torch) on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test bench-smoke clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

demo: install
	$(VENV)/bin/graphpipe demo

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# Each benchmark at tiny sizes, in a throw-away work directory: checks that they run, nothing more
# (their ratios mean nothing at these sizes). The real runs: benchmarks/README.md.
BENCHMARKS := ingest partition train_epoch memory amazon2m accuracy cli_startup structural sparse_features defaults faults generator ddp s3 nightly
# The fault suite's smoke runs one scenario (a disk-full store) to check that the harness works: the
# same faults, every one of them, are tests (tests/test_faults.py, tests/test_services.py,
# tests/test_deployment.py), so repeating them here would only double CI's time.
SMOKE_ARGS_faults := --only disk
bench-smoke: install
	@work=$$(mktemp -d); trap 'rm -rf "$$work"' EXIT; \
	for b in $(BENCHMARKS); do \
		args=$$($(MAKE) -s --no-print-directory smoke-args-$$b); start=$$(date +%s); \
		echo "== benchmarks/bench_$$b.py --smoke $$args"; \
		$(PY) benchmarks/bench_$$b.py --smoke --workdir "$$work" $$args \
			> "$$work/$$b.log" 2>&1 || { tail -40 "$$work/$$b.log"; exit 1; }; \
		echo "$$(tail -1 "$$work/$$b.log") [$$(( $$(date +%s) - start )) s]"; \
	done

smoke-args-%:
	@echo $(SMOKE_ARGS_$*)

clean:
	rm -rf graphpipe-demo graphpipe-store .pytest_cache
