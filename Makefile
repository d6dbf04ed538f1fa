# Two commands: `make demo` (set up, then run the whole chain on the bundled samples) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The demo needs the package and the MLflow UI extra; the tests add the dev tools on top. pip installs with
# --no-compile and compileall then writes the bytecode of the whole venv on every core at once (pip compiles file by
# file). Writing it at install matters: with PYTHONDONTWRITEBYTECODE=1 (set on many machines and images) Python never
# caches what it compiles, and every process would compile torch & co. again (imports 27 s instead of 9 s here).
# compileall's exit status is ignored: some packages ship template files that are not Python.
PIP := $(BIN)/python -m pip install -q --no-compile
COMPILE := $(BIN)/python -m compileall -q -j 0 $(VENV)/lib src >/dev/null || true
STAMP := $(VENV)/.installed-stamp
DEV_STAMP := $(VENV)/.dev-stamp

.PHONY: demo test bench browser nginx postgres clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[ui]'
	$(COMPILE)
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PIP) -e '.[dev]'
	$(COMPILE)
	touch $(DEV_STAMP)

demo: $(STAMP)
	$(BIN)/chestxray demo

# The report test drives a real headless browser: Debian's chromium + chromedriver, installed when missing.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { (apt-get update -qq || sudo apt-get update -qq) && \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null || \
	     sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null); }

# The tune tests start a real PostgreSQL server (Debian's package; run as the postgres user), installed when missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { (apt-get update -qq || sudo apt-get update -qq) && \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || \
	     sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null); }

# The remote-data test serves a prepared folder with a real nginx (Debian's package), installed when missing.
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || \
	  { (apt-get update -qq || sudo apt-get update -qq) && \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null || \
	     sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null); }

test: $(DEV_STAMP) browser nginx postgres
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs mlruns demo-output
