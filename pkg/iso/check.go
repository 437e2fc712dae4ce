package iso

import (
	"encoding/binary"
	"fmt"
)

// What go-diskfs allocates before it reads comes from the image: a path
// table's size, a directory's size, a continuation area's length (each up
// to 4 GiB), so a damaged image could make it allocate and clear gigabytes,
// and a continuation area that continues in itself makes it loop.
// checkTrees reads the structures go-diskfs will read, before it does, and
// refuses an image where any of them lies outside the image or is larger
// than a real one is.
const (
	// maxTableSize bounds a path table and a directory: a directory of
	// 100,000 Rock Ridge entries is about 12 MiB.
	maxTableSize = 64 << 20
	// maxContinuation bounds one continuation area (xorriso writes at
	// most a block) and maxContinuations a chain of them.
	maxContinuation  = 64 << 10
	maxContinuations = 64
	// maxDirs and maxTreeBytes bound the walk itself.
	maxDirs      = 200000
	maxTreeBytes = 512 << 20
)

// treeCheck is one walk over the directory trees of an image.
type treeCheck struct {
	im *Image
	// visited holds the directories checked, by location and size: go-diskfs
	// takes a directory's size from its path table entry's "." record or,
	// with Rock Ridge, from the record in its parent, which may differ.
	visited map[extent]bool
	queue   []extent
	bytes   int64
}

type extent struct{ loc, size uint32 }

// checkTrees walks every directory that the primary and supplementary
// volume descriptors reach, through their root directories and their path
// tables.
func (im *Image) checkTrees() error {
	c := &treeCheck{im: im, visited: map[extent]bool{}}
	for _, vd := range im.trees {
		if err := c.pathTable(vd); err != nil {
			return err
		}
		root := vd[156 : 156+34]
		if root[0] < 34 {
			return fmt.Errorf("%w: the root directory record is %d bytes long", ErrDamaged, root[0])
		}
		c.add(extent{binary.LittleEndian.Uint32(root[2:]), binary.LittleEndian.Uint32(root[10:])})
	}
	for len(c.queue) > 0 {
		d := c.queue[0]
		c.queue = c.queue[1:]
		if err := c.dir(d); err != nil {
			return err
		}
	}
	return nil
}

func (c *treeCheck) add(d extent) {
	if !c.visited[d] {
		c.visited[d] = true
		c.queue = append(c.queue, d)
	}
}

// read reads size bytes at block loc plus off, which must lie in the image.
func (c *treeCheck) read(what string, loc, off, size uint32, max int64) ([]byte, error) {
	start := int64(loc)*blockSize + int64(off)
	switch {
	case int64(size) > max:
		return nil, fmt.Errorf("%w: %s at block %d claims %d bytes (at most %d are read)", ErrDamaged, what, loc, size, max)
	case start < vdStart || start+int64(size) > c.im.size:
		return nil, fmt.Errorf("%w: %s at block %d (%d bytes) lies outside the image", ErrDamaged, what, loc, size)
	case len(c.visited) > maxDirs:
		return nil, fmt.Errorf("%w: more than %d directories", ErrDamaged, maxDirs)
	}
	if c.bytes += int64(size); c.bytes > maxTreeBytes {
		return nil, fmt.Errorf("%w: more than %d MiB of directories", ErrDamaged, maxTreeBytes>>20)
	}
	b := make([]byte, size)
	if n, err := c.im.readAt(b, start); n != len(b) {
		return nil, fmt.Errorf("%w: cannot read %s at block %d: %v", ErrDamaged, what, loc, err)
	}
	return b, nil
}

// pathTable checks the L path table of a volume descriptor and queues the
// directories it names (go-diskfs finds directories through it).
func (c *treeCheck) pathTable(vd []byte) error {
	size := binary.LittleEndian.Uint32(vd[132:])
	b, err := c.read("the path table", binary.LittleEndian.Uint32(vd[140:]), 0, size, maxTableSize)
	if err != nil {
		return err
	}
	for i := 0; i < len(b); {
		n := int(b[i])
		if n == 0 {
			break
		}
		if i+8+n > len(b) {
			return fmt.Errorf("%w: a path table entry runs past the table", ErrDamaged)
		}
		loc := binary.LittleEndian.Uint32(b[i+2:])
		// The directory's size is in its first record ("."), as go-diskfs
		// reads it.
		self, err := c.read("a directory of the path table", loc, 0, 34, 34)
		if err != nil {
			return err
		}
		c.add(extent{loc, binary.LittleEndian.Uint32(self[10:])})
		i += 8 + n + n%2
	}
	return nil
}

// dir checks the records of one directory and their continuation areas,
// and queues its subdirectories.
func (c *treeCheck) dir(d extent) error {
	b, err := c.read("a directory", d.loc, 0, d.size, maxTableSize)
	if err != nil {
		return err
	}
	for i := 0; i < len(b); {
		n := int(b[i])
		if n == 0 {
			i += blockSize - i%blockSize // the rest of the block is padding
			continue
		}
		if n < 34 || i+n > len(b) || 33+int(b[i+32]) > n {
			return fmt.Errorf("%w: a record of the directory at block %d is malformed", ErrDamaged, d.loc)
		}
		r := b[i : i+n]
		nameLen := int(r[32])
		if r[25]&2 != 0 && !(nameLen == 1 && r[33] <= 1) { // a subdirectory, not "." or ".."
			c.add(extent{binary.LittleEndian.Uint32(r[2:]), binary.LittleEndian.Uint32(r[10:])})
		}
		// The system use area follows the name and, after an even-length
		// name, a padding byte.
		if sua := 33 + nameLen + (nameLen+1)%2; sua < n {
			if err := c.systemUse(r[sua:], d.loc); err != nil {
				return err
			}
		}
		i += n
	}
	return nil
}

// systemUse follows the continuation areas (SUSP "CE") of a record's
// system use area.
func (c *treeCheck) systemUse(sua []byte, dir uint32) error {
	for hops := 0; ; hops++ {
		var next []byte
		for j := 0; j+4 <= len(sua); {
			l := int(sua[j+2])
			if l < 4 || j+l > len(sua) {
				break // go-diskfs stops there too, or fails
			}
			if string(sua[j:j+2]) == "CE" && l == 28 {
				if hops == maxContinuations {
					return fmt.Errorf("%w: a record of the directory at block %d has more than %d continuation areas (a loop?)", ErrDamaged, dir, maxContinuations)
				}
				e := sua[j : j+l]
				b, err := c.read("a continuation area", binary.LittleEndian.Uint32(e[4:]), binary.LittleEndian.Uint32(e[12:]),
					binary.LittleEndian.Uint32(e[20:]), maxContinuation)
				if err != nil {
					return err
				}
				next = b
			}
			j += l
		}
		if next == nil {
			return nil
		}
		sua = next
	}
}
