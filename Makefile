# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv on first use and reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, pinned here (not in pyproject) so clusters can bring their own CUDA build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: setup sysdeps test demo demo-pretrained conformance bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test,demo]'
	touch $@

setup: $(VENV)/.installed

# The on-prem cluster test runs `ray up` over a real sshd on 127.0.0.1, the README local-head test runs
# Ray in a network namespace of its own (ip brings its loopback up); as root, install their tools.
SYSTEM_TOOLS := sshd rsync nc ip
sysdeps:
	@missing=0; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || missing=1; done; \
	if [ $$missing = 1 ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing openssh-server rsync netcat-openbsd iproute2 for the cluster tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    openssh-server rsync netcat-openbsd iproute2 >/dev/null; fi

test: setup sysdeps
	$(PY) -m pytest -q $(PYTEST_ARGS)

conformance: setup
	$(PY) -m titok_core.conformance ../shared/conformance/public

# IMAGES=dir uses your own images instead of the bundled sample photos.
demo: setup
	$(PY) jobs/demo.py --output runs/demo $(if $(IMAGES),--images $(IMAGES),)

# TOKENIZER=path uses a local tokenizer_titok_l32.bin instead of downloading it.
demo-pretrained: setup
	$(PY) jobs/demo.py --pretrained --output runs/demo-pretrained $(if $(TOKENIZER),--tokenizer $(TOKENIZER),)

# Every benchmark, one after the other (each prints its own side-by-side ratios).
bench: setup
	@for b in benchmarks/*.py; do [ "$$b" = benchmarks/common.py ] && continue; \
	  echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
