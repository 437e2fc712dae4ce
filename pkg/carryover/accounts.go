package carryover

import (
	"bytes"
	"errors"
	"fmt"
)

// ErrConflict is wrapped when an account file cannot be merged: the same
// name changed on both sides, or a file that is not one entry per name.
var ErrConflict = errors.New("conflicting changes")

type accountLine struct {
	name string
	line []byte
}

// parseAccounts splits an account file into lines keyed by the name
// before the first ':'. A line without a name (blank, a comment) or a
// name twice cannot be merged by name.
func parseAccounts(b []byte) ([]accountLine, map[string][]byte, error) {
	var lines []accountLine
	byName := map[string][]byte{}
	for _, l := range bytes.SplitAfter(b, []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		i := bytes.IndexByte(l, ':')
		if i <= 0 {
			return nil, nil, fmt.Errorf("%w: a line without a name: %q", ErrConflict, bytes.TrimSpace(l))
		}
		if !bytes.HasSuffix(l, []byte("\n")) {
			l = append(l[:len(l):len(l)], '\n')
		}
		name := string(l[:i])
		if _, dup := byName[name]; dup {
			return nil, nil, fmt.Errorf("%w: %q twice", ErrConflict, name)
		}
		byName[name] = l
		lines = append(lines, accountLine{name, l})
	}
	return lines, byName, nil
}

// MergeAccountFile merges an account file (passwd, group, shadow,
// gshadow) that both the running system (live) and the transaction
// (next) changed from base: live's lines in live's order, with the
// transaction's changes and removals of names live left alone, then the
// names the transaction added, in next's order. This is what the classic
// apply gives when the scriptlets' useradd/groupadd run on live's file.
// The same name changed (or removed, or added differently) on both sides
// is ErrConflict.
func MergeAccountFile(base, live, next []byte) ([]byte, error) {
	_, b, err := parseAccounts(base)
	if err != nil {
		return nil, err
	}
	lLines, l, err := parseAccounts(live)
	if err != nil {
		return nil, err
	}
	nLines, n, err := parseAccounts(next)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	for _, x := range lLines {
		bl, inBase := b[x.name]
		nl, inNext := n[x.name]
		liveChanged := !inBase || !bytes.Equal(bl, x.line)
		nextChanged := inBase && (!inNext || !bytes.Equal(bl, nl))
		switch {
		case !inBase && inNext:
			if !bytes.Equal(nl, x.line) {
				return nil, fmt.Errorf("%w: %q added differently on both sides", ErrConflict, x.name)
			}
			out.Write(x.line)
		case liveChanged && nextChanged:
			return nil, fmt.Errorf("%w: %q changed on both sides", ErrConflict, x.name)
		case nextChanged && !inNext:
			// removed by the transaction
		case nextChanged:
			out.Write(nl)
		default:
			out.Write(x.line)
		}
	}
	for name, bl := range b {
		if _, inLive := l[name]; inLive {
			continue
		}
		// Removed on the running system: the transaction must have
		// left it alone.
		if nl, inNext := n[name]; !inNext || !bytes.Equal(nl, bl) {
			return nil, fmt.Errorf("%w: %q removed on one side and changed on the other", ErrConflict, name)
		}
	}
	for _, x := range nLines {
		if _, inBase := b[x.name]; inBase {
			continue
		}
		if _, inLive := l[x.name]; inLive {
			continue // written above, equal
		}
		out.Write(x.line)
	}
	return out.Bytes(), nil
}
