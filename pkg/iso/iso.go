// Package iso reads ISO 9660 images in user space (github.com/diskfs/go-diskfs:
// no loop device, no mount): it finds the package repositories on an image
// (every directory with repodata/repomd.xml), the release and variants its
// .treeinfo or .discinfo names, and serves the image's files to dnf over a
// loopback HTTP server for the time of a prepare, so that dnf loads the
// metadata and downloads (and checks) only the packages the transaction needs,
// exactly as from a network repository (docs/iso.md).
//
// What go-diskfs cannot read correctly is refused, never truncated: files
// stored in several extents (over 4 GiB), files with an extended attribute
// record, logical blocks other than 2048 bytes. Rock Ridge names are used
// when the image has them, else Joliet names.
package iso

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
)

// Sentinel errors, wrapped with %w.
var (
	// ErrNotISO: the file is not an ISO 9660 image.
	ErrNotISO = errors.New("not an ISO 9660 image")
	// ErrNoRepo: the image holds no directory with repodata/repomd.xml.
	ErrNoRepo = errors.New("no package repository on the image")
	// ErrUnsupported: the image uses what go-diskfs cannot read correctly
	// (a file in several extents, that is over 4 GiB; an extended
	// attribute record; a logical block size other than 2048).
	ErrUnsupported = errors.New("cannot be read correctly in user space")
	// ErrDamaged: the image's structures point outside the file.
	ErrDamaged = errors.New("damaged image")
)

const (
	blockSize = 2048
	// vdStart is where the volume descriptor set begins (after the 32 KiB
	// system area).
	vdStart = 16 * blockSize
	// maxDepth bounds the search for repositories: "/", "/BaseOS",
	// "/a/b" and "/a/b/c" are searched.
	maxDepth = 3
	// maxExtent is the size from which a file record may be one extent
	// of a larger file: mkisofs and xorriso split at 4 GiB - 2 KiB.
	maxExtent = 1<<32 - blockSize
	// maxVDs bounds the volume descriptor set.
	maxVDs = 64
)

// Release is what the image says it holds (.treeinfo, else .discinfo).
type Release struct {
	// Name is the product name, e.g. "KOS".
	Name string `json:"name,omitempty"`
	// Version is the release version, e.g. "5.9".
	Version string `json:"version,omitempty"`
	// Arch is the architecture the image is for, when it says.
	Arch string `json:"arch,omitempty"`
	// Variants are the variants (.treeinfo), e.g. BaseOS, AppStream.
	Variants []string `json:"variants,omitempty"`
}

// Repo is one repository found on the image.
type Repo struct {
	// Dir is the repository's directory on the image, "." for the top.
	Dir string `json:"dir"`
	// Signed says whether repodata/repomd.xml.asc is present.
	Signed bool `json:"signed,omitempty"`
}

// Ref identifies an image in a plan.
type Ref struct {
	Path  string `json:"path"`
	Size  int64  `json:"size"`
	Label string `json:"label,omitempty"`
	// VolumeSHA256 is the sha256 of the volume descriptor set (labels,
	// creation time, volume size, root directory): it tells two images
	// apart without reading gigabytes.
	VolumeSHA256 string   `json:"volume_sha256"`
	Release      *Release `json:"release,omitempty"`
	// Repos are the repositories' directories on the image.
	Repos []string `json:"repos"`
}

var repoIDUnsafe = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// RepoID names repository dir of the i-th image of a prepare, for dnf:
// iso0-BaseOS, iso1-top (the image's top directory).
func RepoID(i int, dir string) string {
	name := "top"
	if dir != "." {
		name = repoIDUnsafe.ReplaceAllString(strings.Trim(dir, "/"), "-")
	}
	return fmt.Sprintf("iso%d-%s", i, name)
}

// Image is an opened ISO 9660 image. Its methods may be called from several
// goroutines.
type Image struct {
	path  string
	f     *os.File
	size  int64
	fs    *iso9660.FileSystem
	label string
	vdSum string
	rel   *Release
	repos []Repo
	read  atomic.Int64 // bytes read from the image

	mu     sync.Mutex
	dirs   map[string][]fs.DirEntry // directory listings read so far
	budget readBudget               // of the go-diskfs call running (under mu)
	trees  [][]byte                 // the primary and supplementary volume descriptors
}

// Open opens the image at path (an absolute path to a regular file), reads
// its volume descriptors, finds its repositories and its release. It refuses
// a file that is not an ISO 9660 image (ErrNotISO), an image without
// repository (ErrNoRepo) and what cannot be read correctly (ErrUnsupported,
// ErrDamaged).
func Open(p string) (*Image, error) {
	if !filepath.IsAbs(p) {
		return nil, fmt.Errorf("cannot use image %q: not an absolute path", p)
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("cannot open image: %w", err)
	}
	im := &Image{path: p, f: f, dirs: map[string][]fs.DirEntry{}}
	if err := im.init(); err != nil {
		f.Close()
		return nil, fmt.Errorf("cannot use image %s: %w", p, err)
	}
	return im, nil
}

func (im *Image) init() error {
	st, err := im.f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%w: not a regular file", ErrNotISO)
	}
	im.size = st.Size()
	if err := im.readVDs(); err != nil {
		return err
	}
	if err := im.guard(im.checkTrees); err != nil { // guard: a slip of the check is an error too
		return err
	}
	if err := im.guard(func() error {
		fsys, err := iso9660.Read(file.New(budgetFile{countingFile{im.f, &im.read}, &im.budget}, true), im.size, 0, blockSize)
		if err != nil {
			return err
		}
		im.fs = fsys
		return nil
	}); err != nil {
		if errors.Is(err, ErrDamaged) {
			return err
		}
		return fmt.Errorf("%w: %v", ErrDamaged, err)
	}
	im.label = strings.TrimSpace(im.fs.Label())
	im.rel = im.release()
	repos, err := im.findRepos(".", 0)
	if err != nil {
		return err
	}
	if len(repos) == 0 {
		return fmt.Errorf("%w (no directory with repodata/repomd.xml)", ErrNoRepo)
	}
	im.repos = repos
	return nil
}

// readVDs checks the volume descriptor set and hashes it.
func (im *Image) readVDs() error {
	h := sha256.New()
	b := make([]byte, blockSize)
	primary := false
	for i := 0; ; i++ {
		if i == maxVDs {
			return fmt.Errorf("%w: no volume descriptor set terminator", ErrDamaged)
		}
		n, err := im.readAt(b, vdStart+int64(i)*blockSize)
		if n < len(b) || (err != nil && !errors.Is(err, io.EOF)) {
			if i == 0 {
				return ErrNotISO
			}
			return fmt.Errorf("%w: truncated volume descriptors", ErrDamaged)
		}
		if !bytes.Equal(b[1:6], []byte("CD001")) {
			if i == 0 {
				return ErrNotISO
			}
			return fmt.Errorf("%w: volume descriptor %d has no CD001 signature", ErrDamaged, i)
		}
		h.Write(b)
		if b[0] == 1 || b[0] == 2 { // primary, supplementary (Joliet)
			im.trees = append(im.trees, append([]byte(nil), b...))
		}
		switch b[0] {
		case 1: // primary
			primary = true
			if bs := int(b[128]) | int(b[129])<<8; bs != blockSize {
				return fmt.Errorf("%w: logical block size %d (only %d is read)", ErrUnsupported, bs, blockSize)
			}
		case 255: // terminator
			if !primary {
				return fmt.Errorf("%w: no primary volume descriptor", ErrNotISO)
			}
			im.vdSum = hex.EncodeToString(h.Sum(nil))
			return nil
		}
	}
}

func (im *Image) readAt(b []byte, off int64) (int, error) {
	n, err := im.f.ReadAt(b, off)
	im.read.Add(int64(n))
	return n, err
}

// Close closes the image.
func (im *Image) Close() error { return im.f.Close() }

// Path returns the image's path.
func (im *Image) Path() string { return im.path }

// Label returns the volume label.
func (im *Image) Label() string { return im.label }

// Release returns what .treeinfo or .discinfo say, nil without either.
func (im *Image) Release() *Release { return im.rel }

// Repos returns the repositories on the image, sorted by directory.
func (im *Image) Repos() []Repo { return append([]Repo(nil), im.repos...) }

// BytesRead returns how many bytes were read from the image so far.
func (im *Image) BytesRead() int64 { return im.read.Load() }

// Ref returns the image's identity for a plan.
func (im *Image) Ref() Ref {
	r := Ref{Path: im.path, Size: im.size, Label: im.label, VolumeSHA256: im.vdSum, Release: im.rel}
	for _, rp := range im.repos {
		r.Repos = append(r.Repos, rp.Dir)
	}
	return r
}

// Describe says in words what the image is: label, release and repositories.
func (im *Image) Describe() string {
	var parts []string
	if im.label != "" {
		parts = append(parts, "label "+im.label)
	}
	if im.rel != nil && im.rel.Version != "" {
		parts = append(parts, strings.TrimSpace(im.rel.Name+" "+im.rel.Version))
	}
	var dirs []string
	for _, r := range im.repos {
		dirs = append(dirs, "/"+strings.TrimPrefix(r.Dir, "."))
	}
	parts = append(parts, "repositories "+strings.Join(dirs, ", "))
	return fmt.Sprintf("image %s (%s)", im.path, strings.Join(parts, "; "))
}

// readDir lists an image directory (cached), refusing what cannot be read
// correctly.
func (im *Image) readDir(dir string) ([]fs.DirEntry, error) {
	im.mu.Lock()
	defer im.mu.Unlock()
	if ents, ok := im.dirs[dir]; ok {
		return ents, nil
	}
	var ents []fs.DirEntry
	if err := im.guard(func() error {
		var err error
		ents, err = im.fs.ReadDir(dir)
		return err
	}); err != nil {
		return nil, err
	}
	im.dirs[dir] = ents
	return ents, nil
}

// lookup finds the entry of a file or directory; name is a clean relative
// path ("BaseOS/Packages/a.rpm").
func (im *Image) lookup(name string) (fs.FileInfo, error) {
	if !fs.ValidPath(name) || name == "." {
		return nil, fs.ErrNotExist
	}
	ents, err := im.readDir(path.Dir(name))
	if err != nil {
		return nil, fs.ErrNotExist
	}
	var found []fs.FileInfo
	base := path.Base(name)
	// go-diskfs drops a leading and a trailing "." of file names
	// (".treeinfo" reads as "treeinfo").
	trimmed := strings.TrimSuffix(strings.TrimPrefix(base, "."), ".")
	for _, e := range ents {
		if e.Name() != base && (e.IsDir() || e.Name() != trimmed) {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, err
		}
		found = append(found, info)
	}
	switch {
	case len(found) == 0:
		return nil, fs.ErrNotExist
	case len(found) > 1 && !found[0].IsDir():
		// ISO 9660 stores a file over 4 GiB as several directory
		// records of the same name (multi-extent); go-diskfs reads
		// only the first.
		return nil, fmt.Errorf("%w: %s is stored in %d extents (a file over 4 GiB), which go-diskfs cannot read", ErrUnsupported, name, len(found))
	}
	return found[0], nil
}

// Open opens a regular file of the image for reading; name is a clean
// relative path.
func (im *Image) OpenFile(name string) (*io.SectionReader, int64, error) {
	info, err := im.lookup(name)
	if err != nil {
		return nil, 0, err
	}
	if !info.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("%s: not a regular file", name)
	}
	st, ok := info.Sys().(*iso9660.StatT)
	if !ok {
		return nil, 0, fmt.Errorf("%w: %s: no directory record", ErrDamaged, name)
	}
	if info.Size() >= maxExtent {
		// The first extent of a file over 4 GiB whose other records
		// do not carry its name: go-diskfs would read it alone.
		return nil, 0, fmt.Errorf("%w: %s fills a whole extent (%d bytes): it may be the first part of a file over 4 GiB, which go-diskfs cannot read", ErrUnsupported, name, info.Size())
	}
	if st.ExtAttrSize != 0 {
		return nil, 0, fmt.Errorf("%w: %s has an extended attribute record", ErrUnsupported, name)
	}
	off := int64(st.Location) * blockSize
	if off+info.Size() > im.size || off < vdStart {
		return nil, 0, fmt.Errorf("%w: %s lies outside the image", ErrDamaged, name)
	}
	return io.NewSectionReader(countingFile{im.f, &im.read}, off, info.Size()), info.Size(), nil
}

// ReadFile returns a small file of the image (at most limit bytes).
func (im *Image) ReadFile(name string, limit int64) ([]byte, error) {
	r, size, err := im.OpenFile(name)
	if err != nil {
		return nil, err
	}
	if size > limit {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d expected", name, size, limit)
	}
	return io.ReadAll(r)
}

// findRepos searches dir and its subdirectories (to maxDepth) for
// repodata/repomd.xml.
func (im *Image) findRepos(dir string, depth int) ([]Repo, error) {
	ents, err := im.readDir(dir)
	if err != nil {
		if dir == "." {
			return nil, fmt.Errorf("%w: cannot read the root directory: %v", ErrDamaged, err)
		}
		return nil, nil // an unreadable subdirectory holds no repository we can use
	}
	var out []Repo
	seen := map[string]bool{}
	for _, e := range ents {
		if !e.IsDir() || seen[e.Name()] {
			continue
		}
		seen[e.Name()] = true
		sub := path.Join(dir, e.Name())
		if e.Name() == "repodata" {
			if info, err := im.lookup(path.Join(sub, "repomd.xml")); err == nil && info.Mode().IsRegular() {
				_, aerr := im.lookup(path.Join(sub, "repomd.xml.asc"))
				out = append(out, Repo{Dir: dir, Signed: aerr == nil})
			}
			continue
		}
		switch e.Name() {
		case "Packages", "images", "isolinux", "EFI":
			continue // large or boot-only: never a repository's parent
		}
		if depth < maxDepth {
			sub, err := im.findRepos(sub, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, sub...)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dir < out[j].Dir })
	return out, nil
}

// release reads .treeinfo ([release] or [general] name/version, arch,
// variants), else .discinfo (timestamp, "NAME VERSION", arch).
func (im *Image) release() *Release {
	if b, err := im.ReadFile(".treeinfo", 1<<20); err == nil {
		if r := parseTreeinfo(string(b)); r.Version != "" {
			return r
		}
	}
	if b, err := im.ReadFile(".discinfo", 1<<16); err == nil {
		lines := strings.Split(string(b), "\n")
		if len(lines) >= 2 {
			r := &Release{}
			name := strings.TrimSpace(lines[1])
			if i := strings.LastIndexByte(name, ' '); i > 0 {
				r.Name, r.Version = name[:i], name[i+1:]
			} else {
				r.Version = name
			}
			if len(lines) >= 3 {
				r.Arch = strings.TrimSpace(lines[2])
			}
			if r.Version != "" {
				return r
			}
		}
	}
	return nil
}

// parseTreeinfo reads the INI format of .treeinfo (productmd): [release]
// name and version (else [general] family and version), [tree] arch (else
// [general] arch), [tree] variants (else [general] variants).
func parseTreeinfo(s string) *Release {
	sec := ""
	v := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' && strings.HasSuffix(line, "]") {
			sec = strings.TrimSpace(line[1 : len(line)-1])
			continue
		}
		k, val, ok := strings.Cut(line, "=")
		if ok {
			v[sec+"."+strings.TrimSpace(k)] = strings.TrimSpace(val)
		}
	}
	first := func(keys ...string) string {
		for _, k := range keys {
			if v[k] != "" {
				return v[k]
			}
		}
		return ""
	}
	r := &Release{
		Name:    first("release.name", "general.family"),
		Version: first("release.version", "general.version"),
		Arch:    first("tree.arch", "general.arch"),
	}
	r.Variants = strings.FieldsFunc(first("tree.variants", "general.variants"), func(r rune) bool { return r == ',' || r == ' ' })
	return r
}

// guard runs fn, a call into go-diskfs, with a fresh read budget, turning
// a panic of the image reader (a damaged image can make go-diskfs index out
// of range) into an error. The caller holds im.mu or is init.
func (im *Image) guard(fn func() error) (err error) {
	im.budget = readBudget{}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: the ISO 9660 reader failed: %v", ErrDamaged, r)
		}
	}()
	return fn()
}

// countingFile counts the bytes read through it.
type countingFile struct {
	*os.File
	n *atomic.Int64
}

func (c countingFile) ReadAt(b []byte, off int64) (int, error) {
	n, err := c.File.ReadAt(b, off)
	c.n.Add(int64(n))
	return n, err
}

func (c countingFile) Read(b []byte) (int, error) {
	n, err := c.File.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// Bounds of one call into go-diskfs (opening the image, listing one
// directory). go-diskfs follows Rock Ridge continuation areas (SUSP "CE")
// as long as the last entry of an area is another CE, so an area that
// continues in itself, or a cycle of them, makes it loop for ever: the
// reads it makes are counted and a call that reads the same bytes again and
// again, or far more than any directory needs, fails instead.
const (
	// maxRepeatedReads is how often one call may read the same bytes
	// (offset and length); a directory walk reads a directory at most a
	// few times.
	maxRepeatedReads = 16
	// maxCallReads bounds the reads of one call: one per directory record
	// with a continuation area, and a few for the directories.
	maxCallReads = 1 << 18
	// maxCallBytes bounds the bytes one call reads (a directory of 100,000
	// Rock Ridge entries is about 12 MiB).
	maxCallBytes = 256 << 20
)

// readBudget counts the reads of one call into go-diskfs.
type readBudget struct {
	reads int
	bytes int64
	seen  map[[2]int64]int // {offset, length} -> times read
}

// take accounts for reading n bytes at off, or says why it must not be
// done (go-diskfs keeps only the text of the error).
func (b *readBudget) take(off int64, n int) error {
	b.reads++
	b.bytes += int64(n)
	if b.seen == nil {
		b.seen = map[[2]int64]int{}
	}
	k := [2]int64{off, int64(n)}
	b.seen[k]++
	switch {
	case b.seen[k] > maxRepeatedReads:
		return fmt.Errorf("the same %d bytes at offset %d read %d times: the Rock Ridge continuation areas form a loop", n, off, b.seen[k])
	case b.reads > maxCallReads:
		return fmt.Errorf("more than %d reads for one directory: the image's structures (Rock Ridge continuation areas?) loop", maxCallReads)
	case b.bytes > maxCallBytes:
		return fmt.Errorf("more than %d MiB read for one directory: the image's structures (Rock Ridge continuation areas?) loop", maxCallBytes>>20)
	}
	return nil
}

// budgetFile is the image as go-diskfs reads it: every read is taken from
// the budget of the call running.
type budgetFile struct {
	countingFile
	budget *readBudget
}

func (f budgetFile) ReadAt(b []byte, off int64) (int, error) {
	if err := f.budget.take(off, len(b)); err != nil {
		return 0, err
	}
	return f.countingFile.ReadAt(b, off)
}
