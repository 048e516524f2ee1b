# fedge: two commands on a fresh machine.
#   make demo   set everything up, run the main end-to-end job on embedded defaults
#   make test   set everything up, lint, type-check and run the whole test suite (real services)
#   make bench  run every benchmark under bench/ (--quick with BENCH_ARGS=--quick)

PYTHON ?= python3
comma  := ,
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Every install comes from the committed lock (requirements/lock.txt), installed with --no-deps: pip does
# no resolving, so every machine gets the same versions. EXTRAS are the extras the lock is compiled for.
EXTRAS ?= controller,agent,train,grid,monitor,flare,dev
LOCK      := requirements/lock.txt
OVERRIDES := requirements/overrides.txt
LOCK_ARGS ?=
UV_VERSION := 0.13.9
# The lock pins torch==2.13.0+cpu: a local version that only the CPU wheel carries (the index's torch is
# the CUDA build, with nvidia-* and triton). These machines keep that wheel in /opt/wheels (pip's
# find-links); elsewhere pip takes it from the PyTorch CPU page. Override with TORCH_FIND_LINKS=...
TORCH_FIND_LINKS ?= $(if $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl),/opt/wheels,https://download.pytorch.org/whl/cpu/torch/)
STAMP  := $(VENV)/.installed-$(shell cat $(LOCK) pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?=
BENCH_ARGS ?=

# Every process we start keeps to this machine: no telemetry, update checks or usage stats (flwr, Ray,
# Evidently), and Ray on 127.0.0.1 only.
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export RAY_USAGE_STATS_ENABLED := 0
export DO_NOT_TRACK := 1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: setup system demo test test-heavy lint typecheck bench clean lock stack stack-down test-stack \
	wheelhouse wheelhouse-controller images agent-size test-images

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstall only when the lock or pyproject.toml change. No `pip check`: the lock overrides typer
# (flwr caps typer<0.21, amqtt needs >=0.24), which pip check reports and which is intended.
$(STAMP): $(LOCK) pyproject.toml | $(PY)
	$(PY) -m pip install -q --no-deps --find-links $(TORCH_FIND_LINKS) -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# Recompile the lock after changing pyproject.toml or requirements/overrides.txt. Pins already in the lock
# are kept where they still fit; `make lock LOCK_ARGS=--upgrade` moves every pin to the newest that fits.
lock: | $(PY)
	$(PY) -m uv --version >/dev/null 2>&1 || $(PY) -m pip install -q --no-deps uv==$(UV_VERSION)
	$(PY) -m uv pip compile pyproject.toml $(LOCK_ARGS) --quiet --python-version 3.11 \
	    --python-platform x86_64-unknown-linux-gnu $(addprefix --extra ,$(subst $(comma), ,$(EXTRAS))) \
	    --override $(OVERRIDES) --find-links $(TORCH_FIND_LINKS) --custom-compile-command 'make lock' -o $(LOCK)
	{ printf '%s\n' '# fedge lock: every package of the extras $(EXTRAS), for Python 3.11 on x86_64 Linux.' \
	    '# Installed by `make setup` with `pip install --no-deps -r requirements/lock.txt` (no resolver).' \
	    '# Regenerate with `make lock` (overrides in requirements/overrides.txt); do not edit by hand.'; \
	  grep -v '^# fedge lock:\|^# Installed by `make setup`\|^# Regenerate with `make lock`' $(LOCK); } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	! grep -i -E '^(nvidia|triton==|cuda)' $(LOCK)
	grep -q '^torch==2.13.0+cpu$$' $(LOCK)

system:
	bash scripts/setup-system.sh

setup: system $(STAMP)

demo: setup
	$(PY) scripts/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check controller edge_agent fedge_protocol fedge_common simulator tests bench scripts contracts
	$(VENV)/bin/ruff format --check controller edge_agent fedge_protocol fedge_common simulator

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The default suite (under 20 minutes on 2 cores) leaves out the longest end-to-end runs (marker `heavy`:
# SecAgg+, FedPATE, HE and the audited Flower job through real SuperNodes, the FLARE job and its
# cancellation, certificate renewal, the drift loop's retrain, the CLI and in-process simulations, two
# controller replicas as real processes);
# `make test-heavy` runs those; .ci/run runs both, then `make images test-images test-stack`.
test: setup lint typecheck
	$(PY) -m pytest -p no:cacheprovider -m "not heavy" $(PYTEST_ARGS)

test-heavy: setup
	$(PY) -m pytest -p no:cacheprovider -m heavy $(PYTEST_ARGS)

bench: setup
	@for b in bench/*.py; do case $$b in */_*) continue;; esac; echo "== $$b"; $(PY) $$b $(BENCH_ARGS) || exit 1; done

clean:
	rm -rf $(VENV) node_modules .fedge .mypy_cache .ruff_cache .pytest_cache

# The compose stack (packaging/compose/compose.yaml) on podman through packaging/compose/stack.py:
# images built locally FROM localhost/fedge-base:bookworm, host networking on loopback ports.
stack: $(STAMP)
	@bash packaging/images/podman.sh image exists localhost/fedge-controller:dev || $(MAKE) images
	$(PY) packaging/compose/stack.py up

stack-down:
	$(PY) packaging/compose/stack.py down

test-stack: setup
	@bash packaging/images/podman.sh image exists localhost/fedge-controller:dev || $(MAKE) images
	$(PY) -m pytest -p no:cacheprovider -m stack tests/packaging/test_stack.py $(PYTEST_ARGS)

# Offline packaging (packaging/wheelhouse.sh, packaging/docker/*.Dockerfile): wheelhouses of exactly the
# lock's packages of one extra plus the fedge wheel, and images built FROM fedge's own Debian base with no
# registry (`--pull=never`); the wheelhouse is each image's whole build context.
IMAGE_BUILD := bash packaging/images/podman.sh build --pull=never --format docker
wheelhouse: $(STAMP)
	PYTHON=$(PY) TORCH_FIND_LINKS=$(TORCH_FIND_LINKS) bash packaging/wheelhouse.sh agent dist/wheelhouse

wheelhouse-controller: $(STAMP)
	PYTHON=$(PY) TORCH_FIND_LINKS=$(TORCH_FIND_LINKS) bash packaging/wheelhouse.sh controller dist/wheelhouse-controller

images: wheelhouse wheelhouse-controller
	bash packaging/images/build-base.sh
	$(IMAGE_BUILD) -f packaging/docker/controller.Dockerfile -t localhost/fedge-controller:dev dist/wheelhouse-controller
	$(IMAGE_BUILD) -f packaging/docker/agent.Dockerfile -t localhost/fedge-agent:dev dist/wheelhouse
	$(IMAGE_BUILD) -f packaging/docker/agent-cuda.Dockerfile -t localhost/fedge-agent-cuda:dev dist/wheelhouse

# packages and MB of an agent venv installed offline from dist/wheelhouse
agent-size: wheelhouse
	bash packaging/agent-size.sh dist/wheelhouse

test-images: setup
	$(PY) -m pytest -p no:cacheprovider -m stack tests/packaging/test_images.py $(PYTEST_ARGS)
