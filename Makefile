# Set-up and entry points; see README.md.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
APT_PACKAGES = docker-registry skopeo openssl $(KUBECTL_PACKAGE)
# kubectl renders manifests/ in the tests: Debian's, unless one is installed already (another
# kubectl package would conflict with it).
KUBECTL_PACKAGE = $(if $(shell command -v kubectl),,kubernetes-client)

# Building and running the container image (tests/test_container.py): no base image can be
# pulled, so the test makes a Debian one with debootstrap.
CONTAINER_APT_PACKAGES = podman runc debootstrap

.PHONY: deps system-deps test container-test lint demo bench clean

# $(call apt-install,PACKAGES): installs those of PACKAGES that are missing.
define apt-install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

system-deps:
	$(call apt-install,$(APT_PACKAGES))

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

deps: system-deps $(VENV)/.installed

lint: deps
	$(VENV)/bin/ruff check webhook certs tests bench demo
	$(VENV)/bin/ruff format --check webhook certs tests bench demo
	$(VENV)/bin/mypy

test: deps lint
	$(VENV)/bin/pytest -q

# Builds the image from the Dockerfile and runs it as the Deployment does (a few minutes).
container-test: deps
	$(call apt-install,$(CONTAINER_APT_PACKAGES))
	$(VENV)/bin/pytest -q -m container tests/test_container.py

demo: deps
	$(PY) demo/run.py

bench: deps
	$(call apt-install,wrk)
	@# Each runs whatever the others say; the target fails if any misses a bar.
	$(PY) -m bench.copy --reps 5; copy=$$?; $(PY) -m bench.admission; admission=$$?; \
	$(PY) -m bench.backfill; backfill=$$?; $(PY) -m bench.restore --reps 5; restore=$$?; \
	test $$copy -eq 0 -a $$admission -eq 0 -a $$backfill -eq 0 -a $$restore -eq 0

clean:
	rm -rf $(VENV) .demo .bench
