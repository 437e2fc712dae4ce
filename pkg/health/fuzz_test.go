package health

import (
	"testing"
	"time"
)

// FuzzParseBaseline: no baseline document panics the parser, and one it
// accepts survives the diff and the verdict against itself and an empty
// observation.
func FuzzParseBaseline(f *testing.F) {
	good, _ := live([]Unit{svc("a.service", true, "active", "running"), svc("b.service", true, "failed", "failed")},
		[]Socket{{Proto: "tcp", Addr: "::", Port: 22, Unit: "sshd.service"}}, []Mount{{Where: "/srv", What: "/dev/vdb", Mounted: true}}).Marshal()
	for _, seed := range []string{string(good), `{"version":1,"units":[]}`, `{"version":1,"units":null,"expected":[{"unit":"x.service","rule":"r"}]}`, `{}`, `[]`, `null`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		bl, err := Parse(b, "fuzz")
		if err != nil {
			return
		}
		for _, after := range []*Baseline{bl, live(nil, nil, nil)} {
			v := Judge(Input{Baseline: bl, Observed: after, Now: time.Unix(0, 0)})
			if v.Green != (len(v.Reasons) == 0) {
				t.Fatalf("green %v with reasons %q", v.Green, v.Reasons)
			}
		}
	})
}

// FuzzParsePolicy: no health.conf panics the parser; an error always
// comes with the default policy.
func FuzzParsePolicy(f *testing.F) {
	for _, seed := range []string{"fatal = unit-failed\nrequired = a.service\n", "activating_wait = 5m\n", "x", "fatal=\n#", "ignore = ,,, a.socket"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePolicy(b)
		if p.Fatal == nil || p.Ignore == nil || (err == nil && !p.Fatal[KindRequiredInactive]) {
			t.Fatalf("policy %+v, %v", p, err)
		}
	})
}
