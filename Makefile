# make demo: set everything up in .venv and run the main job (the ROS node on a generated video).
# make test: set up if needed and run the test suite (everything, as CI).
# make test-fast: the same without the tests marked slow (pytest -m "not slow").
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tinysam2_setup
FIXTURE ?= ../shared/fixtures/edgetam_reference

.PHONY: setup demo test test-fast fidelity clean

$(STAMP): requirements.txt tools/setup_env.sh CMakeLists.txt package.xml $(wildcard msg/*.msg srv/*.srv)
	VENV=$(VENV) bash tools/setup_env.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tinysam2 demo --out out/demo

fidelity: $(STAMP)
	$(VENV)/bin/tinysam2 fidelity $(FIXTURE)

test: $(STAMP)
	$(PY) -m pytest -q test

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" test

clean:
	rm -rf build install log
