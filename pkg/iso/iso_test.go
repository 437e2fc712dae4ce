package iso_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"math/rand"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/iso"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

func makeISO(t *testing.T, opts fixture.ISOOptions) string {
	t.Helper()
	testenv.RequireTools(t, fixture.ISOTools...)
	out := filepath.Join(t.TempDir(), "image.iso")
	if err := fixture.MakeISO(context.Background(), out, opts); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestOpen(t *testing.T) {
	set := fixture.MustBuild(t)
	repo := set.Repos[fixture.Repo59]
	for _, tc := range []struct {
		name      string
		opts      fixture.ISOOptions
		wantRepos []string
		wantRel   string
	}{
		{name: "rock ridge and joliet, treeinfo", wantRepos: []string{"AppStream", "BaseOS"}, wantRel: "5.9",
			opts: fixture.ISOOptions{Label: "KOS-5.9-x86_64", Release: "5.9", Dirs: map[string]string{"BaseOS": repo, "AppStream": set.Repos[fixture.Repo59Kernel]}}},
		{name: "joliet only", wantRepos: []string{"BaseOS"}, wantRel: "5.9",
			opts: fixture.ISOOptions{Label: "KOS", Release: "5.9", NoRockRidge: true, Dirs: map[string]string{"BaseOS": repo}}},
		{name: "rock ridge only, repository at the top, no treeinfo", wantRepos: []string{"."},
			opts: fixture.ISOOptions{Label: "BUNDLE", NoJoliet: true, Dirs: map[string]string{".": repo}}},
		{name: "nested", wantRepos: []string{"a/b/c"},
			opts: fixture.ISOOptions{Label: "DEEP", Dirs: map[string]string{"a/b/c": repo}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := makeISO(t, tc.opts)
			im, err := iso.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			if im.Label() != tc.opts.Label {
				t.Errorf("label %q, want %q", im.Label(), tc.opts.Label)
			}
			var dirs []string
			for _, r := range im.Repos() {
				dirs = append(dirs, r.Dir)
			}
			if !reflect.DeepEqual(dirs, tc.wantRepos) {
				t.Errorf("repositories %v, want %v", dirs, tc.wantRepos)
			}
			got := ""
			if im.Release() != nil {
				got = im.Release().Version
			}
			if got != tc.wantRel {
				t.Errorf("release %q, want %q", got, tc.wantRel)
			}
			ref := im.Ref()
			if len(ref.VolumeSHA256) != 64 || ref.Size == 0 || ref.Path != p {
				t.Errorf("ref %+v", ref)
			}
			// Every package reads back byte for byte, by its full name.
			pkgs, err := set.Packages(fixture.Repo59)
			if err != nil {
				t.Fatal(err)
			}
			for _, pkg := range pkgs {
				want, _ := os.ReadFile(pkg)
				r, _, err := im.OpenFile(filepath.Join(tc.wantRepos[len(tc.wantRepos)-1], "Packages", filepath.Base(pkg)))
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(r)
				if !bytes.Equal(got, want) {
					t.Errorf("%s: read %d bytes, differ from the file (%d bytes)", pkg, len(got), len(want))
				}
			}
		})
	}
}

func TestOpenRefusals(t *testing.T) {
	set := fixture.MustBuild(t)
	dir := t.TempDir()
	notISO := filepath.Join(dir, "not.iso")
	os.WriteFile(notISO, bytes.Repeat([]byte("x"), 64<<10), 0o644)
	short := filepath.Join(dir, "short.iso")
	os.WriteFile(short, []byte("tiny"), 0o644)
	noRepo := makeISO(t, fixture.ISOOptions{Label: "EMPTY", Dirs: map[string]string{"docs": filepath.Join(set.Dir, "keys")}})
	for _, tc := range []struct {
		name string
		path string
		want error
		text string
	}{
		{name: "not an ISO", path: notISO, want: iso.ErrNotISO},
		{name: "too short", path: short, want: iso.ErrNotISO},
		{name: "no repository", path: noRepo, want: iso.ErrNoRepo},
		{name: "a directory", path: dir, text: "not a regular file"},
		{name: "relative", path: "image.iso", text: "not an absolute path"},
		{name: "missing", path: filepath.Join(dir, "missing.iso"), want: os.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im, err := iso.Open(tc.path)
			if err == nil {
				im.Close()
				t.Fatal("opened")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.text) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q: want one line containing %q", err, tc.text)
			}
		})
	}
}

func TestServe(t *testing.T) {
	set := fixture.MustBuild(t)
	p := makeISO(t, fixture.ISOOptions{Label: "KOS", Release: "5.9", Dirs: map[string]string{"BaseOS": set.Repos[fixture.Repo59]}})
	im, err := iso.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	s, err := iso.Serve([]*iso.Image{im})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want, _ := os.ReadFile(filepath.Join(set.Repos[fixture.Repo59], "repodata/repomd.xml"))
	get := func(url string) (int, []byte) {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	before := im.BytesRead()
	if code, b := get(s.RepoURL(0, "BaseOS") + "repodata/repomd.xml"); code != 200 || !bytes.Equal(b, want) {
		t.Errorf("repomd.xml: %d, %d bytes (sha %x), want %d bytes", code, len(b), sha256.Sum256(b), len(want))
	}
	if n := im.BytesRead() - before; n < int64(len(want)) || n > int64(len(want))+64<<10 {
		t.Errorf("serving %d bytes read %d bytes of the image", len(want), n)
	}
	for _, bad := range []string{
		s.RepoURL(0, "BaseOS") + "repodata/missing.xml",
		s.RepoURL(1, "BaseOS") + "repodata/repomd.xml",
		s.RepoURL(0, "BaseOS") + "../../etc/passwd",
		s.RepoURL(0, "BaseOS"),
		s.URL[:strings.LastIndex(s.URL[:len(s.URL)-1], "/")] + "/0123456789abcdef0123456789abcdef/0/BaseOS/repodata/repomd.xml", // wrong token
	} {
		if code, _ := get(bad); code != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", bad, code)
		}
	}
	if err := s.Close(); err != nil {
		t.Error(err)
	}
	if _, err := http.Get(s.URL); err == nil {
		t.Error("server still answers after Close")
	}
}

// TestMultiExtentRefused: go-diskfs lists a file stored in several extents
// (ISO 9660's way for files over 4 GiB) as several records of one name and
// reads only the first. Two records of one name, made here by renaming a
// second file's Rock Ridge name in the image, are refused by name, and the
// server answers 500 and records why.
func TestMultiExtentRefused(t *testing.T) {
	set := fixture.MustBuild(t)
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "repodata"), 0o755)
	os.MkdirAll(filepath.Join(tree, "Packages"), 0o755)
	b, _ := os.ReadFile(filepath.Join(set.Repos[fixture.Repo59], "repodata", "repomd.xml"))
	os.WriteFile(filepath.Join(tree, "repodata", "repomd.xml"), b, 0o644)
	os.WriteFile(filepath.Join(tree, "Packages", "big-1.0-1.noarch.rpm"), bytes.Repeat([]byte("a"), 5000), 0o644)
	os.WriteFile(filepath.Join(tree, "Packages", "big-1.0-2.noarch.rpm"), bytes.Repeat([]byte("b"), 5000), 0o644)
	p := makeISO(t, fixture.ISOOptions{Label: "BIG", Release: "5.9", NoJoliet: true, Dirs: map[string]string{".": tree}})
	img, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	second := []byte("big-1.0-2.noarch.rpm")
	if bytes.Count(img, second) != 1 {
		t.Fatalf("the Rock Ridge name occurs %d times in the image, want 1", bytes.Count(img, second))
	}
	copy(img[bytes.Index(img, second):], "big-1.0-1.noarch.rpm")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	im, err := iso.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	_, _, err = im.OpenFile("Packages/big-1.0-1.noarch.rpm")
	if !errors.Is(err, iso.ErrUnsupported) || !strings.Contains(err.Error(), "stored in 2 extents (a file over 4 GiB)") {
		t.Fatalf("open: %v, want ErrUnsupported naming the extents", err)
	}
	s, err := iso.Serve([]*iso.Image{im})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	resp, err := http.Get(s.RepoURL(0, ".") + "Packages/big-1.0-1.noarch.rpm")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError || len(s.Problems()) != 1 || !strings.Contains(s.Problems()[0], "big-1.0-1.noarch.rpm") {
		t.Errorf("served %d, problems %v", resp.StatusCode, s.Problems())
	}
}

// TestDamagedImages: bytes changed in the volume descriptors and directory
// records (a fixed seed) give an error or a readable image, never a panic
// or a hang.
func TestDamagedImages(t *testing.T) {
	set := fixture.MustBuild(t)
	p := makeISO(t, fixture.ISOOptions{Label: "KOS", Release: "5.9", Dirs: map[string]string{"BaseOS": set.Repos[fixture.Repo59]}})
	orig, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(17))
	bad := filepath.Join(t.TempDir(), "bad.iso")
	refused := 0
	for i := 0; i < 300; i++ {
		img := append([]byte(nil), orig...)
		for j := 0; j < 1+rng.Intn(16); j++ {
			img[16*2048+rng.Intn(24*2048)] = byte(rng.Intn(256))
		}
		if err := os.WriteFile(bad, img, 0o644); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			im, err := iso.Open(bad)
			if err == nil {
				for _, r := range im.Repos() {
					im.ReadFile(path.Join(r.Dir, "repodata/repomd.xml"), 1<<20)
				}
				im.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				refused++
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("case %d: the image reader hangs", i)
		}
	}
	t.Logf("%d of 300 damaged images refused", refused)
}

// TestFullExtentRefused: a record of 4 GiB - 2 KiB (the first extent of a
// larger file, made here by patching a record's size) is refused, not read
// as a whole file.
func TestFullExtentRefused(t *testing.T) {
	set := fixture.MustBuild(t)
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "repodata"), 0o755)
	b, _ := os.ReadFile(filepath.Join(set.Repos[fixture.Repo59], "repodata", "repomd.xml"))
	os.WriteFile(filepath.Join(tree, "repodata", "repomd.xml"), b, 0o644)
	content := bytes.Repeat([]byte("z"), 3000)
	os.WriteFile(filepath.Join(tree, "huge.img"), content, 0o644)
	p := makeISO(t, fixture.ISOOptions{Label: "HUGE", Release: "5.9", Dirs: map[string]string{".": tree}})
	img, _ := os.ReadFile(p)
	off := bytes.Index(img, content)
	if off < 0 || off%2048 != 0 {
		t.Fatalf("file data at %d", off)
	}
	loc := make([]byte, 8)
	binary.LittleEndian.PutUint32(loc, uint32(off/2048))
	binary.BigEndian.PutUint32(loc[4:], uint32(off/2048))
	rec := bytes.Index(img, loc) - 2
	if rec < 0 || binary.LittleEndian.Uint32(img[rec+10:]) != 3000 {
		t.Fatalf("no directory record for the file (at %d)", rec)
	}
	binary.LittleEndian.PutUint32(img[rec+10:], 1<<32-2048)
	binary.BigEndian.PutUint32(img[rec+14:], 1<<32-2048)
	os.WriteFile(p, img, 0o644)
	im, err := iso.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if _, _, err := im.OpenFile("huge.img"); !errors.Is(err, iso.ErrUnsupported) || !strings.Contains(err.Error(), "first part of a file over 4 GiB") {
		t.Errorf("open: %v, want ErrUnsupported", err)
	}
}

// TestContinuationLoop: a Rock Ridge continuation area (SUSP "CE") whose
// last entry continues in itself makes go-diskfs loop for ever; the image
// is refused with ErrDamaged instead. The loop is made by patching the
// continuation area of the root directory's record (where xorriso puts
// the "ER" entry) into a CE pointing at itself, with and without entries
// before it (a loop that grows the entry list).
func TestContinuationLoop(t *testing.T) {
	set := fixture.MustBuild(t)
	p := makeISO(t, fixture.ISOOptions{Label: "LOOP", Release: "5.9", NoJoliet: true, Dirs: map[string]string{".": set.Repos[fixture.Repo59]}})
	orig, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	ce := bytes.Index(orig, []byte("CE\x1c\x01"))
	if ce < 0 {
		t.Fatal("no continuation entry in the image")
	}
	area := int(binary.LittleEndian.Uint32(orig[ce+4:]))*2048 + int(binary.LittleEndian.Uint32(orig[ce+12:]))
	if area+64 > len(orig) {
		t.Fatalf("continuation area at %d, outside the image", area)
	}
	for _, tc := range []struct {
		name   string
		before int // bytes of an unknown SUSP entry before the looping CE
	}{
		{name: "CE continuing in itself", before: 0},
		{name: "entries and a CE continuing in their area", before: 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := append([]byte(nil), orig...)
			b := img[area:]
			if tc.before > 0 {
				copy(b, "ZZ")
				b[2], b[3] = byte(tc.before), 1
				b = b[tc.before:]
			}
			copy(b, "CE\x1c\x01")
			loc, off, n := uint32(area/2048), uint32(area%2048), uint32(tc.before+28)
			binary.LittleEndian.PutUint32(b[4:], loc)
			binary.BigEndian.PutUint32(b[8:], loc)
			binary.LittleEndian.PutUint32(b[12:], off)
			binary.BigEndian.PutUint32(b[16:], off)
			binary.LittleEndian.PutUint32(b[20:], n)
			binary.BigEndian.PutUint32(b[24:], n)
			// The directory record's CE now continues in the loop.
			binary.LittleEndian.PutUint32(img[ce+20:], n)
			binary.BigEndian.PutUint32(img[ce+24:], n)
			bad := filepath.Join(t.TempDir(), "loop.iso")
			if err := os.WriteFile(bad, img, 0o644); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				im, err := iso.Open(bad)
				if err == nil {
					im.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, iso.ErrDamaged) || !strings.Contains(err.Error(), "continuation") {
					t.Fatalf("Open: %v, want ErrDamaged about the continuation areas", err)
				}
				if strings.Count(err.Error(), iso.ErrDamaged.Error()) != 1 {
					t.Errorf("Open: %q says %q more than once", err, iso.ErrDamaged)
				}
			case <-time.After(60 * time.Second):
				t.Fatal("the image reader hangs")
			}
		})
	}
}

// TestHugeSizesRefused: sizes go-diskfs allocates before it reads (a path
// table's, a directory's, as the volume descriptors and the parent's record
// give them) are checked first: an image claiming gigabytes is refused as
// damaged without allocating them. Found by FuzzOpen (a subdirectory record
// of 3 GB made the reader allocate and clear it on every lookup).
func TestHugeSizesRefused(t *testing.T) {
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "repodata"), 0o755)
	os.WriteFile(filepath.Join(tree, "repodata", "repomd.xml"), []byte("<repomd/>\n"), 0o644)
	p := makeISO(t, fixture.ISOOptions{Label: "HUGE", Release: "5.9", Dirs: map[string]string{"BaseOS": tree}})
	orig, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	const pvd, svd = 16 * 2048, 17 * 2048
	if orig[pvd] != 1 || orig[svd] != 2 {
		t.Fatalf("volume descriptors %d, %d: want primary, then Joliet", orig[pvd], orig[svd])
	}
	put := func(img []byte, off int, v uint32) {
		binary.LittleEndian.PutUint32(img[off:], v)
		binary.BigEndian.PutUint32(img[off+4:], v)
	}
	// The record of REPODATA in BASEOS (the primary tree).
	rec := bytes.Index(orig, []byte("REPODATA"))
	if rec < 33 {
		t.Fatal("no REPODATA record")
	}
	rec -= 33
	for _, tc := range []struct {
		name  string
		patch func(img []byte)
		want  string
	}{
		{name: "primary path table of 4 GiB", patch: func(img []byte) { put(img, pvd+132, 0xfffff000) }, want: "the path table"},
		{name: "Joliet path table of 4 GiB", patch: func(img []byte) { put(img, svd+132, 0xfffff000) }, want: "the path table"},
		{name: "root directory of 3 GB", patch: func(img []byte) { put(img, pvd+156+10, 3_000_000_000) }, want: "a directory"},
		{name: "subdirectory of 3 GB in its parent's record", patch: func(img []byte) { put(img, rec+10, 3_000_000_000) }, want: "a directory"},
		{name: "subdirectory outside the image", patch: func(img []byte) { put(img, rec+2, 0x7fffffff) }, want: "outside the image"},
		// A record that ends with its even-length name, without the
		// padding byte: no system use area, no panic.
		{name: "record ending with an even-length name", patch: func(img []byte) { img[rec] = 33 + 8 }, want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := append([]byte(nil), orig...)
			tc.patch(img)
			bad := filepath.Join(t.TempDir(), "huge.iso")
			if err := os.WriteFile(bad, img, 0o644); err != nil {
				t.Fatal(err)
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			im, err := iso.Open(bad)
			runtime.ReadMemStats(&after)
			if err == nil {
				im.Close()
			}
			if tc.want != "" && (!errors.Is(err, iso.ErrDamaged) || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Open: %v, want ErrDamaged about %s", err, tc.want)
			}
			if d := after.TotalAlloc - before.TotalAlloc; d > 64<<20 {
				t.Errorf("Open allocated %d MiB", d>>20)
			}
		})
	}
}
