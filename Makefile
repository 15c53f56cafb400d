# recon-cli: `make demo` runs the flagship pipeline on sample_data/, `make test` runs the tests.
# Both create .venv and install everything on a fresh machine.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
RECON  := $(VENV)/bin/recon
STAMP  := $(VENV)/.installed
# PyTorch: the CPU build (torch==2.13.0) where there is no GPU; never a bare `torch`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test venv sysdeps bench sample-data clean help

help:
	@echo "make demo   - install into .venv and run the flagship pipeline on sample_data/"
	@echo "make test   - install into .venv and run the test suite"
	@echo "make bench  - run the benchmarks (results in benchmarks/results/)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet '$(TORCH_SPEC)'
	$(PIP) install --quiet -e '.[test,train]'
	touch $(STAMP)

# Debian tools the DICOM tests use: dciodvfy (dicom3tools) and a local Orthanc PACS.
# Installed when missing and we are root; otherwise those tests skip outside CI.
sysdeps:
	@if command -v dciodvfy >/dev/null && test -x /usr/sbin/Orthanc; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing dicom3tools and orthanc (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dicom3tools orthanc >/dev/null; \
	else echo "warning: dicom3tools/orthanc missing and not root: DICOM validator and PACS tests will skip"; fi

venv: $(STAMP)

demo: $(STAMP)
	$(RECON) run pipelines/fbp.yaml --overwrite
	$(RECON) run pipelines/svtv.yaml --overwrite
	$(RECON) run pipelines/dicom.yaml --overwrite
	@echo "Outputs are in out/ (HDF5 with /reconstruction, /metrics, /provenance; PNG previews; DICOM series in out/*_dicom/)."

test: $(STAMP) sysdeps
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PIP) install --quiet -e '.[test,train,bench]'
	$(PY) benchmarks/projectors.py
	$(PY) benchmarks/solvers.py

sample-data: $(STAMP)
	$(PY) sample_data/make_sample_data.py

clean:
	rm -rf $(VENV) out build *.egg-info
