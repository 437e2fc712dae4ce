package boot

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/diskfs/go-diskfs/partition/mbr"
	"golang.org/x/sys/unix"
)

// Partition type GUIDs (GPT, lower case) and the roles we give them.
const (
	TypeGUIDESP      = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
	TypeGUIDXBOOTLDR = "bc13c2ff-59e6-4262-a352-b275fd6f7172"
	TypeGUIDLinux    = "0fc63daf-8483-4772-8e79-3d69d8477de4"
	TypeGUIDLVM      = "e6d6d379-f507-44c2-a23c-238f2a3df928"
	TypeGUIDRAID     = "a19d880f-05fc-4d3b-a006-743f0f84911e"
	TypeGUIDSwap     = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
)

// Partition roles.
const (
	RoleESP      = "esp"
	RoleXBOOTLDR = "xbootldr"
	RoleLinux    = "linux"
	RoleLVM      = "lvm"
	RoleRAID     = "raid"
	RoleSwap     = "swap"
	RoleOther    = "other"
)

// Partition is one entry of a disk's partition table.
type Partition struct {
	Index    int    `json:"index"` // 1-based, as in /dev/sda1
	Table    string `json:"table"` // "gpt" or "mbr"
	Role     string `json:"role"`  // Role* constant
	TypeGUID string `json:"type_guid,omitempty"`
	MBRType  int    `json:"mbr_type,omitempty"`
	Name     string `json:"name,omitempty"`
	PartUUID string `json:"partuuid,omitempty"`
	Start    int64  `json:"start"` // bytes from the start of the disk
	Size     int64  `json:"size"`  // bytes
}

var roleOfGUID = map[string]string{
	TypeGUIDESP: RoleESP, TypeGUIDXBOOTLDR: RoleXBOOTLDR, TypeGUIDLinux: RoleLinux,
	TypeGUIDLVM: RoleLVM, TypeGUIDRAID: RoleRAID, TypeGUIDSwap: RoleSwap,
}

var roleOfMBR = map[mbr.Type]string{
	mbr.EFISystem: RoleESP, mbr.Linux: RoleLinux, mbr.LinuxLVM: RoleLVM, 0xea: RoleXBOOTLDR,
	0xfd: RoleRAID, 0x82: RoleSwap,
}

// Partitions reads the partition table of device (a block device or a
// disk image), read-only.
func Partitions(ctx context.Context, device string) ([]Partition, error) {
	d, err := diskfs.Open(device, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return nil, fmt.Errorf("cannot open %s: %w", device, err)
	}
	defer d.Close()
	t, err := d.GetPartitionTable()
	if err != nil {
		return nil, fmt.Errorf("cannot read the partition table of %s: %w", device, err)
	}
	var out []Partition
	switch t := t.(type) {
	case *gpt.Table:
		for i, p := range t.Partitions {
			if p == nil || p.Type == gpt.Unused {
				continue
			}
			guid := strings.ToLower(string(p.Type))
			role := roleOfGUID[guid]
			if role == "" {
				role = RoleOther
			}
			idx := p.Index
			if idx == 0 {
				idx = i + 1
			}
			out = append(out, Partition{
				Index: idx, Table: "gpt", Role: role, TypeGUID: guid, Name: p.Name,
				PartUUID: strings.ToLower(p.GUID),
				Start:    p.GetStart(), Size: p.GetSize(),
			})
		}
	case *mbr.Table:
		for i, p := range t.Partitions {
			if p == nil || p.Type == mbr.Empty {
				continue
			}
			role := roleOfMBR[p.Type]
			if role == "" {
				role = RoleOther
			}
			out = append(out, Partition{
				Index: i + 1, Table: "mbr", Role: role, MBRType: int(p.Type),
				Start: p.GetStart(), Size: p.GetSize(),
			})
		}
	default:
		return nil, fmt.Errorf("%s: unknown partition table type %s: %w", device, t.Type(), ErrNotSupported)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out, nil
}

// FindRole returns the first partition with role, or ErrNotFound.
func FindRole(parts []Partition, role string) (Partition, error) {
	for _, p := range parts {
		if p.Role == role {
			return p, nil
		}
	}
	return Partition{}, fmt.Errorf("no %s partition: %w", role, ErrNotFound)
}

// FindESP returns the EFI system partition of device.
func FindESP(ctx context.Context, device string) (Partition, error) {
	parts, err := Partitions(ctx, device)
	if err != nil {
		return Partition{}, err
	}
	return FindRole(parts, RoleESP)
}

// Space is the size and free space of a mounted filesystem.
type Space struct {
	Total uint64 `json:"total"` // bytes
	Free  uint64 `json:"free"`  // bytes available to root
	Avail uint64 `json:"avail"` // bytes available to unprivileged users
}

// FreeSpace returns the space of the filesystem holding path (statfs).
func FreeSpace(path string) (Space, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return Space{}, fmt.Errorf("cannot statfs %s: %w", path, err)
	}
	bs := uint64(st.Bsize)
	return Space{Total: st.Blocks * bs, Free: st.Bfree * bs, Avail: st.Bavail * bs}, nil
}

// PartitionOfMount returns the disk device ("/dev/vda") and partition
// index of the block device with major:minor (from mountinfo), using
// sysfs (sysDir "" means "/sys").
func PartitionOfMount(sysDir string, major, minor int) (string, int, error) {
	if sysDir == "" {
		sysDir = "/sys"
	}
	dev := filepath.Join(sysDir, "dev/block", fmt.Sprintf("%d:%d", major, minor))
	data, err := os.ReadFile(filepath.Join(dev, "partition"))
	if err != nil {
		return "", 0, fmt.Errorf("%d:%d is not a partition: %w", major, minor, ErrNotFound)
	}
	var idx int
	if _, err := fmt.Sscanf(strings.TrimSpace(string(data)), "%d", &idx); err != nil {
		return "", 0, fmt.Errorf("cannot parse %s/partition: %w", dev, err)
	}
	link, err := os.Readlink(dev)
	if err != nil {
		return "", 0, fmt.Errorf("cannot resolve %s: %w", dev, err)
	}
	parent := filepath.Base(filepath.Dir(link))
	return "/dev/" + parent, idx, nil
}

// ReadPartitionFile reads file p from the FAT32 filesystem of partition
// index of device (read-only), through go-diskfs.
func ReadPartitionFile(device string, index int, p string) ([]byte, error) {
	d, err := diskfs.Open(device, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return nil, fmt.Errorf("cannot open %s: %w", device, err)
	}
	defer d.Close()
	fs, err := d.GetFilesystem(index)
	if err != nil {
		return nil, fmt.Errorf("cannot read the filesystem of %s partition %d: %w", device, index, err)
	}
	f, err := fs.OpenFile(toFSPath(p), os.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("cannot open %s on %s partition %d: %w", p, device, index, err)
	}
	defer f.Close()
	return io.ReadAll(f)
}

func toFSPath(p string) string { return "/" + strings.TrimPrefix(filepath.ToSlash(p), "/") }

// Test disk layout made by BuildTestDisk.
const (
	TestDiskESPIndex   = 1
	TestDiskRootIndex  = 2
	testDiskESPSizeMB  = 64 // FAT32 needs at least ~33 MiB of clusters
	testDiskSectorSize = 512
)

// BuildTestDisk creates a disk image at path of sizeMB (at least 72) with
// a GPT, an ESP of 64 MiB formatted FAT32 (partition 1, label "ESP")
// holding files (path -> content, directories created), and a Linux
// partition over the rest (partition 2, unformatted). The VM harness
// formats and fills partition 2 itself (loop device at its offset). The
// file must not exist.
func BuildTestDisk(path string, sizeMB int, files map[string][]byte) error {
	return BuildTestDiskWithBoot(path, sizeMB, 0, files)
}

// TestDiskBootIndex is the partition BuildTestDiskWithBoot adds for /boot.
const TestDiskBootIndex = 3

// BuildTestDiskWithBoot is BuildTestDisk with, when bootMB > 0, a third
// partition of bootMB at the end of the disk (partition 3, label "boot",
// unformatted) for a separate /boot, as EL8 installs it.
func BuildTestDiskWithBoot(path string, sizeMB, bootMB int, files map[string][]byte) error {
	if sizeMB < testDiskESPSizeMB+bootMB+8 {
		return fmt.Errorf("test disk of %d MiB is too small (at least %d)", sizeMB, testDiskESPSizeMB+bootMB+8)
	}
	size := int64(sizeMB) << 20
	d, err := diskfs.Create(path, size, diskfs.SectorSizeDefault)
	if err != nil {
		return fmt.Errorf("cannot create %s: %w", path, err)
	}
	defer d.Close()
	const mib = (1 << 20) / testDiskSectorSize
	espStart := uint64(mib)
	espEnd := espStart + uint64(testDiskESPSizeMB*mib) - 1
	rootStart := espEnd + 1
	end := uint64(size/testDiskSectorSize) - 34 // backup GPT
	rootEnd := end
	if bootMB > 0 {
		rootEnd = end - uint64(bootMB*mib)
	}
	table := &gpt.Table{
		LogicalSectorSize:  testDiskSectorSize,
		PhysicalSectorSize: testDiskSectorSize,
		ProtectiveMBR:      true,
		Partitions: []*gpt.Partition{
			{Index: 1, Start: espStart, End: espEnd, Type: gpt.EFISystemPartition, Name: "ESP"},
			{Index: 2, Start: rootStart, End: rootEnd, Type: gpt.LinuxFilesystem, Name: "root"},
		},
	}
	if bootMB > 0 {
		table.Partitions = append(table.Partitions, &gpt.Partition{Index: TestDiskBootIndex, Start: rootEnd + 1, End: end,
			Type: gpt.LinuxFilesystem, Name: "boot"})
	}
	if err := d.Partition(table); err != nil {
		return fmt.Errorf("cannot partition %s: %w", path, err)
	}
	fs, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: TestDiskESPIndex, FSType: filesystem.TypeFat32, VolumeLabel: "ESP"})
	if err != nil {
		return fmt.Errorf("cannot format the ESP of %s: %w", path, err)
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := toFSPath(n)
		if dir := filepath.ToSlash(filepath.Dir(p)); dir != "/" {
			if err := fs.Mkdir(dir); err != nil {
				return fmt.Errorf("cannot create %s on the ESP: %w", dir, err)
			}
		}
		f, err := fs.OpenFile(p, os.O_CREATE|os.O_RDWR|os.O_TRUNC)
		if err != nil {
			return fmt.Errorf("cannot create %s on the ESP: %w", p, err)
		}
		if _, err := f.Write(files[n]); err != nil {
			f.Close()
			return fmt.Errorf("cannot write %s on the ESP: %w", p, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("cannot write %s on the ESP: %w", p, err)
		}
	}
	return nil
}
