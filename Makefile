# The front door. Every target sets itself up: a .venv with the pinned set from
# requirements.lock, checked against a JDK 17. Nothing else is needed beforehand.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOME_DIR ?= ./var

CHROMIUM := /usr/bin/chromium

.PHONY: help venv demo test test-fast bench clean check-jdk proto browser

help:
	@echo "make demo   - synthetic data -> batch -> ranker -> serving + stream, prints Recommend answers"
	@echo "make test   - the full test suite (real Spark, real Redis)"
	@echo "make bench  - batch, serving (open-loop gRPC), web page render and stream benchmarks (JSON in bench/results)"
	@echo "make clean  - remove ./var (the default home); the venv stays"

check-jdk:
	@scripts/check_jdk.sh

$(STAMP): requirements.lock pyproject.toml scripts/check_jdk.sh
	@scripts/check_jdk.sh
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -r requirements.lock
	# tensorflow-serving-api pins the full `tensorflow` wheel; tensorflow-cpu provides it.
	$(PY) -m pip install -q --no-deps tensorflow-serving-api==2.20.0
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/recsys --home $(HOME_DIR) demo

# The browser tests drive Debian's Chromium (never a downloaded browser build); installed when missing.
browser:
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }

test: $(STAMP) browser
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not spark and not flink"

bench: $(STAMP)
	$(PY) -m bench.batch_bench
	$(PY) -m bench.serving_bench
	$(PY) -m bench.web_bench --home bench/.home
	$(PY) -m bench.stream_bench

# Regenerate the gRPC code of recsys.v1 from serving/protos (a test checks it is up to date).
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. serving/protos/recsys/v1/recommender.proto

clean:
	rm -rf $(HOME_DIR)
