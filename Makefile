# One-line targets; the work is in scripts/ and the test suite. Everything a target needs is
# installed by `install` (Debian packages, the venv, HAProxy 3.x unpacked under .cache/).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMPS := .cache/stamps
HAPROXY_NEXT := .cache/haproxy
CONFIG ?= config.example.yml

.PHONY: install install-run run demo test test-fast coverage-spop lint fmt crs fuzz bench docs clean

# what running the agent needs
install-run: $(STAMPS)/system $(STAMPS)/venv $(STAMPS)/native

# plus what the test suite needs: HAProxy 3.0, 3.2 and 3.4 unpacked under .cache/
install: install-run $(HAPROXY_NEXT)/trixie/haproxy $(HAPROXY_NEXT)/sid/haproxy $(HAPROXY_NEXT)/experimental/haproxy

$(STAMPS)/system: scripts/install-system-deps.sh
	scripts/install-system-deps.sh && mkdir -p $(STAMPS) && touch $@

$(STAMPS)/venv: pyproject.toml $(STAMPS)/system
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# the compiled engine binding (coraza_spoa_py/native/): rebuilt when its sources change
$(STAMPS)/native: coraza_spoa_py/native/msc_glue.c coraza_spoa_py/native/msc_glue.h coraza_spoa_py/native/msc_glue_rm.cc coraza_spoa_py/native/spop_fast.c coraza_spoa_py/native/build.py $(STAMPS)/venv
	$(PY) -m coraza_spoa_py.native.build
	touch $@

$(HAPROXY_NEXT)/%/haproxy: scripts/fetch-haproxy-next.sh $(STAMPS)/system
	scripts/fetch-haproxy-next.sh $* $(HAPROXY_NEXT)/$*

run: install-run
	$(VENV)/bin/coraza-spoa-py -config $(CONFIG)

demo: install
	scripts/demo.sh

test: install coverage-spop
	$(PY) -m pytest

coverage-spop: install
	$(PY) -m pytest tests/unit/spop -q -p no:cacheprovider --cov=coraza_spoa_py.spop --cov-branch --cov-report=term-missing --cov-fail-under=100

test-fast: install
	$(PY) -m pytest -m "not e2e and not crs"

# mypy checks the packages listed in pyproject.toml [tool.mypy]: coraza_spoa_py, tests, bench
# (bench imports matplotlib: the bench extra is installed first, as `make bench` does)
lint: install
	$(PY) -m pip install -q -e '.[test,bench]'
	$(VENV)/bin/ruff format --check coraza_spoa_py tests bench
	$(VENV)/bin/ruff check coraza_spoa_py tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: install
	$(VENV)/bin/ruff format coraza_spoa_py tests bench
	$(VENV)/bin/ruff check --fix coraza_spoa_py tests bench

crs: install
	$(PY) -m tests.crs.run

# a million mutated SPOP inputs against the agent process: no crash, no hang, RSS bounded
# (tests/fuzz/run.py; a few minutes, so not part of `test`)
fuzz: install
	$(PY) -m tests.fuzz.run --inputs 1000000

bench: install
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m bench

docs: install
	$(PY) -m coraza_spoa_py.schema_doc > docs/configuration.md

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache coraza_spoa_py/_msc.*.so coraza_spoa_py/_spop_fast.*.so
