# tradebus — the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test lint unit integration bench proto calendar clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## make run: the whole stack on this machine, no Docker (Ctrl-C stops it).
run: $(STAMP)
	$(VENV)/bin/tradebus up

## make test: lint, type-check, then every test (unit + integration).
test: lint
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs services tests $(wildcard bench)

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

## make bench: performance figures, each script ends with one JSON line.
bench: $(STAMP)
	$(PY) bench/recorder.py
	$(PY) bench/order_path.py
	$(PY) bench/risk_decide.py
	$(PY) bench/risk_rebuild.py
	$(PY) bench/gateway_tracker.py
	$(PY) bench/startup_rebuild.py
	$(PY) bench/wake_cost.py
	$(PY) bench/marketdata.py
	$(PY) bench/paper_journal.py
	$(PY) bench/positions_query.py

## make proto: regenerate proto/ (JSON Schemas + subject map) from the models.
proto: $(STAMP)
	$(PY) -m libs.contract.proto

## make calendar: regenerate libs/contract/xnys_table.py (the NYSE's holidays
## and early closes) from the installed exchange-calendars.
calendar: $(STAMP)
	$(PY) -m libs.contract.sessions --write-table

clean:
	rm -rf $(VENV) .tradebus .pytest_cache .mypy_cache .ruff_cache
