# Two commands from a fresh clone: `make run` and `make test`. Both create .venv and install first.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-all lint format bench bench-csv startup reproduce clean

# Re-installs only when pyproject.toml changes; otherwise this is a no-op.
# pip's own chatter goes to .venv/pip.log and is shown only when the install fails.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing d2lrun and its dependencies into $(VENV) (the first time takes a few minutes) ..."
	@$(BIN)/python -m pip install -q -e '.[dev]' > $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/d2lrun $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(ARGS)

# ruff's lint rules and formatting, configured in pyproject.toml; `make format` fixes what it can.
lint: install
	$(BIN)/ruff check --quiet .
	$(BIN)/ruff format --check --quiet .

format: install
	$(BIN)/ruff check --fix --quiet .
	$(BIN)/ruff format --quiet .

test-all: install
	$(BIN)/python -m pytest -q -m '' $(ARGS)

# Every preset in experiments/ on CPU, then the results table in experiments/README.md is rewritten.
# Data elsewhere: make reproduce ARGS="--data ../shared/data/fashion-mnist --kaggle ../shared/data/kaggle-house"
reproduce: install
	$(BIN)/python -m d2lrun.reproduce $(ARGS)

# LeNet epochs: the book's loop vs a minimal loop vs d2lrun, in one run (README "Speed").
# On a GPU: make bench ARGS="--device cuda --epochs 5"
bench: install
	$(BIN)/python experiments/benchmark.py --out experiments/bench-$$($(BIN)/python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')").json $(ARGS)

# A 100,000-row CSV: d2lrun dataset=csv against a hand-written pandas + torch script (time, memory).
bench-csv: install
	$(BIN)/python experiments/csv_scale.py --out experiments/csv-scale-cpu.json $(ARGS)

# Start-up of `d2lrun --help` and of the default run against a bare Hydra app, side by side.
startup: install
	$(BIN)/python experiments/startup.py --out experiments/startup-cpu.json $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
