package preflight_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keyarchos/kos-upgrade/pkg/preflight"
)

// A validator for the subset of JSON Schema docs/report.schema.json uses:
// type, required, properties, additionalProperties: false, items, enum,
// const, minimum, minLength, minItems, pattern, format date-time, and $ref
// to #/$defs/NAME. A keyword it does not know fails the test, so the schema
// cannot silently grow beyond what is checked.

var knownKeywords = map[string]bool{
	"$schema": true, "$id": true, "title": true, "description": true, "$defs": true,
	"type": true, "required": true, "properties": true, "additionalProperties": true, "items": true,
	"enum": true, "const": true, "minimum": true, "minLength": true, "minItems": true, "pattern": true,
	"format": true, "$ref": true,
}

type schemaValidator struct {
	root map[string]any
	errs []string
}

func repoFile(t testing.TB, rel string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", rel)
}

func loadSchema(t testing.TB) map[string]any {
	t.Helper()
	b, err := os.ReadFile(repoFile(t, "docs/report.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("docs/report.schema.json: %v", err)
	}
	return s
}

func (v *schemaValidator) fail(path, format string, a ...any) {
	v.errs = append(v.errs, path+": "+fmt.Sprintf(format, a...))
}

func (v *schemaValidator) validate(schema map[string]any, doc any, path string) {
	for k := range schema {
		if !knownKeywords[k] {
			v.fail(path, "schema keyword %q is not supported by the test validator", k)
		}
	}
	if ref, ok := schema["$ref"].(string); ok {
		name, ok := strings.CutPrefix(ref, "#/$defs/")
		defs, _ := v.root["$defs"].(map[string]any)
		sub, _ := defs[name].(map[string]any)
		if !ok || sub == nil {
			v.fail(path, "unresolvable $ref %q", ref)
			return
		}
		v.validate(sub, doc, path)
	}
	if t, ok := schema["type"].(string); ok && !hasType(doc, t) {
		v.fail(path, "is %T, want %s", doc, t)
		return
	}
	if c, ok := schema["const"]; ok && fmt.Sprint(c) != fmt.Sprint(doc) {
		v.fail(path, "is %v, want %v", doc, c)
	}
	if e, ok := schema["enum"].([]any); ok {
		found := false
		for _, x := range e {
			found = found || x == doc
		}
		if !found {
			v.fail(path, "%v is not one of %v", doc, e)
		}
	}
	switch d := doc.(type) {
	case float64:
		if m, ok := schema["minimum"].(float64); ok && d < m {
			v.fail(path, "%v < minimum %v", d, m)
		}
	case string:
		if m, ok := schema["minLength"].(float64); ok && float64(len(d)) < m {
			v.fail(path, "shorter than %v", m)
		}
		if p, ok := schema["pattern"].(string); ok && !regexp.MustCompile(p).MatchString(d) {
			v.fail(path, "%q does not match %s", d, p)
		}
		if f, ok := schema["format"].(string); ok && f == "date-time" {
			if _, err := time.Parse(time.RFC3339Nano, d); err != nil {
				v.fail(path, "%q is not a date-time", d)
			}
		}
	case []any:
		if m, ok := schema["minItems"].(float64); ok && float64(len(d)) < m {
			v.fail(path, "fewer than %v items", m)
		}
		if it, ok := schema["items"].(map[string]any); ok {
			for i, x := range d {
				v.validate(it, x, fmt.Sprintf("%s[%d]", path, i))
			}
		}
	case map[string]any:
		props, _ := schema["properties"].(map[string]any)
		if req, ok := schema["required"].([]any); ok {
			for _, r := range req {
				if _, ok := d[r.(string)]; !ok {
					v.fail(path, "required property %q is missing", r)
				}
			}
		}
		var names []string
		for k := range d {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			sub, ok := props[k].(map[string]any)
			if !ok {
				if ap, ok := schema["additionalProperties"].(bool); ok && !ap {
					v.fail(path, "property %q is not in the schema", k)
				}
				continue
			}
			v.validate(sub, d[k], path+"."+k)
		}
	}
}

func hasType(doc any, t string) bool {
	switch t {
	case "object":
		_, ok := doc.(map[string]any)
		return ok
	case "array":
		_, ok := doc.([]any)
		return ok
	case "string":
		_, ok := doc.(string)
		return ok
	case "boolean":
		_, ok := doc.(bool)
		return ok
	case "integer":
		f, ok := doc.(float64)
		return ok && f == float64(int64(f))
	case "number":
		_, ok := doc.(float64)
		return ok
	}
	return false
}

// validate checks r's JSON against docs/report.schema.json.
func validate(t testing.TB, r *preflight.Report) {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	validateJSON(t, b)
}

func validateJSON(t testing.TB, b []byte) {
	t.Helper()
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	s := loadSchema(t)
	v := &schemaValidator{root: s}
	v.validate(s, doc, "$")
	if len(v.errs) > 0 {
		t.Errorf("report does not match docs/report.schema.json:\n  %s\n%s", strings.Join(v.errs, "\n  "), b)
	}
}

// The validator itself catches what it must.
func TestSchemaValidatorRejects(t *testing.T) {
	good := sampleReport()
	b, _ := json.Marshal(good)
	validateJSON(t, b)
	for name, mutate := range map[string]func(m map[string]any){
		"missing counts": func(m map[string]any) { delete(m, "counts") },
		"bad severity":   func(m map[string]any) { finding0(m)["severity"] = "critical" },
		"extra property": func(m map[string]any) { finding0(m)["color"] = "red" },
		"bad remediation": func(m map[string]any) {
			finding0(m)["remediations"] = []any{map[string]any{"type": "url", "text": "x"}}
		},
		"bad key":   func(m map[string]any) { finding0(m)["key"] = "NoDot" },
		"version 2": func(m map[string]any) { m["version"] = 2 },
		"bad date":  func(m map[string]any) { m["generated_at"] = "yesterday" },
	} {
		var m map[string]any
		json.Unmarshal(b, &m)
		mutate(m)
		mb, _ := json.Marshal(m)
		var doc any
		json.Unmarshal(mb, &doc)
		s := loadSchema(t)
		v := &schemaValidator{root: s}
		v.validate(s, doc, "$")
		if len(v.errs) == 0 {
			t.Errorf("%s: accepted", name)
		}
	}
}

func finding0(m map[string]any) map[string]any {
	return m["findings"].([]any)[0].(map[string]any)
}
