package iso

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
)

// Write makes an ISO 9660 image with Rock Ridge names at out from the tree
// in dir, labelled label (at most 32 characters), with go-diskfs. dir is
// consumed: go-diskfs removes it when the image is written. out is written
// under a temporary name and renamed when complete.
func Write(dir, out, label string) error {
	if len(label) > 32 {
		return fmt.Errorf("cannot write image %s: label %q is longer than 32 characters", out, label)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".")
	if err != nil {
		return fmt.Errorf("cannot write image: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	fs, err := iso9660.Create(file.New(tmp, false), 0, 0, blockSize, dir)
	if err != nil {
		return fmt.Errorf("cannot write image %s: %w", out, err)
	}
	if err := fs.Finalize(iso9660.FinalizeOptions{RockRidge: true, VolumeIdentifier: label}); err != nil {
		return fmt.Errorf("cannot write image %s: %w", out, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("cannot write image %s: %w", out, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("cannot write image %s: %w", out, err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("cannot write image %s: %w", out, err)
	}
	return nil
}
