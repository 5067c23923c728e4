# dphubert: `make install` builds .venv/, `make demo` runs the demo recipe end to end, `make test` runs the suite.
SHELL := /bin/bash
PYTHON := .venv/bin/python

.PHONY: install test test-fast demo demo-smoke recipe-smoke bench clean

install:
	@bash tools/install.sh

test: install
	# 2 processes of one thread each (a file's tests stay in one process: module fixtures); 2 threads each
	# oversubscribe the cores and take as long as one process does
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q -n 2 --dist loadfile test

demo: install
	cd egs/demo && ./run.sh
	$(PYTHON) tools/check_demo_outputs.py egs/demo

demo-smoke: install
	bash tools/demo_smoke.sh

recipe-smoke: install
	bash tools/recipe_smoke.sh

bench: install
	$(PYTHON) bench/model_speed.py

clean:
	rm -rf .venv .pytest_cache
