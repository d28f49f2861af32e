# pyconmon: build and install the `conmon` launcher and the Python package.
#
#   make                      build build/conmon (libpython embedded) and build/stub/conmon
#                             (server mode's static per-container stub, launcher/stub.c)
#   make install              $(PREFIX)/bin/conmon + $(PREFIX)/lib/pyconmon/pyconmon/*.py[c]
#                             + $(PREFIX)/share/man/man8/conmon.8 + $(PREFIX)/lib/pyconmon/{classic,stub}/conmon
#   make install ENTRY=classic ... the classic monitor as the `conmon` entry instead of the stub
#                             (the stub runs server mode unless PYCONMON_MODE=classic or "classic"
#                             is in $(PYCONMON_MODE_FILE))
#   make podman               ... binary as $(PREFIX)/libexec/podman/conmon instead (no man page)
#   make crio                 ... binary as $(PREFIX)/libexec/crio/conmon instead (no man page)
#   make deb                  build/pyconmon_<version>_<arch>.deb (reproducible, see packaging/deb.py)
#   make test                 the whole suite in classic mode, then the e2e suite in server mode
#   make test-server | bench | bench-docs | lint | clean | uninstall
#   make test-crio            the real CRI-O e2e tests alone (tests/crio/setup.sh)
#
# DESTDIR is honoured by every install target; the path compiled into the
# binary is $(PREFIX)/lib/pyconmon, never the DESTDIR one.

PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
LIBEXECDIR ?= $(PREFIX)/libexec
MANDIR ?= $(PREFIX)/share/man
# The configuration file is $(SYSCONFDIR)/pyconmon/pyconmon.toml (then /etc/containers/pyconmon.toml).
SYSCONFDIR ?= $(PREFIX)/etc
# Directory on the monitor's sys.path; it holds the `pyconmon` package.
PYCONMON_LIBDIR ?= $(PREFIX)/lib/pyconmon

# The interpreter the launcher embeds and the .pyc files are compiled for.
# Debian's, not a pyenv shim: the binary links against its libpython.
PYTHON ?= /usr/bin/python3
PYTHON_CONFIG ?= $(PYTHON)-config
# Which program the install targets put at .../conmon: the stub (server mode,
# README "Server mode"), or the classic launcher.
ENTRY ?= stub
# The stub's switch: "classic" in it (or PYCONMON_MODE=classic in its environment) turns server mode off.
PYCONMON_MODE_FILE ?= $(SYSCONFDIR)/pyconmon/mode
# Python for the developer targets (test, lint): the one on PATH.
DEV_PYTHON ?= python3

# Reproducible builds: every date that ends up in a file is the last commit's.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null)
export SOURCE_DATE_EPOCH
MAN_DATE := $(if $(SOURCE_DATE_EPOCH),$(shell date -u -d @$(SOURCE_DATE_EPOCH) +%Y-%m-%d))
# .pyc invalidation: timestamp for `make install`; the package ships unchecked-hash
# files (no source mtime inside, and dpkg owns the sources anyway).
PYC_INVALIDATION ?= timestamp

CC ?= cc
CFLAGS ?= -O2 -g -Wall -Wextra
LDFLAGS ?=
INSTALL ?= install

BUILDDIR := build
SRCDIR := src/pyconmon

# Facts about $(PYTHON), asked once per make run.
PY_FACTS := $(shell $(PYTHON) -I -S -c 'import sys, sysconfig as s; v = s.get_config_var; print(sys.prefix, sys.executable, s.get_path("stdlib"), v("DESTSHARED"), "%s/lib/python%d%d.zip" % (sys.prefix, *sys.version_info[:2]))' 2>/dev/null)
ifeq ($(words $(PY_FACTS)),5)
PY_HOME := $(word 1,$(PY_FACTS))
PY_EXE := $(word 2,$(PY_FACTS))
PY_STDLIB := $(word 3,$(PY_FACTS))
PY_DYNLOAD := $(word 4,$(PY_FACTS))
PY_ZIP := $(word 5,$(PY_FACTS))
endif

PY_CFLAGS := $(shell $(PYTHON_CONFIG) --includes 2>/dev/null)
PY_LDFLAGS := $(shell $(PYTHON_CONFIG) --embed --ldflags 2>/dev/null)

# `conmon --version`, answered by the launcher without starting Python: Podman
# probes the monitor this way before every container start and every exec.
VERSION_TEXT := $(shell $(PYTHON) -I -S -c 'import json, sys; sys.path.insert(0, "src"); from pyconmon.cli import version_text; print(json.dumps(version_text()))' 2>/dev/null)

LAUNCHER_DEFS := \
	-DPYCONMON_LIBDIR='"$(PYCONMON_LIBDIR)"' \
	-DPYCONMON_PYHOME='"$(PY_HOME)"' \
	-DPYCONMON_PYEXE='"$(PY_EXE)"' \
	-DPYCONMON_STDLIB='"$(PY_STDLIB)"' \
	-DPYCONMON_DYNLOAD='"$(PY_DYNLOAD)"' \
	-DPYCONMON_ZIP='"$(PY_ZIP)"' \
	-DPYCONMON_VERSION_TEXT='$(VERSION_TEXT)'

LAUNCHER_CMD := $(CC) $(CPPFLAGS) $(CFLAGS) $(PY_CFLAGS) $(LAUNCHER_DEFS) -o $(BUILDDIR)/conmon launcher/conmon.c $(LDFLAGS) $(PY_LDFLAGS)

STUB_CFLAGS ?= -Os -Wall -Wextra
# The server a stub talks to is named by this key (a hash of what is
# installed and where): a new install gets a new server, the old one exits
# when idle.
PY_SOURCES := $(shell find $(SRCDIR) -name '*.py' -not -path '*/__pycache__/*' 2>/dev/null | LC_ALL=C sort)

STUB_KEY := $(shell { echo '$(PYCONMON_LIBDIR)' '$(PY_EXE)'; cat $(PY_SOURCES) launcher/stub.c launcher/version.h; } | sha256sum | cut -c1-16)
STUB_DEFS := \
	-DPYCONMON_LIBDIR='"$(PYCONMON_LIBDIR)"' \
	-DPYCONMON_PYEXE='"$(PY_EXE)"' \
	-DPYCONMON_CLASSIC='"$(PYCONMON_LIBDIR)/classic/conmon"' \
	-DPYCONMON_MODE_FILE='"$(PYCONMON_MODE_FILE)"' \
	-DPYCONMON_KEY='"$(STUB_KEY)"' \
	-DPYCONMON_VERSION_TEXT='$(VERSION_TEXT)'
STUB_CMD := $(CC) -static $(CPPFLAGS) $(STUB_CFLAGS) $(STUB_DEFS) -o $(BUILDDIR)/stub/conmon launcher/stub.c $(LDFLAGS)

.PHONY: all man install install-lib install-man podman crio deb uninstall test test-crio test-server bench bench-docs lint clean \
	check-python FORCE

all: $(BUILDDIR)/conmon $(BUILDDIR)/stub/conmon $(BUILDDIR)/conmon.8

man: $(BUILDDIR)/conmon.8

check-python:
	@test -n "$(PY_HOME)" || { echo "error: cannot run $(PYTHON); install python3 (set PYTHON=...)" >&2; exit 1; }
	@test -n "$(PY_CFLAGS)" || { echo "error: $(PYTHON_CONFIG) not found; install python3-dev libpython3.11-dev" >&2; exit 1; }

# Rebuild whenever the compile command changes (e.g. another PREFIX):
# build/cmdline holds the last one and is rewritten only when it differs.
streq = $(and $(findstring x$(1),x$(2)),$(findstring x$(2),x$(1)))

$(BUILDDIR):
	@mkdir -p $@

$(BUILDDIR)/cmdline: FORCE | $(BUILDDIR) check-python
	@$(if $(call streq,$(LAUNCHER_CMD),$(file <$@)),:,$(file >$@,$(LAUNCHER_CMD)):)

$(BUILDDIR)/conmon: launcher/conmon.c launcher/version.h $(BUILDDIR)/cmdline
	$(LAUNCHER_CMD)

# The man page, made from the option table (it names $(PYCONMON_LIBDIR): cmdline tracks PREFIX).
$(BUILDDIR)/conmon.8: packaging/manpage.py $(PY_SOURCES) $(BUILDDIR)/cmdline
	$(PYTHON) -I -S packaging/manpage.py $(if $(MAN_DATE),--date $(MAN_DATE)) --libdir '$(PYCONMON_LIBDIR)' >$@.tmp
	mv $@.tmp $@

$(BUILDDIR)/stub-cmdline: FORCE | $(BUILDDIR) check-python
	@$(if $(call streq,$(STUB_CMD),$(file <$@)),:,$(file >$@,$(STUB_CMD)):)

$(BUILDDIR)/stub/conmon: launcher/stub.c launcher/version.h $(BUILDDIR)/stub-cmdline
	@mkdir -p $(BUILDDIR)/stub
	$(STUB_CMD)

install-lib: $(BUILDDIR)/conmon $(BUILDDIR)/stub/conmon
	@test -n "$(PY_HOME)" || { echo "error: cannot run $(PYTHON)" >&2; exit 1; }
	rm -rf '$(DESTDIR)$(PYCONMON_LIBDIR)/pyconmon'
	$(INSTALL) -d -m 755 '$(DESTDIR)$(PYCONMON_LIBDIR)/pyconmon'
	cd $(SRCDIR) && for f in $(patsubst $(SRCDIR)/%,%,$(PY_SOURCES)); do \
		$(INSTALL) -D -m 644 "$$f" '$(DESTDIR)$(PYCONMON_LIBDIR)/pyconmon/'"$$f" || exit 1; \
	done
	sed -i 's|^SYSCONFDIR = .*|SYSCONFDIR = "$(SYSCONFDIR)"  # set by make install-lib|' \
		'$(DESTDIR)$(PYCONMON_LIBDIR)/pyconmon/config.py'
	@# a fixed hash seed keeps set constants in the same order (reproducible .pyc); -I would ignore it
	env -i PATH="$$PATH" PYTHONHASHSEED=0 $(PYTHON) -s -P -m compileall -q -j 0 \
		--invalidation-mode $(PYC_INVALIDATION) -d '$(PYCONMON_LIBDIR)/pyconmon' \
		'$(DESTDIR)$(PYCONMON_LIBDIR)/pyconmon'
	$(INSTALL) -D -m 755 $(BUILDDIR)/conmon '$(DESTDIR)$(PYCONMON_LIBDIR)/classic/conmon'
	$(INSTALL) -D -m 755 $(BUILDDIR)/stub/conmon '$(DESTDIR)$(PYCONMON_LIBDIR)/stub/conmon'

install-man: $(BUILDDIR)/conmon.8
	$(INSTALL) -D -m 644 $(BUILDDIR)/conmon.8 '$(DESTDIR)$(MANDIR)/man8/conmon.8'

# $(1): directory for the binary
define install_bin
	$(INSTALL) -d -m 755 '$(DESTDIR)$(1)'
	$(INSTALL) -m 755 $(if $(filter stub,$(ENTRY)),$(BUILDDIR)/stub/conmon,$(BUILDDIR)/conmon) '$(DESTDIR)$(1)/conmon'
endef

install: $(BUILDDIR)/conmon install-lib install-man
	$(call install_bin,$(BINDIR))

podman: $(BUILDDIR)/conmon install-lib
	$(call install_bin,$(LIBEXECDIR)/podman)

crio: $(BUILDDIR)/conmon install-lib
	$(call install_bin,$(LIBEXECDIR)/crio)

uninstall:
	rm -f '$(DESTDIR)$(BINDIR)/conmon' '$(DESTDIR)$(LIBEXECDIR)/podman/conmon' '$(DESTDIR)$(LIBEXECDIR)/crio/conmon'
	rm -f '$(DESTDIR)$(MANDIR)/man8/conmon.8'
	rm -rf '$(DESTDIR)$(PYCONMON_LIBDIR)'

# The Debian package: staged with the install targets above (PREFIX=/usr, a
# private BUILDDIR, the C flags Debian uses, no debug info, stripped), then
# assembled by packaging/deb.py: owner root, mtimes clamped to
# SOURCE_DATE_EPOCH, sorted, so two builds of one commit are identical.
DEB_STAGE := $(BUILDDIR)/deb
DEB_CFLAGS := -O2 -Wall -Wextra -ffile-prefix-map=$(CURDIR)=. -fstack-protector-strong -D_FORTIFY_SOURCE=2 \
	-Wformat -Werror=format-security
DEB_LDFLAGS := -Wl,-z,relro -Wl,-z,now -s

deb: check-python
	@test -n "$(SOURCE_DATE_EPOCH)" || { echo "error: not a git checkout: set SOURCE_DATE_EPOCH" >&2; exit 1; }
	rm -rf '$(DEB_STAGE)'
	$(MAKE) --no-print-directory BUILDDIR='$(DEB_STAGE)/build' DESTDIR='$(abspath $(DEB_STAGE))/root' \
		PREFIX=/usr SYSCONFDIR=/etc LIBEXECDIR=/usr/libexec PYCONMON_LIBDIR=/usr/lib/pyconmon MANDIR=/usr/share/man \
		CFLAGS='$(DEB_CFLAGS)' LDFLAGS='$(DEB_LDFLAGS)' PYC_INVALIDATION=unchecked-hash \
		podman crio '$(DEB_STAGE)/build/conmon.8'
	$(PYTHON) -I -S packaging/deb.py --root '$(DEB_STAGE)/root' --man '$(DEB_STAGE)/build/conmon.8' \
		--python '$(PYTHON)' --out '$(BUILDDIR)'

# The README's test story, which CI runs as it is: the whole suite with the classic monitor,
# then the e2e suite again in server mode. make stops at the first run that fails, so the last
# pytest summary printed is that of the first failing run, or of the server-mode run if both passed.
test:
	@echo '== make test (1 of 2): the whole suite, classic mode =='
	$(DEV_PYTHON) -m pytest -q tests
	@$(MAKE) --no-print-directory test-server

# The e2e suite with server mode forced on: the monitor under test is the stub of an install
# whose mode file says "always" (server mode even if CI runs the tests in a systemd service;
# the tests that bring their own monitors are left out). Part 2 of `make test`.
SERVER_TEST_DIR := $(abspath $(BUILDDIR))/server-mode
test-server:
	@echo '== make test (2 of 2): the e2e suite, server mode =='
	rm -rf '$(SERVER_TEST_DIR)'
	mkdir -p '$(SERVER_TEST_DIR)'
	echo always >'$(SERVER_TEST_DIR)/mode'
	$(MAKE) --no-print-directory install ENTRY=stub PREFIX='$(SERVER_TEST_DIR)/prefix' \
		BUILDDIR='$(SERVER_TEST_DIR)/build' PYCONMON_MODE_FILE='$(SERVER_TEST_DIR)/mode'
	PYCONMON_TEST_MONITORS='$(SERVER_TEST_DIR)/prefix/bin/conmon' $(DEV_PYTHON) -m pytest -q tests/e2e \
		--ignore=tests/e2e/test_package.py --ignore=tests/e2e/test_crio_real.py

# tests/crio/setup.sh builds crio and crictl (cached under /var/cache/pyconmon-crio),
# runs `make crio PREFIX=<its state dir>/prefix` (where its `pyconmon` runtime
# handler points; `bash tests/crio/setup.sh env` shows the paths) and starts
# CRI-O for the tests.
test-crio:
	bash tests/crio/setup.sh prepare
	$(DEV_PYTHON) -m pytest -q tests/e2e/test_crio_real.py

# e.g. make bench ARGS="--quick" (python3 bench/bench.py --help). A full run writes
# docs/performance.{json,md} and README.md's Performance table; bench-docs only re-renders them.
bench:
	$(PYTHON) bench/bench.py $(ARGS)

bench-docs:
	$(PYTHON) bench/bench.py --render-docs

lint:
	$(DEV_PYTHON) -m ruff check src tests packaging bench
	$(DEV_PYTHON) -m mypy

clean:
	rm -rf $(BUILDDIR)

FORCE:
