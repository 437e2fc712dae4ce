package pkgmgr_test

import (
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
)

func TestRedactText(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{name: "user and token", in: "https://deploy:t0k@mirror/kos/5.9", want: "https://***@mirror/kos/5.9"},
		{name: "user only", in: "ftp://anon@host", want: "ftp://***@host"},
		{name: "no credentials", in: "https://mirror/kos/5.9", want: "https://mirror/kos/5.9"},
		{name: "at sign in the path", in: "https://mirror/a@b", want: "https://mirror/a@b"},
		{name: "in a message", in: `cannot download "https://u:p@h/x.rpm" and http://v:q@i/`, want: `cannot download "https://***@h/x.rpm" and http://***@i/`},
		{name: "an e-mail address", in: "mail root@localhost", want: "mail root@localhost"},
		{name: "file URL", in: "file:///srv/kos", want: "file:///srv/kos"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := pkgmgr.RedactText(tc.in); got != tc.want {
				t.Errorf("RedactText(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
	if got := (pkgmgr.Repo{ID: "corp", BaseURL: "https://u:p@h/x"}).String(); got != "corp=https://***@h/x" {
		t.Errorf("Repo.String() = %q", got)
	}
}
