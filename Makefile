# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv with the project and its dev tools, so a fresh clone needs only python3 >= 3.11.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test lint install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/ecomhub demo --seconds 30

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The heavy tests (many subprocesses, timing-sensitive) run first, alone; the rest on xdist workers.
test: lint
	$(BIN)/pytest -q -m heavy
	$(BIN)/pytest -q -m "not heavy" -n auto --maxprocesses 4

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
