# Each target brings its own virtual environment up to date, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test test-debian lint unit fuzz bench deb clean

$(BIN)/python:
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
	  echo "python3 cannot create virtual environments here; run: sudo apt-get install python3-venv" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@ $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(BIN)/ipwatch demo

lint: $(VENV)/.test
	$(BIN)/ruff check ipwatch tests
	$(BIN)/ruff format --check ipwatch tests
	$(BIN)/mypy

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

# The whole suite with Debian 12's own python3 and libraries, no venv: the lowest versions
# pyproject.toml allows (apt-get install python3-dnspython python3-watchdog python3-apscheduler
# python3-miniupnpc python3-pytest python3-hypothesis).
test-debian:
	/usr/bin/python3 -m pytest $(PYTEST_ARGS)

unit: $(VENV)/.test
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# The fuzz targets run briefly in `make test`; here long (FUZZ_EXAMPLES per target, default 20000).
fuzz: $(VENV)/.test
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest tests/fuzz $(PYTEST_ARGS)

bench: $(VENV)/.test
	$(BIN)/python -m tests.bench

# dist/ipwatch_VERSION_all.deb, built by dpkg-buildpackage in build/deb from a copy of the tree
# (tracked and new files, not .venv or caches). Needs debhelper, dh-python,
# pybuild-plugin-pyproject, python3-all, python3-setuptools and the python3-* of test-debian;
# PATH holds only Debian's own tools, not another python3 (pyenv) found first.
deb:
	@git rev-parse --is-inside-work-tree >/dev/null  # the copy below is made with git ls-files
	rm -rf build/deb && mkdir -p build/deb/ipwatch dist
	git ls-files -z --cached --others --exclude-standard | \
	  tar --null --files-from=- --ignore-failed-read -cf - | tar -xf - -C build/deb/ipwatch
	cd build/deb/ipwatch && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc
	mv build/deb/ipwatch_*_all.deb dist/

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist
