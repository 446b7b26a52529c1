# Quickstart: `make demo` (set up + main job) and `make test` (set up + tests).
# Needs only python3 (>= 3.11), pip and, for the dataset, apt.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.prunus-installed
DENSE  ?= runs/dense-lenet5
RUN    ?= runs/demo-slr20x
REPORT ?= runs/report.html

.PHONY: demo test setup data chromium clean

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

# Train (or reuse) a dense LeNet-5 on Fashion-MNIST, then SLR-prune it 20x and print
# the accuracy right after hard-pruning, after one retraining epoch, and the table;
# then quantize the pruned model to 4 bits and export it, printing its true size; last, the report
# of the three runs (accuracy, size, MACs, latency, sparsity, curves) as one HTML page, and where it is.
demo: setup data
	@if [ ! -f $(DENSE)/checkpoints/epoch-0015/meta.json ]; then \
		rm -rf $(DENSE) && $(VENV)/bin/prunus train --model lenet5 --dataset fashion-mnist --epochs 15 --out $(DENSE); \
	else echo "reusing the dense model in $(DENSE)"; fi
	rm -rf $(RUN) $(RUN)-4bit
	$(VENV)/bin/prunus prune --method slr --init $(DENSE) --compression 20 --global \
		--epochs 6 --update-every 100 --retrain-epochs 1 --out $(RUN)
	$(VENV)/bin/prunus quantize --init $(RUN)/retrain --bits 4 --method slr --epochs 2 \
		--finetune-epochs 1 --out $(RUN)-4bit
	$(VENV)/bin/prunus report $(DENSE) $(RUN) $(RUN)-4bit --out $(REPORT)

# a headless browser for tests/test_report.py (Debian's chromium; the test is skipped without one)
chromium:
	@sh scripts/ensure-chromium.sh

test: setup data chromium
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
