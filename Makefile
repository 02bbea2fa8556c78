# Two commands from a fresh clone: `make run` and `make test`. Both create .venv and install first.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test book test-all lint format mutation bench bench-sweep bench-csv startup reproduce clean

# Re-installs only when pyproject.toml changes; otherwise this is a no-op.
# pip's own chatter goes to .venv/pip.log and is shown only when the install fails.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing d2lrun and its dependencies into $(VENV) (the first time takes a few minutes) ..."
	@$(BIN)/python -m pip install -q -e '.[dev]' > $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	touch $(STAMP)

install: $(STAMP)

run: install
	@$(BIN)/d2lrun $(ARGS)

# Two test processes (pytest-xdist), each taking whole test files (one for each of the 2 cores
# here). TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2
test: install lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

# ruff's lint rules and formatting, and import-linter's layers of d2lrun/ (all in pyproject.toml);
# `make format` fixes what ruff can.
lint: install
	$(BIN)/ruff check --quiet .
	$(BIN)/ruff format --check --quiet .
	$(BIN)/lint-imports --no-cache

format: install
	$(BIN)/ruff check --fix --quiet .
	$(BIN)/ruff format --quiet .

# The book's numbers: every preset's whole protocol on the real data, judged against the book (the
# tests marked slow; about 5 minutes on 2 cores). CI runs it after make test (.ci/run).
book: install
	$(BIN)/python -m pytest -q -m slow $(ARGS)

test-all: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m '' $(ARGS)

# Mutation score of the modules [tool.mutmut] in pyproject.toml names, from scratch: mutants/ is
# rebuilt, and the counts per module go to experiments/mutation.json (README "Development"). Survivors:
# .venv/bin/mutmut results, then .venv/bin/mutmut show NAME. MUTMUT_CHILDREN test processes at a
# time, one torch thread each.
MUTMUT_CHILDREN ?= 2
mutation: install
	@test -x $(BIN)/mutmut || $(BIN)/python -m pip install -q -e '.[dev,mutation]' > $(VENV)/pip.log 2>&1 \
		|| { cat $(VENV)/pip.log; exit 1; }
	rm -rf mutants
	D2LRUN_TEST_DATA=$${D2LRUN_TEST_DATA:-$(abspath ..)/shared/data} OMP_NUM_THREADS=1 \
		$(BIN)/mutmut run --max-children $(MUTMUT_CHILDREN)
	$(BIN)/mutmut results --all true | $(BIN)/python -c "$$MUTATION_SCORES" > experiments/mutation.json.tmp
	mv experiments/mutation.json.tmp experiments/mutation.json && cat experiments/mutation.json

# Counts per module from `mutmut results --all true` ("  d2lrun.trainer.x_fit__mutmut_3: killed").
define MUTATION_SCORES
import collections, json, os, platform, re, subprocess, sys
counts, survivors = collections.defaultdict(collections.Counter), []
for line in sys.stdin:
    m = re.match(r"\s*((d2lrun\.[\w.]+?)\.x\S*__mutmut_\d+): (.+)", line)
    if m:
        counts[m[2]][m[3].strip()] += 1
        survivors += [m[1]] if m[3].strip() != "killed" else []
modules = {m: {"mutants": sum(c.values()), **c} for m, c in sorted(counts.items())}
killed = sum(c["killed"] for c in counts.values())
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
print(json.dumps({"commit": commit.stdout.strip(),
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "killed": killed,
                  "mutants": sum(c["mutants"] for c in modules.values()), "modules": modules,
                  "not_killed": survivors}, indent=1))
endef
export MUTATION_SCORES

# Every preset in experiments/ on CPU, then the results table in experiments/README.md is rewritten.
# Data elsewhere: make reproduce ARGS="--data ../shared/data/fashion-mnist --kaggle ../shared/data/kaggle-house"
reproduce: install
	$(BIN)/python experiments/reproduce.py $(ARGS)

# LeNet epochs: the book's loop vs a minimal loop vs d2lrun, in one run (README "Speed").
# On a GPU: make bench ARGS="--device cuda --epochs 5"
bench: install
	$(BIN)/python experiments/benchmark.py $(ARGS)

# Sweeps end to end: Hydra's basic launcher vs hydra/launcher=batched, in one run (README "Sweeps").
# On a GPU: make bench-sweep ARGS="--device cuda"
bench-sweep: install
	$(BIN)/python experiments/bench_sweep.py $(ARGS)

# A 100,000-row CSV: d2lrun dataset=csv against a hand-written pandas + torch script (time, memory).
bench-csv: install
	$(BIN)/python experiments/csv_scale.py --out experiments/csv-scale-cpu.json $(ARGS)

# Start-up of `d2lrun --help` and of the default run against a bare Hydra app, side by side.
startup: install
	$(BIN)/python experiments/startup.py --out experiments/startup-cpu.json $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
