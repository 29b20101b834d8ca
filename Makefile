# Two entry points for a fresh clone: `make demo` and `make test`. Both create .venv and install
# everything pinned by constraints.txt (CPU torch) on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test clean

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

clean:
	rm -rf graphpipe-demo graphpipe-store .pytest_cache
