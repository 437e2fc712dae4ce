package health

import (
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/keyarchos/kos-upgrade/pkg/safefile"
)

// maxEphemeralUDP: a UDP socket bound to a port at or above it is a
// client's (dhclient, resolvers), not a service.
const maxEphemeralUDP = 32768

// listeners reads /proc/net/{tcp,tcp6,udp,udp6}: TCP sockets in LISTEN,
// UDP sockets bound below the ephemeral range and not connected, each with
// the unit of the process holding it.
func listeners(proc string) ([]Socket, error) {
	inodes := map[string]Socket{}
	var found bool
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, err := safefile.Read(filepath.Join(proc, "net", proto), 64<<20)
		if err != nil {
			continue // no IPv6, say
		}
		found = true
		for _, s := range parseNet(proto, string(b)) {
			inodes[s.inode] = s.Socket
		}
	}
	if !found {
		return nil, fmt.Errorf("no socket table in %s/net", proc)
	}
	owners := socketUnits(proc, inodes)
	out := make([]Socket, 0, len(inodes))
	seen := map[string]bool{}
	for ino, s := range inodes {
		s.Unit = owners[ino]
		if seen[s.Key()] {
			continue // SO_REUSEPORT: one listener per address
		}
		seen[s.Key()] = true
		out = append(out, s)
	}
	return out, nil
}

type netSocket struct {
	Socket
	inode string
}

// parseNet parses one /proc/net table.
func parseNet(proto, text string) []netSocket {
	var out []netSocket
	for i, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 10 {
			continue
		}
		addr, port, ok := parseHexAddr(f[1])
		if !ok {
			continue
		}
		switch {
		case strings.HasPrefix(proto, "tcp") && f[3] == "0A":
		case strings.HasPrefix(proto, "udp") && f[3] == "07" && port < maxEphemeralUDP && strings.HasSuffix(f[2], ":0000"):
		default:
			continue
		}
		out = append(out, netSocket{Socket: Socket{Proto: proto, Addr: addr, Port: port}, inode: f[9]})
	}
	return out
}

// parseHexAddr decodes "0100007F:0050" (an address in host-order 32-bit
// words, a port in hex).
func parseHexAddr(s string) (string, int, bool) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return "", 0, false
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return "", 0, false
	}
	raw, err := hex.DecodeString(a)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return "", 0, false
	}
	ip := make(net.IP, len(raw))
	for w := 0; w < len(raw); w += 4 {
		ip[w], ip[w+1], ip[w+2], ip[w+3] = raw[w+3], raw[w+2], raw[w+1], raw[w]
	}
	return ip.String(), int(port), true
}

// socketUnits finds, for each socket inode, the process holding it and
// that process's unit (from its cgroup).
func socketUnits(proc string, inodes map[string]Socket) map[string]string {
	out := map[string]string{}
	procs, err := os.ReadDir(proc)
	if err != nil {
		return out
	}
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		fdDir := filepath.Join(proc, p.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		var unit string
		for _, fd := range fds {
			l, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			if err != nil || !strings.HasPrefix(l, "socket:[") {
				continue
			}
			ino := strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")
			if _, ok := inodes[ino]; !ok || out[ino] != "" {
				continue
			}
			if unit == "" {
				unit = cgroupUnit(proc, p.Name())
			}
			if unit != "" {
				out[ino] = unit
			}
		}
	}
	return out
}

// cgroupUnit returns the innermost unit of a process's cgroup path
// (/system.slice/sshd.service → sshd.service).
func cgroupUnit(proc, pid string) string {
	b, err := safefile.Read(filepath.Join(proc, pid, "cgroup"), 64<<10)
	if err != nil {
		return ""
	}
	return UnitOfCgroup(string(b))
}

// UnitOfCgroup returns the innermost service, socket or scope named in the
// paths of a /proc/PID/cgroup file.
func UnitOfCgroup(text string) string {
	var best string
	for _, line := range strings.Split(text, "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		// The unified hierarchy (0::) or the name=systemd one.
		if parts[0] != "0" && parts[1] != "name=systemd" {
			continue
		}
		for _, c := range strings.Split(parts[2], "/") {
			switch UnitType(c) {
			case "service", "socket", "scope":
				if ValidUnitName(c) {
					best = c
				}
			}
		}
		if best != "" {
			return best
		}
	}
	return best
}
