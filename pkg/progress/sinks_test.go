package progress

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
)

func TestOverall(t *testing.T) {
	o := NewOverall(OpRanges("prepare"))
	seq := []struct {
		e    Event
		want int
	}{
		{Event{Step: "fingerprint", Message: "x"}, 2},
		{Event{Step: "resolve"}, 5},
		{Event{Step: "download", N: 5, Total: 10}, 37},
		{Event{Step: "unknown"}, 37},
		{Event{Step: "resolve"}, 37}, // never backwards
		{Event{Step: "test", N: 1, Total: 1}, 97},
		{Event{Step: "prepare", Message: "done"}, 100},
	}
	for _, s := range seq {
		if got := o.Update(s.e); got != s.want {
			t.Errorf("after %+v: %d, want %d", s.e, got, s.want)
		}
	}
	a := NewOverall(Weighted([]StepWeight{{"a", 10}, {"b", 80}, {"c", 10}, {"done", 0}}))
	for _, s := range []struct {
		e    Event
		want int
	}{
		{Event{Step: "a"}, 0},
		{Event{Step: "b", N: 50, Total: 100}, 50},
		{Event{Step: "c"}, 90},
		{Event{Step: "done"}, 100},
	} {
		if got := a.Update(s.e); got != s.want {
			t.Errorf("weighted, after %+v: %d, want %d", s.e, got, s.want)
		}
	}
}

// catalogIDs reads the MESSAGE_IDs of units/kos-upgrade.catalog.
func catalogIDs(t *testing.T) map[string]bool {
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "units", "kos-upgrade.catalog"))
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^-- ([0-9a-f]{32})$`).FindAllStringSubmatch(string(b), -1) {
		ids[m[1]] = true
	}
	return ids
}

func TestCatalogHasEveryMessageID(t *testing.T) {
	ids := catalogIDs(t)
	for _, k := range []MilestoneKind{Started, Finished, Failed, RolledBack, Healthy, Unhealthy} {
		if !ids[MessageID(k)] {
			t.Errorf("units/kos-upgrade.catalog lacks %s (%s)", MessageID(k), k)
		}
	}
	if len(ids) != 6 {
		t.Errorf("catalog has %d entries", len(ids))
	}
}

// TestJournalFields checks the fields a milestone is journaled with. The
// transport is go-systemd's journal.Send (its socket path is fixed, so the
// test puts a sender of the same KEY=VALUE datagram format in its place).
func TestJournalFields(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "journal.sock")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The same wire format journal.Send writes (KEY=VALUE lines), sent to
	// our socket instead of /run/systemd/journal/socket.
	j := &Journal{enabled: true, send: func(msg string, pri journal.Priority, vars map[string]string) error {
		var b strings.Builder
		b.WriteString("MESSAGE=" + msg + "\nPRIORITY=" + string(rune('0'+int(pri))) + "\n")
		for k, v := range vars {
			b.WriteString(k + "=" + v + "\n")
		}
		_, err := c.Write([]byte(b.String()))
		return err
	}}
	Announce(Multi{Discard, j}, Milestone{Kind: Failed, Op: "apply", From: "5.8", To: "5.9", RunID: "r1", Error: "boom"})
	l.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 4096)
	n, err := l.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	got := string(buf[:n])
	for _, w := range []string{"MESSAGE=kos-upgrade apply 5.8 → 5.9 failed: boom", "PRIORITY=3", "MESSAGE_ID=" + MessageIDFailed,
		"KOS_UPGRADE_OP=apply", "KOS_UPGRADE_RUN_ID=r1", "KOS_UPGRADE_ERROR=boom", "SYSLOG_IDENTIFIER=kos-upgrade"} {
		if !strings.Contains(got, w+"\n") {
			t.Errorf("journal entry lacks %q:\n%s", w, got)
		}
	}
}

// TestWithoutJournaldPlymouthNotify: on this kind of machine (no journald,
// no plymouth, no NOTIFY_SOCKET) every system sink is absent or inert and
// nothing breaks.
func TestWithoutJournaldPlymouthNotify(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("PATH", t.TempDir())
	sinks := SystemSinks(OpRanges("prepare"))
	for _, s := range sinks {
		if _, ok := s.(*Journal); !ok {
			t.Errorf("unexpected sink %T", s)
		}
	}
	sinks.Report(Event{Step: "resolve", Message: "x"})
	Announce(sinks, Milestone{Kind: Started, Op: "prepare"})
	if NewPlymouth(OpRanges("prepare")) != nil {
		t.Error("plymouth sink without plymouth")
	}
	var n *Notify
	n.Report(Event{Step: "x"}) // nil sinks are inert
	var p *Plymouth
	p.Report(Event{Step: "x"})
}

// TestNotifyStatus: with NOTIFY_SOCKET, STATUS= lines reach the socket,
// once per change.
func TestNotifyStatus(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	n := NewNotify(OpRanges("prepare"))
	n.Report(Event{Step: "resolve", Message: "resolving"})
	n.Report(Event{Step: "resolve", Message: "resolving"}) // same: not sent
	n.Report(Event{Step: "download", N: 1, Total: 2})
	Announce(n, Milestone{Kind: Finished, Op: "prepare", To: "5.9"})
	var got []string
	buf := make([]byte, 1024)
	for range 3 {
		l.SetReadDeadline(time.Now().Add(2 * time.Second))
		k, err := l.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(buf[:k]))
	}
	want := []string{"STATUS=resolve: resolving (5%)", "STATUS=download (37%)", "STATUS=kos-upgrade prepare to 5.9 finished successfully"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// TestPlymouthCommands runs the sink against a plymouth stand-in that
// records its arguments (plymouth itself is not installed on the test
// machines; the arguments are those of plymouth(1)).
func TestPlymouthCommands(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	script := "#!/bin/sh\necho \"$@\" >> " + log + "\n"
	if err := os.WriteFile(filepath.Join(dir, "plymouth"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	p := NewPlymouth(Ranges{"transaction": {10, 90}})
	if p == nil {
		t.Fatal("no plymouth sink although plymouth --ping succeeds")
	}
	p.Report(Event{Step: "transaction", Message: "running the transaction"})
	p.Report(Event{Step: "transaction", N: 1, Total: 2})
	b, _ := os.ReadFile(log)
	want := "--ping\ndisplay-message --text=running the transaction\nsystem-update --progress=10\nsystem-update --progress=50\n"
	if string(b) != want {
		t.Errorf("plymouth calls:\n%s\nwant\n%s", b, want)
	}
	// plymouth not running: --ping fails, no sink.
	os.WriteFile(filepath.Join(dir, "plymouth"), []byte("#!/bin/sh\nexit 1\n"), 0o755)
	if NewPlymouth(Ranges{"transaction": {10, 90}}) != nil {
		t.Error("plymouth sink although plymouthd does not run")
	}
}
