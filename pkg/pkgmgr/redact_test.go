package pkgmgr_test

import (
	"strings"
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

func TestParseRepo(t *testing.T) {
	for _, tc := range []struct{ name, spec, want, wantErr string }{
		{name: "URL", spec: "kos=https://mirror/kos/5.9", want: "kos=https://mirror/kos/5.9"},
		{name: "directory", spec: "local=/srv/kos", want: "local=file:///srv/kos"},
		{name: "credentials shown redacted", spec: "corp=https://u:tok@h/x", want: "corp=https://***@h/x"},
		{name: "no URL", spec: "nourl", wantErr: "want ID=URL"},
		{name: "no scheme", spec: "x=mirror.example/kos", wantErr: "no scheme"},
		{name: "empty scheme with credentials", spec: "x=://user:tok3n@host/kos", wantErr: "no scheme"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := pkgmgr.ParseRepo(tc.spec)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseRepo(%q) = %v, %v; want %q", tc.spec, r, err, tc.wantErr)
				}
				return
			}
			if err != nil || r.String() != tc.want {
				t.Fatalf("ParseRepo(%q) = %q, %v; want %q", tc.spec, r.String(), err, tc.want)
			}
		})
	}
}
