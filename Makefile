# The two set-up commands of the README: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
LAUNCH ?= direct
DEMO_DIR ?= demo

.PHONY: demo test bench config-reference clean

$(BIN)/.installed: setup.py constraints-cpu.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python -m resdepth.demo --out $(DEMO_DIR) --launch $(LAUNCH)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests

bench: $(BIN)/.installed
	for b in bench/*_bench.py; do $(BIN)/python $$b || exit 1; done

config-reference: $(BIN)/.installed
	$(BIN)/python -m resdepth.reference --write docs/configuration.md

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
