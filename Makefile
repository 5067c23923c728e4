# dphubert: `make install` builds .venv/, `make demo` runs the demo recipe end to end, `make test` runs the suite.
SHELL := /bin/bash
PYTHON := .venv/bin/python

.PHONY: install test test-fast demo demo-smoke recipe-smoke bench clean

install:
	@bash tools/install.sh

test: install
	$(PYTHON) -m pytest -q test

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
