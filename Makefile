# fedge: two commands on a fresh machine.
#   make demo   set everything up, run the main end-to-end job on embedded defaults
#   make test   set everything up, lint, type-check and run the whole test suite (real services)
#   make bench  run every benchmark under bench/ (--quick with BENCH_ARGS=--quick)

PYTHON ?= python3
comma  := ,
VENV   := .venv
PY     := $(VENV)/bin/python
EXTRAS ?= controller,agent,grid,dev
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)-$(subst $(comma),_,$(EXTRAS))
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: setup system demo test lint typecheck bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstall only when pyproject.toml (or the extras) change.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

system:
	bash scripts/setup-system.sh

setup: system $(STAMP)

demo: setup
	$(PY) scripts/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check controller edge_agent fedge_protocol fedge_common simulator tests bench scripts contracts
	$(VENV)/bin/ruff format --check controller edge_agent fedge_protocol fedge_common simulator

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: setup lint typecheck
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	@for b in bench/*.py; do case $$b in */_*) continue;; esac; echo "== $$b"; $(PY) $$b $(BENCH_ARGS) || exit 1; done

clean:
	rm -rf $(VENV) node_modules .fedge .mypy_cache .ruff_cache .pytest_cache
