package migrate

import "testing"

// FuzzParse: any map file parses or is refused without a panic.
func FuzzParse(f *testing.F) {
	ents, _ := builtin.ReadDir("maps")
	for _, e := range ents {
		if b, err := BuiltinFile(e.Name()); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(`{"version": 1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = Parse(b, "fuzz.json")
	})
}
