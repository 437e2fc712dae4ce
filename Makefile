# kos-upgrade — see README.md. Run `make help`.
GO        ?= go
PREFIX    ?= /usr
DESTDIR   ?=
BIN       := bin/kos-upgrade
UNITDIR   ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
# The release; `make rpm` packages it (units/kos-upgrade.spec, docs/packaging.md).
VERSION   := 0.1.0
GOLDFLAGS ?= -s -w
# GOTAGS=kostesthooks builds the tests' crash and hang hooks in (the VM
# tests' images do: test/e2e); the product is built without.
GOTAGS    ?=
RPMTOP    ?= $(CURDIR)/bin/rpmbuild
RPMOUT    ?= bin/rpm
# rpm cannot check BuildRequires on a host whose packages are not rpms (Debian).
RPMFLAGS  ?= $(shell rpm -q rpm >/dev/null 2>&1 || echo --nodeps)
PKGS      := ./...
# Real-component tests need root and the tools test/run.sh installs; in CI
# KOS_UPGRADE_REQUIRE_ALL=1 turns their skips into failures.
TESTFLAGS ?= -count=1 -timeout 45m

FUZZTIME ?= 30s

.PHONY: all build test unit bench lint fmt install demo check help clean fuzz e2e cockpit-test rpm docs

all: build

help: ## show this help
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## build bin/kos-upgrade
	CGO_ENABLED=0 $(GO) build -trimpath -tags '$(GOTAGS)' -ldflags '-X main.version=$(VERSION) $(GOLDFLAGS)' -o $(BIN) ./cmd/kos-upgrade

docs: build ## regenerate the man page, docs/cli.md's command reference and the shell completions from the CLI
	$(BIN) generate man > docs/kos-upgrade.8
	$(BIN) generate bash > units/completion/kos-upgrade.bash
	$(BIN) generate zsh > units/completion/_kos-upgrade
	$(BIN) generate markdown > bin/cli-reference.md
	awk -v ref=bin/cli-reference.md '/^<!-- BEGIN generated/ {print; while ((getline l < ref) > 0) print l; skip=1; next} /^<!-- END generated/ {skip=0} !skip' docs/cli.md > bin/cli.md && mv bin/cli.md docs/cli.md

test: build ## run the whole test suite (real rpm, dnf, btrfs: run as root)
	$(GO) test $(TESTFLAGS) -p 1 $(PKGS)

unit: ## run only tests that need neither root nor tools
	KOS_UPGRADE_REQUIRE_ALL= $(GO) test -count=1 -short $(PKGS)

fuzz: ## fuzz the parsers of files and options kos-upgrade reads (plan, state, btrfs stream, health, boot entries, grubenv, mountinfo, maps, answers, --repo, ISO images, bundle needs) for FUZZTIME each (FUZZTIME=1000000x for a million runs)
	$(GO) test -run '^$$' -fuzz '^FuzzParsePlan$$' -fuzztime $(FUZZTIME) ./upgrader
	$(GO) test -run '^$$' -fuzz '^FuzzParseState$$' -fuzztime $(FUZZTIME) ./upgrader
	$(GO) test -run '^$$' -fuzz '^FuzzParseStream$$' -fuzztime $(FUZZTIME) ./pkg/btrfsdiff
	$(GO) test -run '^$$' -fuzz '^FuzzParseBaseline$$' -fuzztime $(FUZZTIME) ./pkg/health
	$(GO) test -run '^$$' -fuzz '^FuzzParsePolicy$$' -fuzztime $(FUZZTIME) ./pkg/health
	$(GO) test -run '^$$' -fuzz '^FuzzParseEntry$$' -fuzztime $(FUZZTIME) ./pkg/boot
	$(GO) test -run '^$$' -fuzz '^FuzzParseEnv$$' -fuzztime $(FUZZTIME) ./pkg/boot
	$(GO) test -run '^$$' -fuzz '^FuzzParseCounter$$' -fuzztime $(FUZZTIME) ./pkg/boot
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./pkg/mountinfo
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./pkg/migrate
	$(GO) test -run '^$$' -fuzz '^FuzzParseAnswers$$' -fuzztime $(FUZZTIME) ./pkg/preflight
	$(GO) test -run '^$$' -fuzz '^FuzzParseRepo$$' -fuzztime $(FUZZTIME) ./pkg/pkgmgr
	$(GO) test -run '^$$' -fuzz '^FuzzOpen$$' -fuzztime $(FUZZTIME) ./pkg/iso
	$(GO) test -run '^$$' -fuzz '^FuzzReadNeeds$$' -fuzztime $(FUZZTIME) ./pkg/bundle

bench: build ## run the benchmarks (P1 apply vs rpm -U, P2 snapshot scaling, binary size)
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 60m ./...
	@ls -l $(BIN) | awk '{printf "binary size: %d bytes\n", $$5}'

lint: ## gofmt, go vet, staticcheck, python 3.6 syntax of the dnf helper, ansible-test sanity and ansible-lint of ansible/
	@out=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	@# staticcheck is a tool of go.mod (go get -tool honnef.co/go/tools/cmd/staticcheck@VERSION)
	$(GO) tool staticcheck $(PKGS)
	@py36=$$(ls $$HOME/.pyenv/versions/3.6*/bin/python 2>/dev/null | head -1); \
	if [ -n "$$py36" ]; then $$py36 -m py_compile pkg/pkgmgr/helper/kos_upgrade_helper.py && echo "helper compiles with $$py36"; fi
	@# the Ansible collection: ansible-galaxy build, ansible-test sanity, ansible-lint (docs/fleet.md)
	@if command -v ansible-test >/dev/null || [ "$$KOS_UPGRADE_REQUIRE_ALL" = 1 ]; then bash test/ansible/lint.sh; \
	else echo "ansible-test is not installed: the collection's sanity and lint did not run"; fi

check: lint test ## lint, then the whole test suite (what CI runs)

demo: build ## upgrade a throwaway btrfs sandbox system from 5.8 to 5.9
	$(GO) run ./test/sandbox --binary $(BIN)

install: build ## install into DESTDIR (PREFIX=/usr)
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/kos-upgrade
	install -d $(DESTDIR)$(PREFIX)/share/doc/kos-upgrade
	install -m 0644 README.md docs/*.md docs/report.schema.json $(DESTDIR)$(PREFIX)/share/doc/kos-upgrade/
	# man page and shell completions, generated from the CLI (make docs)
	install -D -m 0644 docs/kos-upgrade.8 $(DESTDIR)$(PREFIX)/share/man/man8/kos-upgrade.8
	install -D -m 0644 units/completion/kos-upgrade.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/kos-upgrade
	install -D -m 0644 units/completion/_kos-upgrade $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_kos-upgrade
	# commented examples of the files an admin may write in /etc/kos-upgrade (every line a comment: no effect)
	install -D -m 0644 units/etc/boot.conf $(DESTDIR)$(SYSCONFDIR)/kos-upgrade/boot.conf
	install -D -m 0644 units/etc/answers.conf $(DESTDIR)$(SYSCONFDIR)/kos-upgrade/answers.conf
	install -D -m 0644 units/etc/health.d/README $(DESTDIR)$(SYSCONFDIR)/kos-upgrade/health.d/README
	install -D -m 0644 units/kos-upgrade-apply.service $(DESTDIR)$(UNITDIR)/kos-upgrade-apply.service
	# systemd.offline-updates(7): a .wants link shipped in the package, no [Install] section
	install -d $(DESTDIR)$(UNITDIR)/system-update.target.wants
	ln -sfn ../kos-upgrade-apply.service $(DESTDIR)$(UNITDIR)/system-update.target.wants/kos-upgrade-apply.service
	# shutdown-time finalize of a staged upgrade (docs/stage.md): started at runtime by reboot --stage, no [Install]
	install -D -m 0644 units/kos-upgrade-finalize.service $(DESTDIR)$(UNITDIR)/kos-upgrade-finalize.service
	# first boot after an upgrade (docs/boot.md): health check, trial blessed or rolled back; shipped links, no [Install]
	install -D -m 0644 units/kos-upgrade-health.service $(DESTDIR)$(UNITDIR)/kos-upgrade-health.service
	install -d $(DESTDIR)$(UNITDIR)/multi-user.target.wants $(DESTDIR)$(UNITDIR)/boot-complete.target.requires
	ln -sfn ../kos-upgrade-health.service $(DESTDIR)$(UNITDIR)/multi-user.target.wants/kos-upgrade-health.service
	ln -sfn ../kos-upgrade-health.service $(DESTDIR)$(UNITDIR)/boot-complete.target.requires/kos-upgrade-health.service
	# confirmation window (docs/health.md): started by kos-upgrade health when health.conf asks for one; no [Install]
	install -D -m 0644 units/kos-upgrade-confirm.timer $(DESTDIR)$(UNITDIR)/kos-upgrade-confirm.timer
	install -D -m 0644 units/kos-upgrade-confirm.service $(DESTDIR)$(UNITDIR)/kos-upgrade-confirm.service
	# D-Bus service (docs/dbus.md): unit, activation, policy, interface, polkit actions, journal catalog
	install -D -m 0644 units/kos-upgrade-daemon.service $(DESTDIR)$(UNITDIR)/kos-upgrade-daemon.service
	install -D -m 0644 units/org.kos.Upgrade1.service $(DESTDIR)$(PREFIX)/share/dbus-1/system-services/org.kos.Upgrade1.service
	install -D -m 0644 units/org.kos.Upgrade1.conf $(DESTDIR)$(PREFIX)/share/dbus-1/system.d/org.kos.Upgrade1.conf
	install -D -m 0644 pkg/dbusapi/org.kos.Upgrade1.xml $(DESTDIR)$(PREFIX)/share/dbus-1/interfaces/org.kos.Upgrade1.xml
	install -D -m 0644 units/org.kos.upgrade.policy $(DESTDIR)$(PREFIX)/share/polkit-1/actions/org.kos.upgrade.policy
	install -D -m 0644 units/kos-upgrade.catalog $(DESTDIR)$(PREFIX)/lib/systemd/catalog/kos-upgrade.catalog
	# Cockpit plugin (docs/cockpit.md): plain files, nothing to build
	install -d $(DESTDIR)$(PREFIX)/share/cockpit/kos-upgrade
	install -m 0644 cockpit/kos-upgrade/manifest.json cockpit/kos-upgrade/index.html cockpit/kos-upgrade/*.js cockpit/kos-upgrade/*.css \
		$(DESTDIR)$(PREFIX)/share/cockpit/kos-upgrade/
	# initramfs mode (docs/initramfs.md): dracut module, used only with dracut --add kos-upgrade
	install -d $(DESTDIR)$(PREFIX)/lib/dracut/modules.d/90kos-upgrade
	install -m 0755 dracut/90kos-upgrade/*.sh $(DESTDIR)$(PREFIX)/lib/dracut/modules.d/90kos-upgrade/
	install -m 0644 dracut/90kos-upgrade/*.service $(DESTDIR)$(PREFIX)/lib/dracut/modules.d/90kos-upgrade/
	# migration maps (docs/migration.md); the binary carries a built-in copy too
	install -d $(DESTDIR)$(PREFIX)/share/kos-upgrade/migration
	install -m 0644 pkg/migrate/maps/*.json $(DESTDIR)$(PREFIX)/share/kos-upgrade/migration/
	# grub2 trial boot with several tries (docs/boot.md), then grub2-mkconfig once
	install -D -m 0755 pkg/boot/grub/09_kos_upgrade_trial $(DESTDIR)$(SYSCONFDIR)/grub.d/09_kos_upgrade_trial

rpm: ## build the kos-upgrade RPM into bin/rpm/ (source tarball with vendored Go modules; docs/packaging.md)
	rm -rf $(RPMTOP) && mkdir -p $(RPMTOP)/SOURCES $(RPMTOP)/stage/kos-upgrade-$(VERSION) $(RPMOUT)
	git ls-files -z -co --exclude-standard | tar --null -T - --ignore-failed-read -cf - | tar -xf - -C $(RPMTOP)/stage/kos-upgrade-$(VERSION)
	cd $(RPMTOP)/stage/kos-upgrade-$(VERSION) && $(GO) mod vendor -e
	tar -C $(RPMTOP)/stage -czf $(RPMTOP)/SOURCES/kos-upgrade-$(VERSION).tar.gz kos-upgrade-$(VERSION)
	rpmbuild -bb $(RPMFLAGS) --define "_topdir $(RPMTOP)" --define "version_ $(VERSION)" \
		--define "go_bin $$(command -v $(GO))" units/kos-upgrade.spec
	rm -f $(RPMOUT)/kos-upgrade-*.rpm && cp $(RPMTOP)/RPMS/*/kos-upgrade-$(VERSION)-*.rpm $(RPMOUT)/
	@ls $(RPMOUT)/kos-upgrade-$(VERSION)-*.rpm

e2e: build ## every boot scenario: nspawn and all QEMU ones, about 45 min (root; KOS_UPGRADE_E2E_ARTIFACTS=DIR keeps consoles)
	KOS_UPGRADE_E2E=full $(GO) test -count=1 -timeout 120m -p 1 -v ./test/e2e/

cockpit-test: ## the Cockpit plugin in a real browser and Cockpit (root; screenshots in test/cockpit/screenshots)
	$(GO) test -count=1 -v -run TestCockpit ./test/cockpit/

clean: ## remove build output
	rm -rf bin
