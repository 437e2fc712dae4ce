package el8

import (
	"slices"
	"strings"
	"testing"
)

func TestParseGperf(t *testing.T) {
	const head = "%{\n#include <stddef.h>\n%}\nstruct ConfigPerfItem;\n%%\n"
	for _, tc := range []struct {
		name, body string
		head       string            // instead of the usual head
		want       map[string]string // section → sorted keys joined by spaces
		err        string
	}{
		{
			name: "plain items, a macro expanded for two sections, both m4_ifdef branches",
			body: "m4_define(`KILL_ITEMS',\n`$1.KillMode,   config_parse_kill_mode, 0, 0\n" +
				"m4_ifdef(`HAVE_SECCOMP',\n`$1.SystemCallFilter, config_parse_syscall_filter, 0, 0',\n`$1.SystemCallFilter, config_parse_warn_compat, 0, 0')\n" +
				"$1.KillSignal, config_parse_signal, 0, 0'\n)m4_dnl\n" +
				"Unit.Description, config_parse_unit_string_printf, 0, 0\n" +
				"Service.Type, config_parse_service_type, 0, 0\n" +
				"KILL_ITEMS(Service)m4_dnl\nKILL_ITEMS(Scope)m4_dnl\n" +
				"m4_dnl The [Install] section is ignored here.\nInstall.WantedBy, NULL, 0, 0\n",
			want: map[string]string{
				"Unit": "Description", "Service": "KillMode KillSignal SystemCallFilter Type",
				"Scope": "KillMode KillSignal SystemCallFilter", "Install": "WantedBy",
			},
		},
		{
			name: "a macro used before its definition",
			body: "Unit.Description, x, 0, 0\nService.Type, x, 0, 0\nKILL_ITEMS(Service)m4_dnl\nInstall.WantedBy, NULL, 0, 0\n",
			err:  "KILL_ITEMS used before its m4_define",
		},
		{
			name: "a section item inside a macro",
			body: "m4_define(`X',\n`Unit.Description, x, 0, 0'\n)m4_dnl\n",
			err:  "outside its place",
		},
		{
			name: "no [Install]",
			body: "Unit.Description, x, 0, 0\nService.Type, x, 0, 0\n",
			err:  "no [Unit], [Service] or [Install]",
		},
		{
			name: "items before %% are not directives",
			head: "Unit.Description, x, 0, 0\nService.Type, x, 0, 0\nInstall.WantedBy, NULL, 0, 0\n%%\n",
			err:  "no [Unit], [Service] or [Install]",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := head + tc.body
			if tc.head != "" {
				src = tc.head + tc.body
			}
			d, err := ParseGperf(strings.NewReader(src))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(d) != len(tc.want) {
				t.Errorf("sections %v, want %v", d, tc.want)
			}
			for section, keys := range tc.want {
				var got []string
				for k := range d[section] {
					got = append(got, k)
				}
				slices.Sort(got)
				if strings.Join(got, " ") != keys {
					t.Errorf("[%s] = %q, want %q", section, strings.Join(got, " "), keys)
				}
			}
		})
	}
}
