# make demo: set everything up in .venv + install/ and run the main job (the ROS node on a generated video).
# make test: set up if needed and run the whole test suite (what CI runs).
# make test-fast: the suite without the tests marked slow.
SHELL := /bin/bash
VENV ?= .venv
STAMP := $(VENV)/.tinysam2_setup
FIXTURE ?= ../shared/fixtures/edgetam_reference
# Every target runs in the sourced workspace, as a ROS user's shell would.
WS := source $(VENV)/bin/activate && source install/setup.bash &&

.PHONY: setup build demo test test-fast fidelity clean

$(STAMP): requirements.txt requirements-launch.txt tools/setup_env.sh tools/build_workspace.sh
	VENV=$(VENV) bash tools/setup_env.sh
	touch $(STAMP)

setup: $(STAMP)

build: $(STAMP)
	VENV=$(VENV) bash tools/build_workspace.sh

demo: build
	$(WS) tinysam2 demo --out out/demo

fidelity: build
	$(WS) tinysam2 fidelity $(FIXTURE)

test: build
	$(WS) python -m pytest -q tinysam2_ros/test

test-fast: build
	$(WS) python -m pytest -q -m "not slow" tinysam2_ros/test

clean:
	rm -rf build install log
