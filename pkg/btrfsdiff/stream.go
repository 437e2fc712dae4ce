package btrfsdiff

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// The btrfs send stream (fs/btrfs/send.h in Linux): a header, then
// commands, each a header (le32 length of the attributes, le16 command,
// le32 crc32c of the whole command computed with this field zero) and
// attributes (le16 type, le16 length, value). Version 1 is what
// `btrfs send --no-data` writes; version 2 and 3 commands are accepted
// and their paths marked, so a newer btrfs-progs cannot hide a change.

const streamMagic = "btrfs-stream\x00"

// Send commands.
const (
	cmdSubvol        = 1
	cmdSnapshot      = 2
	cmdMkfile        = 3
	cmdMkdir         = 4
	cmdMknod         = 5
	cmdMkfifo        = 6
	cmdMksock        = 7
	cmdSymlink       = 8
	cmdRename        = 9
	cmdLink          = 10
	cmdUnlink        = 11
	cmdRmdir         = 12
	cmdSetXattr      = 13
	cmdRemoveXattr   = 14
	cmdWrite         = 15
	cmdClone         = 16
	cmdTruncate      = 17
	cmdChmod         = 18
	cmdChown         = 19
	cmdUtimes        = 20
	cmdEnd           = 21
	cmdUpdateExtent  = 22
	cmdFallocate     = 23
	cmdFileattr      = 24
	cmdEncodedWrite  = 25
	cmdEnableVerity  = 26
	maxKnownCommand  = cmdEnableVerity
	cmdHeaderLen     = 10
	attrHeaderLen    = 4
	maxStreamVersion = 3
)

// Send attributes the diff reads.
const (
	attrPath     = 15
	attrPathTo   = 16
	attrPathLink = 17
)

// command is one decoded send command: its number and its path
// attributes (the only ones the diff needs).
type command struct {
	cmd      uint16
	path     string
	pathTo   string
	pathLink string
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// streamSum is the checksum of a command: the kernel's crc32c with seed 0
// and no final inversion (Go's crc32 inverts at both ends), over the
// command with its checksum field zero.
func streamSum(whole []byte) uint32 {
	h := crc32.Update(0xffffffff, castagnoli, whole[:6])
	h = crc32.Update(h, castagnoli, []byte{0, 0, 0, 0})
	h = crc32.Update(h, castagnoli, whole[cmdHeaderLen:])
	return ^h
}

// errStream is wrapped by every malformed-stream error.
var errStream = errors.New("malformed send stream")

// parseStream decodes a whole send stream. It never panics and rejects a
// truncated stream, a bad checksum and an unknown command.
func parseStream(b []byte) ([]command, error) {
	if len(b) < len(streamMagic)+4 || string(b[:len(streamMagic)]) != streamMagic {
		return nil, fmt.Errorf("%w: no btrfs-stream header", errStream)
	}
	b = b[len(streamMagic):]
	if v := binary.LittleEndian.Uint32(b); v < 1 || v > maxStreamVersion {
		return nil, fmt.Errorf("%w: version %d", errStream, v)
	}
	b = b[4:]
	var out []command
	ended := false
	for len(b) > 0 {
		if ended {
			// A stream of several subvolumes: only one is asked for.
			return nil, fmt.Errorf("%w: data after the end command", errStream)
		}
		if len(b) < cmdHeaderLen {
			return nil, fmt.Errorf("%w: truncated command header", errStream)
		}
		n := binary.LittleEndian.Uint32(b)
		c := binary.LittleEndian.Uint16(b[4:])
		sum := binary.LittleEndian.Uint32(b[6:])
		if uint64(n) > uint64(len(b)-cmdHeaderLen) {
			return nil, fmt.Errorf("%w: command %d longer than the stream", errStream, c)
		}
		whole := b[:cmdHeaderLen+int(n)]
		if streamSum(whole) != sum {
			return nil, fmt.Errorf("%w: bad checksum of command %d", errStream, c)
		}
		if c == 0 || c > maxKnownCommand {
			return nil, fmt.Errorf("%w: unknown command %d", errStream, c)
		}
		cm := command{cmd: c}
		attrs := whole[cmdHeaderLen:]
		for len(attrs) > 0 {
			if len(attrs) < attrHeaderLen {
				return nil, fmt.Errorf("%w: truncated attribute", errStream)
			}
			t := binary.LittleEndian.Uint16(attrs)
			l := int(binary.LittleEndian.Uint16(attrs[2:]))
			if l > len(attrs)-attrHeaderLen {
				return nil, fmt.Errorf("%w: attribute %d longer than its command", errStream, t)
			}
			v := attrs[attrHeaderLen : attrHeaderLen+l]
			attrs = attrs[attrHeaderLen+l:]
			switch t {
			case attrPath, attrPathTo, attrPathLink:
				if t == attrPathLink && c != cmdLink {
					// A symbolic link's target: any bytes.
					continue
				}
				p, err := cleanPath(v)
				if err != nil {
					return nil, err
				}
				switch t {
				case attrPath:
					cm.path = p
				case attrPathTo:
					cm.pathTo = p
				default:
					cm.pathLink = p
				}
			}
		}
		out = append(out, cm)
		ended = c == cmdEnd
		b = b[cmdHeaderLen+int(n):]
	}
	if !ended {
		return nil, fmt.Errorf("%w: no end command", errStream)
	}
	return out, nil
}

// cleanPath checks a path attribute: relative to the subvolume, no empty,
// "." or ".." component, no NUL. The subvolume's own root is "".
func cleanPath(v []byte) (string, error) {
	if bytes.IndexByte(v, 0) >= 0 {
		return "", fmt.Errorf("%w: NUL in a path", errStream)
	}
	if len(v) == 0 {
		return "", nil
	}
	for _, c := range bytes.Split(v, []byte("/")) {
		if len(c) == 0 || string(c) == "." || string(c) == ".." {
			return "", fmt.Errorf("%w: path %q", errStream, v)
		}
	}
	return string(v), nil
}
