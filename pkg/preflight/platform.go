package preflight

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/boot"
	"github.com/keyarchos/kos-upgrade/pkg/execlog"
	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
)

// PlatformFacts describes the parts of the EL8 platform an upgrade depends
// on: the rpm database, grub2, kernel-install's UPDATEDEFAULT and dracut.
// Each zero value means "not found" or "unknown".
type PlatformFacts struct {
	RPMDB RPMDBFacts `json:"rpmdb"`
	Grub  GrubFacts  `json:"grub"`
	// UpdateDefault is UPDATEDEFAULT= of /etc/sysconfig/kernel ("yes",
	// "no"); "" when the file or the line is missing.
	UpdateDefault string `json:"update_default,omitempty"`
	// Dracut is the version of the root's dracut (DRACUT_VERSION of
	// /usr/lib/dracut/dracut-version.sh, else the dracut package's
	// version); "" when there is none.
	Dracut string `json:"dracut,omitempty"`
}

// rpm database backends, named as rpm's %_db_backend names them.
const (
	BackendBDB    = "bdb"
	BackendSQLite = "sqlite"
	BackendNDB    = "ndb"
)

// RPMDBFacts describes the root's rpm database and the rpm that would
// open it: the one of the helper's interpreter (sysroot.Python).
type RPMDBFacts struct {
	// Path is the database directory inside the root.
	Path string `json:"path"`
	// Backends are the backends whose files are there (bdb: Packages,
	// sqlite: rpmdb.sqlite, ndb: Packages.db); more than one when a
	// conversion left files behind. Empty when there is no database.
	Backends []string `json:"backends,omitempty"`
	// Files are the database files found (Packages, __db.001, …).
	Files []string `json:"files,omitempty"`
	// Helper is the helper's interpreter (sysroot.Python).
	Helper string `json:"helper,omitempty"`
	// HelperRPM is the version of the helper's rpm bindings and
	// HelperBackend the backend they open (%_db_backend); "" unknown.
	HelperRPM     string `json:"helper_rpm,omitempty"`
	HelperBackend string `json:"helper_backend,omitempty"`
}

// GrubFacts describes grub2's configuration.
type GrubFacts struct {
	// Config is the grub.cfg found (/boot/grub2/grub.cfg,
	// /boot/efi/EFI/*/grub.cfg); "" when there is none.
	Config string `json:"config,omitempty"`
	// BLSCfg is true when Config runs Red Hat's blscfg command (BLS
	// entries from /boot/loader/entries make the menu).
	BLSCfg bool `json:"blscfg"`
	// EnableBLSCFG is GRUB_ENABLE_BLSCFG= of /etc/default/grub; "" unset.
	EnableBLSCFG string `json:"enable_blscfg,omitempty"`
	// FallbackCounting is true when /etc/grub.d/08_fallback_counting
	// exists (EL 8.1 and later).
	FallbackCounting bool `json:"fallback_counting"`
	// BootCounter and BootSuccess are boot_counter and boot_success of
	// the first grubenv; "" when unset.
	BootCounter string `json:"boot_counter,omitempty"`
	BootSuccess string `json:"boot_success,omitempty"`
}

// rpmdbFiles maps a database file name to its backend.
var rpmdbFiles = map[string]string{"Packages": BackendBDB, "rpmdb.sqlite": BackendSQLite, "Packages.db": BackendNDB}

// collectPlatform fills f.Platform; what cannot be read goes to f.Errors.
func collectPlatform(ctx context.Context, root sysroot.Root, f *Facts) {
	p := &f.Platform
	errf := func(format string, a ...any) { f.Errors = append(f.Errors, fmt.Sprintf(format, a...)) }

	p.RPMDB.Path = root.DBPathRel()
	ents, _ := os.ReadDir(root.Path(p.RPMDB.Path))
	seen := map[string]bool{}
	for _, e := range ents {
		name := e.Name()
		b, db := rpmdbFiles[name]
		if !db && !strings.HasPrefix(name, "__db.") {
			continue
		}
		p.RPMDB.Files = append(p.RPMDB.Files, name)
		if db && !seen[b] {
			seen[b] = true
			p.RPMDB.Backends = append(p.RPMDB.Backends, b)
		}
	}
	sort.Strings(p.RPMDB.Backends)
	p.RPMDB.Helper = sysroot.Python()
	if v, b, err := helperRPM(ctx, p.RPMDB.Helper); err == nil {
		p.RPMDB.HelperRPM, p.RPMDB.HelperBackend = v, b
	} else {
		errf("cannot ask the helper's rpm which database backend it opens: %v", err)
	}

	// The grub.cfg that runs blscfg if any (a stale one of another
	// firmware may lie next to it), else the first found.
	for _, c := range append([]string{root.Path("/boot/grub2/grub.cfg")}, globSorted(root.Path("/boot/efi/EFI/*/grub.cfg"))...) {
		b, err := root.ReadFile(c, maxFactFile)
		if err != nil {
			continue
		}
		if p.Grub.Config == "" || !p.Grub.BLSCfg && runsBLSCfg(b) {
			p.Grub.Config = strings.TrimPrefix(c, strings.TrimSuffix(root.Dir, "/"))
			p.Grub.BLSCfg = runsBLSCfg(b)
		}
	}
	p.Grub.EnableBLSCFG = shellVar(root, "/etc/default/grub", "GRUB_ENABLE_BLSCFG")
	_, err := os.Stat(root.Path("/etc/grub.d/08_fallback_counting"))
	p.Grub.FallbackCounting = err == nil
	if len(f.Boot.GrubEnvs) > 0 {
		g := f.Boot.GrubEnvs[0]
		path, err := root.Resolve(root.Path(g.Path))
		if err == nil {
			var env *boot.Env
			if env, err = boot.ReadEnv(path); err == nil {
				p.Grub.BootCounter, _ = env.Get(boot.EnvBootCounter)
				p.Grub.BootSuccess, _ = env.Get(boot.EnvBootSuccess)
			}
		}
		if err != nil {
			errf("cannot read %s: %v", f.Boot.GrubEnvs[0].Path, err)
		}
	}

	p.UpdateDefault = shellVar(root, "/etc/sysconfig/kernel", "UPDATEDEFAULT")
	p.Dracut = shellVar(root, "/usr/lib/dracut/dracut-version.sh", "DRACUT_VERSION")
	if p.Dracut == "" {
		for _, pkg := range f.Packages {
			if pkg.Name == "dracut" {
				// dracut-0:049-223.git20230119.el8.x86_64
				v := strings.TrimPrefix(pkg.NEVRA, "dracut-")
				if _, after, ok := strings.Cut(v, ":"); ok {
					v = after
				}
				v, _, _ = strings.Cut(v, "-")
				p.Dracut = v
			}
		}
	}
}

func globSorted(pattern string) []string {
	m, _ := filepath.Glob(pattern)
	sort.Strings(m)
	return m
}

// runsBLSCfg reports whether a grub.cfg runs the blscfg command of Red
// Hat's BLS patches (a line "blscfg", as 10_linux writes it with
// GRUB_ENABLE_BLSCFG=true), outside comments.
func runsBLSCfg(cfg []byte) bool {
	sc := bufio.NewScanner(bytes.NewReader(cfg))
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) > 0 && fl[0] == "blscfg" {
			return true
		}
	}
	return false
}

// maxFactFile caps a configuration file read for the facts.
const maxFactFile = 16 << 20

// shellVar returns the value of NAME=value in a shell variables file
// (/etc/default/grub, /etc/sysconfig/kernel: rel, inside root), quotes
// removed; the last assignment wins; "" when the file or the variable is
// missing (or not a regular file inside the root).
func shellVar(root sysroot.Root, rel, name string) string {
	b, err := root.ReadFile(root.Path(rel), maxFactFile)
	if err != nil {
		return ""
	}
	val := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		l = strings.TrimPrefix(l, "export ")
		k, v, ok := strings.Cut(l, "=")
		if !ok || strings.TrimSpace(k) != name {
			continue
		}
		v = strings.TrimSpace(v)
		if v != "" && (v[0] == '"' || v[0] == '\'') {
			if end := strings.IndexByte(v[1:], v[0]); end >= 0 {
				v = v[1 : end+1]
			}
		} else if i := strings.Index(v, " #"); i >= 0 {
			v = strings.TrimSpace(v[:i])
		}
		val = v
	}
	return val
}

// helperRPMScript prints the rpm bindings' version and the database backend
// they open, under the helper's interpreter.
const helperRPMScript = `import rpm
print(rpm.__version__)
print(rpm.expandMacro("%{?_db_backend}"))
`

// helperRPM asks the helper's interpreter py for its rpm
// version and %_db_backend.
func helperRPM(ctx context.Context, py string) (version, backend string, err error) {
	var stderr bytes.Buffer
	cmd := execlog.Python(ctx, py, []string{"-c", helperRPMScript})
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", "", fmt.Errorf("%s: %w: %s", py, err, strings.TrimSpace(stderr.String()))
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 1 || lines[0] == "" {
		return "", "", fmt.Errorf("%s printed no rpm version", py)
	}
	version = strings.TrimSpace(lines[0])
	if len(lines) > 1 {
		backend = strings.TrimSpace(lines[1])
	}
	if backend == "" {
		// rpm before 4.15 has no %_db_backend and knows only Berkeley DB
		// (EL8's 4.14.3 among them).
		backend = BackendBDB
	}
	return version, backend, nil
}

// Finding keys of the platform checks (docs/report.md).
const (
	KeyRPMDB            = "rpmdb.backend"
	KeyRPMDBUnsupported = "rpmdb.unsupported-backend"
	KeyRPMDBReadOnly    = "rpmdb.read-only"
	KeyGrub             = "boot.grub"
	KeyGrubNoBLS        = "boot.grub-no-bls"
	KeyGrubBootCounter  = "boot.boot-counter"
	KeyKernelUpdateDflt = "boot.update-default"
	KeyDracut           = "system.dracut"
)

var backendNames = map[string]string{BackendBDB: "Berkeley DB", BackendSQLite: "sqlite", BackendNDB: "ndb"}

func backendName(b string) string {
	if n, ok := backendNames[b]; ok {
		return n
	}
	return b
}

// checkPlatform reports the platform found and inhibits what kos-upgrade
// cannot handle safely: a database its rpm cannot open, grub2 without BLS.
func checkPlatform(f *Facts) []Finding {
	var out []Finding
	out = append(out, checkRPMDB(f)...)
	out = append(out, checkGrub(f)...)
	p := f.Platform
	if p.UpdateDefault != "" {
		fd := Finding{
			Key: KeyKernelUpdateDflt, Severity: Info, Groups: []string{"boot"},
			Title: "UPDATEDEFAULT=" + p.UpdateDefault + " in /etc/sysconfig/kernel",
		}
		if strings.EqualFold(p.UpdateDefault, "yes") {
			fd.Summary = "A new kernel's kernel-install (EL8's 20-grub.install) makes it the default entry (grubenv saved_entry) while the transaction runs; kos-upgrade decides the default itself after the transaction."
		} else {
			fd.Summary = "kernel-install leaves the default entry alone when a kernel is installed; kos-upgrade makes the upgraded system's entry the default itself."
		}
		out = append(out, fd)
	}
	if p.Dracut != "" {
		out = append(out, Finding{
			Key: KeyDracut, Severity: Info, Groups: []string{"system"},
			Title:   "dracut " + p.Dracut,
			Summary: "dracut builds the new kernel's initramfs (and the upgrade initramfs of --mode initramfs, which needs dracut 049 or later).",
		})
	}
	return out
}

func checkRPMDB(f *Facts) []Finding {
	db := f.Platform.RPMDB
	if db.Path == "" {
		return nil // not collected
	}
	if len(db.Backends) == 0 {
		return []Finding{{
			Key: KeyRPMDB, Severity: Low, Groups: []string{"packages"},
			Title:   "No rpm database in " + db.Path,
			Summary: fmt.Sprintf("Neither Packages (Berkeley DB), rpmdb.sqlite nor Packages.db is in %s: there are no installed packages to upgrade.", db.Path),
		}}
	}
	var names []string
	for _, b := range db.Backends {
		names = append(names, backendName(b))
	}
	helper := "unknown"
	if db.HelperRPM != "" {
		helper = fmt.Sprintf("rpm %s, which opens %s", db.HelperRPM, backendName(db.HelperBackend))
	}
	out := []Finding{{
		Key: KeyRPMDB, Severity: Info, Groups: []string{"packages"},
		Title:   fmt.Sprintf("rpm database: %s in %s", strings.Join(names, " and "), db.Path),
		Summary: fmt.Sprintf("The transaction runs with the rpm of the helper's interpreter (%s): %s.", db.Helper, helper),
		Details: db.Files,
	}}
	if db.HelperBackend == "" || contains(db.Backends, db.HelperBackend) {
		return out
	}
	remedies := []Remediation{
		hint("run kos-upgrade on the system it upgrades: there the interpreter that imports dnf (EL8: /usr/libexec/platform-python) has the rpm that wrote the database"),
		hint("or point KOS_UPGRADE_PYTHON at an interpreter whose rpm bindings use %s", backendName(db.Backends[0])),
	}
	if !rpmAtLeast(db.HelperRPM, 4, 16) {
		// rpm before 4.16 opens only its configured backend: on another
		// one's files it would see an empty database.
		return append(out, Finding{
			Key: KeyRPMDBUnsupported, Severity: High, Groups: inhibitor("packages"),
			Title: fmt.Sprintf("The rpm database is %s, which the helper's rpm %s cannot open", strings.Join(names, " and "), db.HelperRPM),
			Summary: fmt.Sprintf("kos-upgrade runs rpm's Python bindings of %s (rpm %s, database backend %s), but the database in %s is %s. "+
				"rpm before 4.16 opens only its own backend: it would find no installed package, so nothing could be assessed or upgraded safely.",
				db.Helper, db.HelperRPM, backendName(db.HelperBackend), db.Path, strings.Join(names, " and ")),
			Details:      db.Files,
			Remediations: remedies,
		})
	}
	if len(db.Backends) == 1 && db.Backends[0] == BackendBDB {
		return append(out, Finding{
			Key: KeyRPMDBReadOnly, Severity: Medium, Groups: []string{"packages"},
			Title: fmt.Sprintf("The helper's rpm %s opens this Berkeley DB database read-only", db.HelperRPM),
			Summary: fmt.Sprintf("rpm 4.16 and later read a Berkeley DB database but do not write it (%s's rpm %s writes %s): the assessment works, "+
				"but the offline transaction must run with an rpm that writes Berkeley DB, as the system's own does (EL8's rpm 4.14.3 under platform-python).",
				db.Helper, db.HelperRPM, backendName(db.HelperBackend)),
			Details:      db.Files,
			Remediations: remedies,
		})
	}
	return out
}

// rpmAtLeast reports whether rpm version v ("4.14.3") is major.minor or
// later; false when v cannot be read.
func rpmAtLeast(v string, major, minor int) bool {
	fl := strings.SplitN(v, ".", 3)
	if len(fl) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(fl[0])
	mi, err2 := strconv.Atoi(strings.TrimFunc(fl[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

func checkGrub(f *Facts) []Finding {
	g := f.Platform.Grub
	if g.Config == "" && g.EnableBLSCFG == "" && !g.FallbackCounting {
		return nil
	}
	var out []Finding
	title := "GRUB 2"
	switch {
	case g.Config == "":
		title += ", no grub.cfg found"
	case g.BLSCfg:
		title += " with Red Hat's BLS (blscfg)"
	default:
		title += " without BLS"
	}
	var facts []string
	if g.Config != "" {
		facts = append(facts, "configuration "+g.Config)
	}
	if g.EnableBLSCFG != "" {
		facts = append(facts, "GRUB_ENABLE_BLSCFG="+g.EnableBLSCFG)
	} else {
		facts = append(facts, "GRUB_ENABLE_BLSCFG unset")
	}
	if g.FallbackCounting {
		facts = append(facts, "08_fallback_counting installed")
	}
	if g.BootCounter != "" {
		facts = append(facts, "boot_counter="+g.BootCounter)
	}
	if g.BootSuccess != "" {
		facts = append(facts, "boot_success="+g.BootSuccess)
	}
	out = append(out, Finding{
		Key: KeyGrub, Severity: Info, Groups: []string{"boot"},
		Title:   title,
		Summary: strings.Join(facts, "; ") + ".",
	})

	// grub2 boots this system when it has a grub.cfg and systemd-boot
	// has no loader.conf here.
	if g.Config != "" && len(f.Boot.SystemdBoot) == 0 {
		switch {
		case !g.BLSCfg:
			fd := Finding{
				Key: KeyGrubNoBLS, Severity: High, Groups: inhibitor("boot"),
				Title: "GRUB 2 does not read BLS entries",
				Summary: fmt.Sprintf("%s does not run blscfg, so GRUB builds its menu from grub.cfg alone: the boot entry kos-upgrade writes for the upgraded system (/boot/loader/entries) would never be shown nor booted, and no trial boot could be armed.",
					g.Config),
			}
			if g.EnableBLSCFG == "true" {
				fd.Summary += " /etc/default/grub has GRUB_ENABLE_BLSCFG=true: grub.cfg was not generated again since."
				fd.Remediations = []Remediation{command("grub2-mkconfig -o %s", g.Config)}
			} else {
				fd.Remediations = []Remediation{
					command("grub2-switch-to-blscfg"),
					hint("or set GRUB_ENABLE_BLSCFG=true in /etc/default/grub, then run grub2-mkconfig -o %s", g.Config),
				}
			}
			out = append(out, fd)
		case g.EnableBLSCFG == "false":
			out = append(out, Finding{
				Key: KeyGrubNoBLS, Severity: Medium, Groups: []string{"boot"},
				Title:   "GRUB 2 reads BLS entries, but /etc/default/grub turns BLS off",
				Summary: fmt.Sprintf("%s runs blscfg today, but GRUB_ENABLE_BLSCFG=false: the next grub2-mkconfig writes a grub.cfg that ignores /boot/loader/entries, where the upgraded system's entry is.", g.Config),
				Remediations: []Remediation{
					hint("set GRUB_ENABLE_BLSCFG=true in /etc/default/grub (EL8's default)"),
				},
			})
		}
	}
	if g.BootCounter != "" && g.FallbackCounting {
		out = append(out, Finding{
			Key: KeyGrubBootCounter, Severity: Low, Groups: []string{"boot"},
			Title: "Another tool's boot counting is in progress (boot_counter=" + g.BootCounter + ")",
			Summary: "grubenv has boot_counter set: greenboot has not blessed the running system yet. 08_fallback_counting would act on it during the trial " +
				"(each trial boot has boot_success=0), so kos-upgrade sets it aside while its trial is armed, puts it back if the upgraded system falls back " +
				"and drops it when the upgraded system is blessed, as greenboot does after a good boot.",
			Remediations: []Remediation{
				hint("let greenboot's counting end first (it sets boot_success=1 and removes boot_counter once the running system is healthy)"),
			},
		})
	}
	return out
}
