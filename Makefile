# The two commands: `make run` (app + worker + demo project on embedded defaults) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
REQS := requirements.txt requirements-dev.txt constraints.txt
STAMP := $(VENV)/.installed-$(shell cat $(REQS) | sha1sum | cut -c1-12)

.PHONY: run test install lint typecheck migrations-check bench-import

$(STAMP): $(REQS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

run: $(STAMP)
	@./scripts/run.sh

test: $(STAMP)
	@./scripts/test.sh

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy accounts annotation curation models_srv config

migrations-check: $(STAMP)
	DEBUG=1 $(BIN)/python manage.py makemigrations --check --dry-run

bench-import: $(STAMP)
	$(BIN)/python bench/import/run.py
