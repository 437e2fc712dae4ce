package btrfsdiff

import (
	"encoding/binary"
	"errors"
	"testing"
)

// cmdBytes encodes one command with its path attributes and checksum.
func cmdBytes(c uint16, attrs map[uint16]string) []byte {
	var body []byte
	for _, t := range []uint16{attrPath, attrPathTo, attrPathLink} {
		v, ok := attrs[t]
		if !ok {
			continue
		}
		body = binary.LittleEndian.AppendUint16(body, t)
		body = binary.LittleEndian.AppendUint16(body, uint16(len(v)))
		body = append(body, v...)
	}
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(body)))
	b = binary.LittleEndian.AppendUint16(b, c)
	b = append(b, 0, 0, 0, 0)
	b = append(b, body...)
	binary.LittleEndian.PutUint32(b[6:], streamSum(b))
	return b
}

func stream(cmds ...[]byte) []byte {
	b := append([]byte(streamMagic), 1, 0, 0, 0)
	for _, c := range cmds {
		b = append(b, c...)
	}
	return b
}

func TestParseStreamRefuses(t *testing.T) {
	snap := cmdBytes(cmdSnapshot, map[uint16]string{attrPath: "c"})
	end := cmdBytes(cmdEnd, nil)
	bad := cmdBytes(cmdUnlink, map[uint16]string{attrPath: "etc/x"})
	bad[len(bad)-1] ^= 1
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"no magic", []byte("btrfs-strean\x00\x01\x00\x00\x00")},
		{"version 9", append([]byte(streamMagic), 9, 0, 0, 0)},
		{"no end", stream(snap)},
		{"truncated", stream(snap, end)[:30]},
		{"bad checksum", stream(snap, bad, end)},
		{"unknown command", stream(snap, cmdBytes(99, nil), end)},
		{"dot-dot", stream(snap, cmdBytes(cmdUnlink, map[uint16]string{attrPath: "etc/../x"}), end)},
		{"absolute", stream(snap, cmdBytes(cmdUnlink, map[uint16]string{attrPath: "/etc/x"}), end)},
		{"after end", stream(snap, end, end)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseStream(tc.b); !errors.Is(err, errStream) {
				t.Fatalf("err = %v, want errStream", err)
			}
		})
	}
}

func TestFromCommandsRefuses(t *testing.T) {
	no := func(string) (bool, error) { return false, nil }
	for _, tc := range []struct {
		name string
		cmds []command
	}{
		{"full stream", []command{{cmd: cmdSubvol}, {cmd: cmdEnd}}},
		{"orphan left", []command{{cmd: cmdSnapshot}, {cmd: cmdMkfile, path: "o257-9-0"}, {cmd: cmdEnd}}},
		{"rename into itself", []command{{cmd: cmdSnapshot}, {cmd: cmdRename, path: "a", pathTo: "a/b"}, {cmd: cmdEnd}}},
		{"remove the root", []command{{cmd: cmdSnapshot}, {cmd: cmdRmdir}, {cmd: cmdEnd}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := fromCommands(tc.cmds, no, no); !errors.Is(err, errStream) {
				t.Fatalf("err = %v, want errStream", err)
			}
		})
	}
}

func FuzzParseStream(f *testing.F) {
	f.Add(stream(cmdBytes(cmdSnapshot, map[uint16]string{attrPath: "c"}),
		cmdBytes(cmdRename, map[uint16]string{attrPath: "a", attrPathTo: "b"}), cmdBytes(cmdEnd, nil)))
	no := func(string) (bool, error) { return false, nil }
	f.Fuzz(func(t *testing.T, b []byte) {
		cmds, err := parseStream(b)
		if err == nil {
			fromCommands(cmds, no, no)
		}
	})
}
