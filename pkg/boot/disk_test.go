package boot

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
)

func TestBuildTestDiskAndPartitions(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	entry := []byte("title KOS\nversion 5.9\nlinux /vmlinuz\noptions root=UUID=1 rw\n")
	files := map[string][]byte{
		"loader/entries/kos.conf": entry,
		"loader/loader.conf":      []byte("default kos.conf\ntimeout 3\n"),
	}
	if err := BuildTestDisk(img, 128, files); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	parts, err := Partitions(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) != 2 {
		t.Fatalf("partitions %+v", parts)
	}
	esp, err := FindESP(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	if esp.Index != TestDiskESPIndex || esp.TypeGUID != TypeGUIDESP || esp.Table != "gpt" ||
		esp.Start != 1<<20 || esp.Size != 64<<20 || esp.Name != "ESP" || esp.PartUUID == "" {
		t.Errorf("ESP %+v", esp)
	}
	root := parts[1]
	if root.Role != RoleLinux || root.Index != TestDiskRootIndex || root.Start != 65<<20 || root.Size < 60<<20 {
		t.Errorf("root %+v", root)
	}
	if _, err := FindRole(parts, RoleXBOOTLDR); !errors.Is(err, ErrNotFound) {
		t.Errorf("XBOOTLDR: %v", err)
	}
	got, err := ReadPartitionFile(img, esp.Index, "loader/entries/kos.conf")
	if err != nil {
		t.Fatal(err)
	}
	e, err := ParseEntry("kos", got)
	if err != nil || e.Version() != "5.9" || e.Options().String() != "root=UUID=1 rw" {
		t.Errorf("entry read back: %q %v", got, err)
	}
	if _, err := ReadPartitionFile(img, esp.Index, "missing"); err == nil {
		t.Error("missing file read")
	}
	if err := BuildTestDisk(filepath.Join(t.TempDir(), "small.img"), 16, nil); err == nil {
		t.Error("too small disk built")
	}
}

func TestFreeSpace(t *testing.T) {
	s, err := FreeSpace(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if s.Total == 0 || s.Free > s.Total || s.Avail > s.Free {
		t.Errorf("space %+v", s)
	}
	if _, err := FreeSpace("/nonexistent/x"); err == nil {
		t.Error("statfs of a missing path")
	}
}
