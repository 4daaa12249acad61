# moebench: `make bench` runs the main job, `make test` the tests; both install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MPIEXEC := $(VENV)/bin/mpiexec
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1

.PHONY: install test lint bench bench-collectives bench-kernels bench-moe report gpu-check clean

install: $(STAMP)

# torch==2.13.0 first: on a CPU machine pip takes the local CPU wheel and never a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[mpi,dev]'
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install lint
	$(VENV)/bin/pytest -q

bench-collectives: install
	$(MPIEXEC) -n 2 $(PY) -m bench collectives -b 1K -e 16M -f 4 -n 20 -w 5 --save --tag p2
	$(MPIEXEC) -n 4 $(PY) -m bench collectives -b 16K -e 16M -f 4 -n 10 -w 3 --ranks-per-node 2 --tp 2 --save --tag p4-g2-tp2

bench: bench-collectives

report: install
	$(PY) -m bench report

gpu-check: install
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
