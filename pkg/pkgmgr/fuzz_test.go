package pkgmgr_test

import (
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
)

// FuzzParseRepo: any --repo value parses or is refused without a panic,
// and what is shown of a repository never holds its credentials.
func FuzzParseRepo(f *testing.F) {
	for _, s := range []string{"kos=file:///srv/kos/5.9", "corp=https://user:tok3n@mirror.example/kos", "d=/srv/mirror", "=x", "a b=c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		r, err := pkgmgr.ParseRepo(spec)
		if err != nil {
			return
		}
		if _, rest, ok := strings.Cut(spec, "://"); ok {
			if userinfo, _, ok := strings.Cut(rest, "@"); ok && !strings.ContainsAny(userinfo, "/?#") {
				if _, pass, ok := strings.Cut(userinfo, ":"); ok && len(pass) > 3 && strings.Contains(r.String(), ":"+pass+"@") {
					t.Fatalf("%q is shown as %q, password included", spec, r.String())
				}
			}
		}
	})
}
