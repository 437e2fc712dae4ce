package el8

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"github.com/ulikunitz/xz"
)

// SystemdTarball is the kit's tarball with the parts of EL8's systemd 239.
const SystemdTarball = "systemd-v239-rhel8-parts.tar.xz"

// gperfPath is where load-fragment-gperf.gperf.m4 sits in SystemdTarball.
const gperfPath = "src/core/load-fragment-gperf.gperf.m4"

// Directives maps a unit file section ("Unit", "Service", "Install", …) to
// the set of directive names systemd accepts in it.
type Directives map[string]map[string]bool

// Has reports whether key is a directive of section.
func (d Directives) Has(section, key string) bool {
	return d[section][key]
}

// SystemdDirectivesFrom returns the directives EL8's systemd 239 knows, read
// from load-fragment-gperf.gperf.m4 in the kit's systemd tarball at path
// (Sources()/SystemdTarball).
func SystemdDirectivesFrom(path string) (Directives, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot open the systemd sources: %w", err)
	}
	defer f.Close()
	zr, err := xz.NewReader(bufio.NewReader(f))
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %w", path, err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("cannot find %s in %s", gperfPath, path)
		}
		if err != nil {
			return nil, fmt.Errorf("cannot read %s: %w", path, err)
		}
		if strings.HasSuffix(h.Name, "/"+gperfPath) || h.Name == gperfPath {
			return ParseGperf(tr)
		}
	}
}

var (
	// m4_define(`EXEC_CONTEXT_CONFIG_ITEMS',
	gperfDefine = regexp.MustCompile("^m4_define\\(`([A-Z_]+)',")
	// $1.WorkingDirectory, config_parse_…  or  Unit.Description, config_parse_…
	// (the first line of an m4 branch starts with a backquote).
	gperfItem = regexp.MustCompile("^`?(\\$1|[A-Z][A-Za-z]*)\\.([A-Za-z0-9]+),")
	// EXEC_CONTEXT_CONFIG_ITEMS(Service)m4_dnl
	gperfExpand = regexp.MustCompile(`^([A-Z_]+)\(([A-Z][A-Za-z]*)\)`)
)

// ParseGperf reads systemd's load-fragment-gperf.gperf.m4 and returns the
// directives it defines per section. It understands the file's own use of
// m4: macros defined with m4_define whose items name the section `$1`,
// expanded as MACRO(Section), and both branches of m4_ifdef (a directive
// that is compiled out still parses, with a warning, so it is known).
func ParseGperf(r io.Reader) (Directives, error) {
	d := Directives{}
	macros := map[string][]string{}
	add := func(section, key string) {
		if d[section] == nil {
			d[section] = map[string]bool{}
		}
		d[section][key] = true
	}
	inBody := false // after the first %%
	macro := ""     // the m4_define being read
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if !inBody {
			inBody = l == "%%"
			continue
		}
		if m := gperfDefine.FindStringSubmatch(l); m != nil {
			macro = m[1]
			macros[macro] = nil
			continue
		}
		if macro != "" && strings.HasPrefix(l, ")m4_dnl") {
			macro = ""
			continue
		}
		if m := gperfItem.FindStringSubmatch(l); m != nil {
			switch {
			case macro != "" && m[1] == "$1":
				macros[macro] = append(macros[macro], m[2])
			case macro == "" && m[1] != "$1":
				add(m[1], m[2])
			default:
				return nil, fmt.Errorf("cannot parse the gperf file: %q outside its place", l)
			}
			continue
		}
		if m := gperfExpand.FindStringSubmatch(l); m != nil && macro == "" {
			keys, ok := macros[m[1]]
			if !ok {
				return nil, fmt.Errorf("cannot parse the gperf file: %s used before its m4_define", m[1])
			}
			for _, k := range keys {
				add(m[2], k)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cannot read the gperf file: %w", err)
	}
	if len(d["Unit"]) == 0 || len(d["Service"]) == 0 || len(d["Install"]) == 0 {
		return nil, fmt.Errorf("cannot parse the gperf file: no [Unit], [Service] or [Install] directives found")
	}
	return d, nil
}
