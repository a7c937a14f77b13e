# The one place that lists the project's distributions. `make run` and `make test` are all
# a new user needs (Python 3.11+); everything else is installed into .venv from PyPI.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DISTRIBUTIONS := shared services/broker
DISTRIBUTIONS += services/router
DISTRIBUTIONS += services/channel-gsm
DISTRIBUTIONS += services/archiver
DISTRIBUTIONS += services/triggers
DISTRIBUTIONS += services/channel-smpp
DISTRIBUTIONS += services/api
DISTRIBUTIONS += services/webhooks
DISTRIBUTIONS += services/campaigns
INSTALLED := $(VENV)/.installed

.PHONY: install browser run test soak bench lint clean

install: $(INSTALLED)

$(INSTALLED): Makefile requirements-dev.txt $(addsuffix /pyproject.toml,$(DISTRIBUTIONS))
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "smsbus needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(addprefix -e ,$(DISTRIBUTIONS)) -r requirements-dev.txt
	touch $@

# the browser tests drive Debian's chromium: installed with apt-get when missing (as root)
browser:
	@sh tests/web/ensure_chromium.sh

run: install
	$(BIN)/smsbus up

test: install browser
	$(BIN)/python -m pytest

# the long soak and chaos runs that `make test` keeps short
soak: install
	SMSBUS_SOAK=1 $(BIN)/python -m pytest -m soak

# every benchmark at the sizes its issue names (most of an hour); each prints its table
bench: install
	$(BIN)/python bench/wake_latency.py
	$(BIN)/python bench/router.py
	$(BIN)/python bench/triggers.py
	$(BIN)/python bench/archiver.py
	$(BIN)/python bench/smpp.py
	$(BIN)/python bench/gsm.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/webhooks.py
	$(BIN)/python bench/web.py
	$(BIN)/python bench/lifecycle.py
	$(BIN)/python bench/campaigns.py

lint: install
	$(BIN)/ruff check shared services tests bench
	$(BIN)/mypy --strict shared/smsbus services/broker/smsbus_broker services/triggers/smsbus_triggers \
		services/channel-gsm/smsbus_channel_gsm services/router/smsbus_router \
		services/channel-smpp/smsbus_channel_smpp services/archiver/smsbus_archiver \
		services/api/smsbus_api \
		services/webhooks/smsbus_webhooks services/campaigns/smsbus_campaigns

clean:
	rm -rf $(VENV) var .pytest_cache
