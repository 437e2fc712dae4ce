package migrate

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
)

// base is a valid map; each case mutates a copy.
func base() map[string]any {
	return map[string]any{
		"version": 1,
		"name":    "test",
		"source":  map[string]any{"ids": []any{"centos"}, "versions": []any{"8"}},
		"target":  map[string]any{"id": "kos", "name": "KeyarchOS", "el": 8},
		"release": map[string]any{"from": []any{"centos-release", "centos-repos"}, "to": []any{"kos-release"}},
		"repos":   []any{map[string]any{"id": "kos", "baseurl": "https://example/$releasever/", "gpgkey": []any{"file:///k"}}},
		"packages": []any{
			map[string]any{"kind": "rename", "from": []any{"centos-logos"}, "to": []any{"kos-logos"}},
			map[string]any{"kind": "split", "from": []any{"toolsuite"}, "to": []any{"toolsuite-core", "toolsuite-extra"}},
			map[string]any{"kind": "merge", "from": []any{"liba", "libb"}, "to": []any{"libab"}},
			map[string]any{"kind": "remove", "from": []any{"centos-only-tool"}, "reason": "gone"},
		},
	}
}

func pkgs(m map[string]any) []any { return m["packages"].([]any) }

func entry(kind string, from, to []any) map[string]any {
	e := map[string]any{"kind": kind, "from": from}
	if to != nil {
		e["to"] = to
	}
	return e
}

func encode(t *testing.T, m map[string]any) []byte {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParse(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(m map[string]any)
		raw    string // used instead of the mutated base when set
		want   []string
	}{
		{name: "valid"},
		{name: "empty file", raw: " \n", want: []string{"the file is empty"}},
		{name: "malformed", raw: "{\n\"version\": 1,\n", want: []string{"malformed JSON"}},
		{name: "trailing data", raw: `{"version":1} {}`, want: []string{"trailing data"}},
		{name: "unknown field (typo)", mutate: func(m map[string]any) {
			pkgs(m)[0].(map[string]any)["form"] = []any{"x"}
		}, want: []string{`unknown field "form"`}},
		{name: "wrong type", mutate: func(m map[string]any) { m["version"] = "1" }, want: []string{`field "version" has the wrong type`}},
		{name: "no version", mutate: func(m map[string]any) { delete(m, "version") }, want: []string{`no "version"`}},
		{name: "future version", mutate: func(m map[string]any) { m["version"] = 2 }, want: []string{"newer than this kos-upgrade"}},
		{name: "unknown kind", mutate: func(m map[string]any) {
			m["packages"] = append(pkgs(m), entry("rebrand", []any{"x"}, []any{"y"}))
		}, want: []string{`packages[4] (rebrand x): unknown kind "rebrand"`}},
		{name: "no kind", mutate: func(m map[string]any) {
			m["packages"] = append(pkgs(m), map[string]any{"from": []any{"x"}, "to": []any{"y"}})
		}, want: []string{"packages[4] ((no kind) x): no kind"}},
		{name: "empty name", mutate: func(m map[string]any) {
			m["packages"] = append(pkgs(m), entry("rename", []any{""}, []any{"y"}))
		}, want: []string{"an empty package name in from"}},
		{name: "glob name", mutate: func(m map[string]any) {
			m["packages"] = append(pkgs(m), entry("rename", []any{"centos-*"}, []any{"y"}))
		}, want: []string{`"centos-*" in from is not a package name`}},
		{name: "versioned name", mutate: func(m map[string]any) {
			m["packages"] = append(pkgs(m), entry("rename", []any{"x"}, []any{"y >= 2"}))
		}, want: []string{`"y >= 2" in to is not a package name`}},
		{name: "rename of two", mutate: func(m map[string]any) {
			m["packages"] = append(pkgs(m), entry("rename", []any{"x", "z"}, []any{"y"}))
		}, want: []string{"a rename maps one package to one (from has 2, to has 1)"}},
		{name: "split into one", mutate: func(m map[string]any) {
			m["packages"] = append(pkgs(m), entry("split", []any{"x"}, []any{"y"}))
		}, want: []string{"a split maps one package to two or more"}},
		{name: "merge of one", mutate: func(m map[string]any) {
			m["packages"] = append(pkgs(m), entry("merge", []any{"x"}, []any{"y"}))
		}, want: []string{"a merge maps two or more packages to one"}},
		{name: "remove with a replacement", mutate: func(m map[string]any) {
			e := entry("remove", []any{"x"}, []any{"y"})
			e["reason"] = "r"
			m["packages"] = append(pkgs(m), e)
		}, want: []string{"a removal names packages in from and nothing in to"}},
		{name: "remove without reason", mutate: func(m map[string]any) {
			m["packages"] = append(pkgs(m), entry("remove", []any{"x"}, nil))
		}, want: []string{"a removal needs a reason"}},
		{name: "duplicate within an entry", mutate: func(m map[string]any) {
			m["packages"] = append(pkgs(m), entry("merge", []any{"x", "x"}, []any{"y"}))
		}, want: []string{"x appears twice in from"}},
		{name: "package mapped twice", mutate: func(m map[string]any) {
			m["packages"] = append(pkgs(m), entry("rename", []any{"centos-logos"}, []any{"other-logos"}))
		}, want: []string{"centos-logos is mapped twice (also in packages[0]"}},
		{name: "release package mapped again", mutate: func(m map[string]any) {
			e := entry("remove", []any{"centos-repos"}, nil)
			e["reason"] = "r"
			m["packages"] = append(pkgs(m), e)
		}, want: []string{"centos-repos is mapped twice (also in release)"}},
		{name: "two entries with one target", mutate: func(m map[string]any) {
			m["packages"] = append(pkgs(m), entry("rename", []any{"libc2"}, []any{"libab"}))
		}, want: []string{"libab is the target of two entries"}},
		{name: "self rename", mutate: func(m map[string]any) {
			m["packages"] = append(pkgs(m), entry("rename", []any{"x"}, []any{"x"}))
		}, want: []string{"cycle: x → x"}},
		{name: "cycle", mutate: func(m map[string]any) {
			m["packages"] = append(pkgs(m), entry("rename", []any{"a"}, []any{"b"}), entry("rename", []any{"b"}, []any{"a"}))
		}, want: []string{"cycle: a → b → a", "cycle: b → a → b"}},
		{name: "chain", mutate: func(m map[string]any) {
			m["packages"] = append(pkgs(m), entry("rename", []any{"a"}, []any{"b"}), entry("rename", []any{"b"}, []any{"c"}))
		}, want: []string{"chain: b is a replacement (packages[4] (rename a)) and is itself replaced (packages[5] (rename b))"}},
		{name: "release without target", mutate: func(m map[string]any) {
			m["release"] = map[string]any{"from": []any{"centos-release"}}
		}, want: []string{"release: needs the source's release packages in from and the target's in to"}},
		{name: "no source", mutate: func(m map[string]any) { m["source"] = map[string]any{} }, want: []string{"source.ids is empty", "source.versions is empty"}},
		{name: "bad source version", mutate: func(m map[string]any) {
			m["source"] = map[string]any{"ids": []any{"CentOS"}, "versions": []any{"8.5"}}
		}, want: []string{`source.ids: "CentOS" is not an os-release ID`, `source.versions: "8.5" is not a major version number`}},
		{name: "no target el", mutate: func(m map[string]any) { m["target"] = map[string]any{"id": "kos"} }, want: []string{"target.el must be"}},
		{name: "duplicate repo", mutate: func(m map[string]any) {
			m["repos"] = append(m["repos"].([]any), map[string]any{"id": "kos", "baseurl": "x"})
		}, want: []string{"repository kos is listed twice"}},
		{name: "repo without baseurl", mutate: func(m map[string]any) {
			m["repos"] = []any{map[string]any{"id": "kos"}}
		}, want: []string{"repos[0]: no baseurl"}},
		{name: "every problem at once", mutate: func(m map[string]any) {
			m["packages"] = append(pkgs(m), entry("nope", []any{"x"}, nil), entry("rename", []any{""}, []any{"y"}))
		}, want: []string{`unknown kind "nope"`, "an empty package name"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := []byte(tc.raw)
			if tc.raw == "" {
				m := base()
				if tc.mutate != nil {
					tc.mutate(m)
				}
				b = encode(t, m)
			}
			m, err := Parse(b, "test.json")
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if m.SHA256 == "" || m.Origin != "test.json" {
					t.Errorf("origin %q sha256 %q", m.Origin, m.SHA256)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Parse: %v, want a ValidationError", err)
			}
			if !strings.Contains(err.Error(), "test.json") {
				t.Errorf("error does not name the file: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
		})
	}
}

// The built-in maps are valid and cover what the docs say.
func TestBuiltinMaps(t *testing.T) {
	names := Builtin()
	if len(names) == 0 {
		t.Fatal("no built-in map")
	}
	for _, n := range names {
		b, err := BuiltinFile(n)
		if err != nil {
			t.Fatal(err)
		}
		m, err := Parse(b, n)
		if err != nil {
			t.Fatalf("built-in map %s: %v", n, err)
		}
		if FileName(m.Source.IDs[0], m.Target.ID) != n {
			t.Errorf("%s is named %s", n, FileName(m.Source.IDs[0], m.Target.ID))
		}
	}
	t.Setenv(DirEnv, t.TempDir())
	m, err := Find("centos", "kos")
	if err != nil {
		t.Fatal(err)
	}
	if m.Origin != "built-in:centos-to-kos.json" || m.Target.EL != 8 || !m.Covers("centos") || m.Covers("kos") {
		t.Errorf("centos map: origin %s, target %+v", m.Origin, m.Target)
	}
	for _, want := range []string{"centos-release", "centos-linux-release", "centos-stream-release", "centos-repos", "centos-gpg-keys"} {
		found := false
		for _, f := range m.Release.From {
			found = found || f == want
		}
		if !found {
			t.Errorf("the release swap does not replace %s", want)
		}
	}
	if _, err := Find("ubuntu", "kos"); !errors.Is(err, ErrNoMap) || !strings.Contains(err.Error(), "centos-to-kos.json") {
		t.Errorf("Find(ubuntu): %v", err)
	}
}

// An installed map wins over the built-in one.
func TestFindPrefersInstalled(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(DirEnv, dir)
	m := base()
	m["name"] = "installed"
	if err := os.WriteFile(filepath.Join(dir, "centos-to-kos.json"), encode(t, m), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Find("centos", "kos")
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "installed" || got.Origin != filepath.Join(dir, "centos-to-kos.json") {
		t.Errorf("Find: %s from %s", got.Name, got.Origin)
	}
	// A broken installed map is an error, not a silent fallback.
	os.WriteFile(filepath.Join(dir, "centos-to-kos.json"), []byte("{"), 0o644)
	if _, err := Find("centos", "kos"); err == nil || errors.Is(err, ErrNoMap) {
		t.Errorf("Find with a broken installed map: %v", err)
	}
}

func TestRequestAndApplies(t *testing.T) {
	m, err := Parse(encode(t, base()), "t")
	if err != nil {
		t.Fatal(err)
	}
	r := m.Request()
	if len(r.Swaps) != 5 || r.Swaps[0].Kind != KindRelease || !r.Swaps[0].Required || r.Swaps[1].Required {
		t.Fatalf("request: %+v", r.Swaps)
	}
	if r.Swaps[1].Reason != "renamed to kos-logos in KeyarchOS" || r.Swaps[4].Reason != "gone" {
		t.Errorf("reasons: %q, %q", r.Swaps[1].Reason, r.Swaps[4].Reason)
	}
	got := m.Applies([]string{"centos-release", "liba", "bash", "toolsuite"})
	want := []pkgmgr.Swap{
		{Kind: KindRelease, From: []string{"centos-release"}, To: []string{"kos-release"}, Reason: "release package of the source distribution, replaced by kos-release", Required: true},
		{Kind: KindSplit, From: []string{"toolsuite"}, To: []string{"toolsuite-core", "toolsuite-extra"}, Reason: "split into toolsuite-core and toolsuite-extra in KeyarchOS"},
		{Kind: KindMerge, From: []string{"liba"}, To: []string{"libab"}, Reason: "merged into libab in KeyarchOS"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Applies:\n got %+v\nwant %+v", got, want)
	}
	if repos := m.PkgRepos(); len(repos) != 1 || repos[0].GPGKey[0] != "file:///k" {
		t.Errorf("repos: %+v", repos)
	}
}
