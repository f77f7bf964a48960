# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv on first use and reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, pinned here (not in pyproject) so clusters can bring their own CUDA build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: setup test demo demo-pretrained conformance bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test,demo]'
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

conformance: setup
	$(PY) -m titok_core.conformance ../shared/conformance/public

# IMAGES=dir uses your own images instead of the bundled sample photos.
demo: setup
	$(PY) jobs/demo.py --output runs/demo $(if $(IMAGES),--images $(IMAGES),)

# TOKENIZER=path uses a local tokenizer_titok_l32.bin instead of downloading it.
demo-pretrained: setup
	$(PY) jobs/demo.py --pretrained --output runs/demo-pretrained $(if $(TOKENIZER),--tokenizer $(TOKENIZER),)

bench: setup
	$(PY) benchmarks/teacher_encode.py

clean:
	rm -rf $(VENV) runs
