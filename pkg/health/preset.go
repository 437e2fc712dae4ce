package health

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/safefile"
)

// presetDirs are where systemd reads preset files (systemd.preset(5)), in
// order of precedence: a file name in an earlier directory hides the same
// name in a later one.
var presetDirs = []string{"/etc/systemd/system-preset", "/run/systemd/system-preset",
	"/usr/local/lib/systemd/system-preset", "/usr/lib/systemd/system-preset", "/lib/systemd/system-preset"}

// maxPresetSize caps one preset file.
const maxPresetSize = 1 << 20

// Preset is what a system's preset files say of a unit: Action enable,
// disable or ignore; From the file and line that says it ("" when no
// line matches: systemd then enables).
type Preset struct {
	Action string
	From   string
}

// String is "disable (FILE:LINE)", or "enable (no preset matches)".
func (p Preset) String() string {
	if p.From == "" {
		return p.Action + " (no preset matches)"
	}
	return p.Action + " (" + p.From + ")"
}

// Presets are the preset rules of a root, in systemd's order.
type Presets struct {
	rules []presetRule
}

type presetRule struct {
	action, pattern, from string
}

// LoadPresets reads the preset files of the system at root as systemd
// does: every *.preset file of presetDirs (an earlier directory's file
// hides a later one of the same name), sorted by file name, lines
// "enable|disable|ignore PATTERN" in order. Unreadable files and lines
// systemd would reject are skipped.
func LoadPresets(root string) *Presets {
	files := map[string]string{} // name -> path
	for _, d := range presetDirs {
		// /lib is /usr/lib on merged systems: the same file once.
		ents, err := os.ReadDir(filepath.Join(root, d))
		if err != nil {
			continue
		}
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".preset") || files[e.Name()] != "" {
				continue
			}
			files[e.Name()] = filepath.Join(d, e.Name())
		}
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	p := &Presets{}
	for _, n := range names {
		b, err := safefile.Read(filepath.Join(root, files[n]), maxPresetSize)
		if err != nil {
			continue
		}
		p.rules = append(p.rules, parsePresets(b, files[n])...)
	}
	return p
}

// parsePresets parses one preset file named file.
func parsePresets(b []byte, file string) []presetRule {
	var out []presetRule
	sc := bufio.NewScanner(bytes.NewReader(b))
	n := 0
	for sc.Scan() {
		n++
		f := strings.Fields(sc.Text())
		if len(f) < 2 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], ";") {
			continue
		}
		switch f[0] {
		case "enable", "disable", "ignore":
			if _, err := path.Match(f[1], ""); err != nil {
				continue
			}
			out = append(out, presetRule{action: f[0], pattern: f[1], from: fmt.Sprintf("%s:%d", file, n)})
		}
	}
	return out
}

// Of is the preset of unit: the first rule whose pattern matches its name.
func (p *Presets) Of(unit string) Preset {
	for _, r := range p.rules {
		if ok, _ := path.Match(r.pattern, unit); ok {
			return Preset{Action: r.action, From: r.from}
		}
	}
	return Preset{Action: "enable"}
}
