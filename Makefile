# Quickstart: `make demo` (set up + main job) and `make test` (set up + tests).
# Needs only python3 (>= 3.11), pip and, for the dataset, apt.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.prunus-installed
RUN    ?= runs/demo

.PHONY: demo test setup data clean

setup: $(STAMP)

# torch first and pinned: an unpinned torch pulls gigabytes of CUDA wheels.
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

data:
	@sh scripts/ensure-data.sh

demo: setup data
	rm -rf $(RUN)
	$(VENV)/bin/prunus train --model lenet5 --dataset fashion-mnist --epochs 15 --out $(RUN)

test: setup data
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
