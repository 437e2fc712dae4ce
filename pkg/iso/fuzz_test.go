package iso_test

import (
	"bytes"
	"context"
	"os"
	"path"
	"path/filepath"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/iso"
	"github.com/keyarchos/kos-upgrade/test/fixture"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// FuzzOpen: any image opens or is refused without a panic or a hang, and
// what opens reads its repositories' repomd.xml or says why not. The images
// are a small xorriso image (Rock Ridge, Joliet, a repository, a .treeinfo)
// with bytes of its volume descriptors and directories replaced: the fuzzer
// picks where (off) and what (patch, at most 64 bytes).
func FuzzOpen(f *testing.F) {
	testenv.RequireTools(f, fixture.ISOTools...)
	tree := f.TempDir()
	os.MkdirAll(filepath.Join(tree, "repodata"), 0o755)
	os.WriteFile(filepath.Join(tree, "repodata", "repomd.xml"), []byte("<repomd/>\n"), 0o644)
	os.MkdirAll(filepath.Join(tree, "Packages"), 0o755)
	os.WriteFile(filepath.Join(tree, "Packages", "a-1.0-1.noarch.rpm"), []byte("rpm"), 0o644)
	seed := filepath.Join(f.TempDir(), "seed.iso")
	if err := fixture.MakeISO(context.Background(), seed, fixture.ISOOptions{Label: "FUZZ", Release: "5.9", Dirs: map[string]string{"BaseOS": tree}}); err != nil {
		f.Fatal(err)
	}
	orig, err := os.ReadFile(seed)
	if err != nil {
		f.Fatal(err)
	}
	// The metadata: from the volume descriptors to the first file data.
	const meta = 16 * 2048
	end := bytes.Index(orig, []byte("<repomd/>"))
	if i := bytes.Index(orig, []byte("[header]")); i >= 0 && i < end {
		end = i
	}
	if end <= meta {
		f.Fatalf("no file data after the metadata (at %d)", end)
	}
	f.Add(uint32(0), []byte{})
	f.Add(uint32(156), []byte{0xff, 0xff, 0xff, 0x7f})                  // the root directory record's extent
	f.Add(uint32(2048+132), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}) // the Joliet path table
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, off uint32, patch []byte) {
		if len(patch) > 64 {
			patch = patch[:64]
		}
		img := append([]byte(nil), orig...)
		copy(img[meta+int(off%uint32(end-meta)):end], patch)
		p := filepath.Join(dir, "image.iso")
		if err := os.WriteFile(p, img, 0o600); err != nil {
			t.Fatal(err)
		}
		im, err := iso.Open(p)
		if err != nil {
			return
		}
		defer im.Close()
		for _, r := range im.Repos() {
			_, _ = im.ReadFile(path.Join(r.Dir, "repodata/repomd.xml"), 1<<20)
			_, _, _ = im.OpenFile(path.Join(r.Dir, "Packages/a-1.0-1.noarch.rpm"))
		}
		_ = im.Describe()
	})
}
