# embedlake: `make demo` runs the main job on embedded defaults, `make test` runs the test suite.
VENV ?= .venv
export VENV

.PHONY: setup demo test bench clean-lake
setup:
	@bash infra/setup.sh

demo: setup
	$(VENV)/bin/embedlake embed-graph

test: setup
	$(VENV)/bin/python -m pytest -q --durations=25

clean-lake:
	rm -rf ./lake
