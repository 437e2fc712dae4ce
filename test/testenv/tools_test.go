package testenv_test

import (
	"bufio"
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/pkg/sysroot"
	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// notFromDebian are tools the tests require that no Debian package of
// test/run.sh provides, each with where it comes from instead.
var notFromDebian = map[string]string{
	// The Go toolchain: test/run.sh requires Go 1.24+ in /usr/local/go
	// (or on PATH) and says so when it is missing.
	"go": "Go toolchain",
	// node and npm: test/run.sh installs Debian's nodejs and npm only when
	// the machine has none of its own (pyenv/nvm/nodesource machines keep
	// theirs); the Cockpit browser test runs `npm ci` itself.
	"node": "nodejs (test/run.sh, when missing)",
	"npm":  "npm (test/run.sh, when missing)",
	// Tools run inside the QEMU guest, not on the host: the guest's
	// packages come from test/e2e/base.go (debootstrap --include).
	"lvm":      "QEMU guest (lvm2)",
	"mkfs.xfs": "QEMU guest (xfsprogs)",
}

// dynamicArgs are calls among the arguments of RequireTools, by their
// expression (or a function's name in any package), and their value on
// this machine; "" marks a value that comes from elsewhere than Debian (the
// reason is the comment).
var dynamicArgs = map[string]string{
	// The helper's interpreter: platform-python on EL8, else /usr/bin/python3.
	"sysroot.Python()": sysroot.Python(),
	// pyenv's Python 3.6 (EL8's platform-python is 3.6) for EL8's rpm
	// bindings (test/el8): ~/.pyenv/versions/3.6.*, not a Debian package.
	"Python36()": "",
}

// notFromDebianPath reports whether p is a file of pyenv (its interpreters
// and shims) or of the Go toolchain in /usr/local/go: not from Debian.
func notFromDebianPath(p string) bool {
	return strings.Contains(p, "/.pyenv/") || strings.HasPrefix(p, "/usr/local/go/")
}

// requirement is a tool or file a test requires, and where.
type requirement struct {
	name string
	pos  string
}

// symbol is a package-level constant or variable: its value and the
// package and imports of the file that declares it.
type symbol struct {
	expr    ast.Expr
	pkg     string
	imports map[string]string
	file    bool // the file being scanned: its local literals count
}

const modulePath = "github.com/keyarchos/kos-upgrade"

// scanRequirements finds, in every Go file of the repository, the tools and
// files tests require: the arguments of testenv.RequireTools (literals,
// package-level constants and []string variables of any package of the
// module, append of them, local literals) and the command of testenv.Run
// (both fail or skip the test without the tool). A plain exec.Command is
// not a requirement: tests use it for optional checks too (if the tool is
// there). An argument of RequireTools it cannot resolve is an error: the
// check must see every requirement.
func scanRequirements(repo string) ([]requirement, []error) {
	fset := token.NewFileSet()
	files := map[string][]*ast.File{} // by directory
	err := filepath.WalkDir(repo, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "node_modules" || d.Name() == "vendor" || d.Name() == "bin") && p != repo {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			return err
		}
		files[filepath.Dir(p)] = append(files[filepath.Dir(p)], f)
		return nil
	})
	if err != nil {
		return nil, []error{err}
	}
	pkgPath := func(dir string) string {
		rel, _ := filepath.Rel(repo, dir)
		return filepath.ToSlash(filepath.Join(modulePath, rel))
	}
	syms := map[string]map[string]symbol{} // import path → name → symbol
	for dir, gofiles := range files {
		pkg := pkgPath(dir)
		if syms[pkg] == nil {
			syms[pkg] = map[string]symbol{}
		}
		for _, f := range gofiles {
			imports := fileImports(f)
			for _, d := range f.Decls {
				gd, ok := d.(*ast.GenDecl)
				if !ok || (gd.Tok != token.CONST && gd.Tok != token.VAR) {
					continue
				}
				for _, spec := range gd.Specs {
					vs := spec.(*ast.ValueSpec)
					for i, n := range vs.Names {
						if i < len(vs.Values) {
							syms[pkg][n.Name] = symbol{expr: vs.Values[i], pkg: pkg, imports: imports}
						}
					}
				}
			}
		}
	}
	var reqs []requirement
	var errs []error
	for dir, gofiles := range files {
		for _, f := range gofiles {
			ev := evaluator{syms: syms, locals: localLiterals(f)}
			here := symbol{pkg: pkgPath(dir), imports: fileImports(f), file: true}
			ast.Inspect(f, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				pos := fset.Position(call.Pos())
				at := fmt.Sprintf("%s:%d", strings.TrimPrefix(pos.Filename, repo+"/"), pos.Line)
				fun := exprString(call.Fun)
				switch {
				case fun == "testenv.RequireTools" || fun == "RequireTools" && f.Name.Name == "testenv":
					for _, a := range call.Args[1:] {
						vals, err := ev.eval(a, here, 0)
						if err != nil {
							errs = append(errs, fmt.Errorf("%s: RequireTools argument %s: %w", at, exprString(a), err))
						}
						for _, v := range vals {
							if v != "" {
								reqs = append(reqs, requirement{v, at})
							}
						}
					}
				case fun == "testenv.Run" || fun == "Run" && f.Name.Name == "testenv":
					if len(call.Args) > 1 {
						if s, ok := literal(call.Args[1]); ok {
							reqs = append(reqs, requirement{s, at})
						}
					}
				}
				return true
			})
		}
	}
	sort.Slice(reqs, func(i, j int) bool {
		return reqs[i].name < reqs[j].name || reqs[i].name == reqs[j].name && reqs[i].pos < reqs[j].pos
	})
	return reqs, errs
}

// fileImports maps the names a file refers to its imports by to their paths.
func fileImports(f *ast.File) map[string]string {
	imports := map[string]string{}
	for _, im := range f.Imports {
		path, _ := strconv.Unquote(im.Path.Value)
		n := filepath.Base(path)
		if im.Name != nil {
			n = im.Name.Name
		}
		imports[n] = path
	}
	return imports
}

// localLiterals maps the names a file gives a string literal (name := "…",
// const or var name = "…", in a function or not) to those literals; a name
// also given anything else gets "\x00" among them.
func localLiterals(f *ast.File) map[string][]string {
	out := map[string][]string{}
	ast.Inspect(f, func(n ast.Node) bool {
		if vs, ok := n.(*ast.ValueSpec); ok {
			// const name = "…" or var name = "…", also inside a function.
			for i, id := range vs.Names {
				if i >= len(vs.Values) {
					continue
				}
				if s, ok := literal(vs.Values[i]); ok {
					out[id.Name] = append(out[id.Name], s)
				} else {
					out[id.Name] = append(out[id.Name], "\x00")
				}
			}
			return true
		}
		as, ok := n.(*ast.AssignStmt)
		if !ok || len(as.Lhs) != len(as.Rhs) {
			return true
		}
		for i, l := range as.Lhs {
			id, ok := l.(*ast.Ident)
			if !ok {
				continue
			}
			if s, ok := literal(as.Rhs[i]); ok {
				out[id.Name] = append(out[id.Name], s)
			} else {
				out[id.Name] = append(out[id.Name], "\x00") // assigned something else too
			}
		}
		return true
	})
	return out
}

type evaluator struct {
	syms   map[string]map[string]symbol
	locals map[string][]string // of the file being scanned
}

// eval returns the strings e stands for, in the package and imports of ctx.
func (ev evaluator) eval(e ast.Expr, ctx symbol, depth int) ([]string, error) {
	if depth > 20 {
		return nil, fmt.Errorf("cannot resolve it: too deep")
	}
	if call, ok := e.(*ast.CallExpr); ok {
		// By its expression (sysroot.Python()), else by the function's
		// name in any package (el8.Python36() or Python36()).
		if v, ok := dynamicArgs[exprString(e)]; ok {
			return []string{v}, nil
		}
		if sel, ok := call.Fun.(*ast.SelectorExpr); ok {
			if v, ok := dynamicArgs[sel.Sel.Name+"()"]; ok {
				return []string{v}, nil
			}
		}
	}
	switch x := e.(type) {
	case *ast.BasicLit:
		if s, ok := literal(x); ok {
			return []string{s}, nil
		}
	case *ast.Ident:
		if ctx.file {
			// Every literal the file gives the name (a superset of what
			// this call needs), unless it is also given something else.
			if v := ev.locals[x.Name]; len(v) > 0 && !slices.Contains(v, "\x00") {
				return slices.Compact(slices.Sorted(slices.Values(v))), nil
			}
		}
		if sym, ok := ev.syms[ctx.pkg][x.Name]; ok {
			return ev.eval(sym.expr, sym, depth+1)
		}
	case *ast.SelectorExpr:
		if pkg, ok := x.X.(*ast.Ident); ok {
			if sym, ok := ev.syms[ctx.imports[pkg.Name]][x.Sel.Name]; ok {
				return ev.eval(sym.expr, sym, depth+1)
			}
		}
	case *ast.CompositeLit:
		var out []string
		for _, el := range x.Elts {
			v, err := ev.eval(el, ctx, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, v...)
		}
		return out, nil
	case *ast.CallExpr:
		if exprString(x.Fun) == "append" {
			var out []string
			for _, a := range x.Args {
				v, err := ev.eval(a, ctx, depth+1)
				if err != nil {
					return nil, err
				}
				out = append(out, v...)
			}
			return out, nil
		}
	}
	return nil, fmt.Errorf("cannot resolve %s statically: use a string literal, a package-level constant or []string variable, or add it to dynamicArgs", exprString(e))
}

func literal(e ast.Expr) (string, bool) {
	bl, ok := e.(*ast.BasicLit)
	if !ok || bl.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(bl.Value)
	return s, err == nil
}

func exprString(e ast.Expr) string {
	switch x := e.(type) {
	case *ast.Ident:
		return x.Name
	case *ast.SelectorExpr:
		return exprString(x.X) + "." + x.Sel.Name
	case *ast.CallExpr:
		return exprString(x.Fun) + "()"
	case *ast.BasicLit:
		return x.Value
	}
	return fmt.Sprintf("%T", e)
}

// runShPackages parses the Debian packages test/run.sh installs: its need
// list and its other apt-get install lines.
func runShPackages(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// The need=( … ) array: words up to the closing parenthesis, comments
	// (# to the end of the line) skipped.
	var pkgs []string
	in, closed := false, false
	for _, l := range strings.Split(string(b), "\n") {
		if !in {
			_, rest, ok := strings.Cut(l, "local need=(")
			if !ok {
				continue
			}
			in, l = true, rest
		}
		l, _, _ = strings.Cut(l, "#")
		words, _, end := strings.Cut(l, ")")
		pkgs = append(pkgs, strings.Fields(words)...)
		if end {
			closed = true
			break
		}
	}
	if !closed || len(pkgs) == 0 {
		t.Fatalf("%s: no need=(…) list", path)
	}
	for _, l := range strings.Split(string(b), "\n") {
		_, rest, ok := strings.Cut(l, "apt-get ")
		if !ok {
			continue
		}
		_, args, ok := strings.Cut(rest, " install ")
		if !ok {
			continue
		}
		for _, w := range strings.Fields(args) {
			if !strings.HasPrefix(w, "-") && !strings.ContainsAny(w, `$"`) {
				pkgs = append(pkgs, w)
			}
		}
	}
	return pkgs
}

// installedWith returns the packages apt installs with pkgs: them and their
// Depends and Pre-Depends, recursively (Recommends do not count: an apt
// configured without them must work too).
func installedWith(t *testing.T, pkgs []string) map[string]bool {
	t.Helper()
	args := append([]string{"depends", "--recurse", "--installed", "--no-recommends", "--no-suggests", "--no-conflicts",
		"--no-breaks", "--no-replaces", "--no-enhances"}, pkgs...)
	out, err := exec.Command("apt-cache", args...).Output()
	if err != nil {
		t.Fatalf("apt-cache %s: %v", strings.Join(args, " "), err)
	}
	set := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if l := sc.Text(); l != "" && l[0] != ' ' && l[0] != '<' {
			set[strings.TrimSpace(l)] = true
		}
	}
	return set
}

// basePackages are the packages every Debian system has: Essential ones
// and those of priority required.
func basePackages(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Package} ${Essential} ${Priority}\n").Output()
	if err != nil {
		t.Fatalf("dpkg-query: %v", err)
	}
	set := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		if fl := strings.Fields(l); len(fl) == 3 && (fl[1] == "yes" || fl[2] == "required") {
			set[fl[0]] = true
		}
	}
	return set
}

// candidates are the paths dpkg may know a file by: as given, with its
// symbolic links resolved, and across the merged /usr (/bin and /usr/bin).
func candidates(p string) []string {
	var out []string
	add := func(p string) {
		for _, c := range []string{p, swapUsr(p)} {
			if c != "" && !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
	}
	add(p)
	if r, err := filepath.EvalSymlinks(p); err == nil {
		add(r)
	}
	return out
}

func swapUsr(p string) string {
	for _, d := range []string{"/bin/", "/sbin/", "/lib/", "/lib64/"} {
		if strings.HasPrefix(p, "/usr"+d) {
			return strings.TrimPrefix(p, "/usr")
		}
		if strings.HasPrefix(p, d) {
			return "/usr" + p
		}
	}
	return ""
}

// owners asks dpkg -S for the packages owning each path.
func owners(paths []string) map[string][]string {
	out := map[string][]string{}
	var stdout bytes.Buffer
	cmd := exec.Command("dpkg", append([]string{"-S"}, paths...)...)
	cmd.Stdout = &stdout
	cmd.Run() // exits 1 when a path has no owner; the others are printed
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "diversion ") {
			continue
		}
		pkgs, path, ok := strings.Cut(l, ": ")
		if !ok {
			continue
		}
		for _, p := range strings.Split(pkgs, ", ") {
			p, _, _ = strings.Cut(strings.TrimSpace(p), ":") // drop :amd64
			out[path] = append(out[path], p)
		}
	}
	return out
}

// TestRequiredToolsInstalledByRunSh: every tool or file a test requires
// belongs to a Debian package test/run.sh installs (or one they depend on,
// or one every Debian system has), so that the README's test command works
// on a fresh machine.
func TestRequiredToolsInstalledByRunSh(t *testing.T) {
	testenv.RequireTools(t, "dpkg", "dpkg-query", "apt-cache")
	repo := testenv.RepoDir(t)
	reqs, errs := scanRequirements(repo)
	for _, err := range errs {
		t.Error(err)
	}
	if len(reqs) < 20 {
		t.Fatalf("found only %d requirements in the tests: the scan is broken", len(reqs))
	}
	installed := installedWith(t, runShPackages(t, filepath.Join(repo, "test", "run.sh")))
	base := basePackages(t)

	byName := map[string][]string{} // name → positions
	for _, r := range reqs {
		byName[r.name] = append(byName[r.name], r.pos)
	}
	for name, from := range notFromDebian {
		if len(byName[name]) == 0 {
			t.Errorf("notFromDebian lists %s (%s), which no test requires any more: drop it", name, from)
		}
	}
	paths := map[string]string{} // name → path on this machine
	var all []string
	for name, pos := range byName {
		if _, ok := notFromDebian[name]; ok {
			continue
		}
		p := name
		if !filepath.IsAbs(name) {
			if strings.Contains(name, "/") {
				continue // a relative path: a file the test makes
			}
			lp, err := exec.LookPath(name)
			if err != nil {
				t.Errorf("%s (required at %s) is not on PATH here: cannot tell its package", name, pos[0])
				continue
			}
			p = lp
			if notFromDebianPath(p) {
				// pyenv's shim first on PATH here: a fresh machine finds
				// the system's, if there is one.
				for _, d := range []string{"/usr/bin", "/usr/sbin", "/bin", "/sbin"} {
					if _, err := os.Stat(filepath.Join(d, name)); err == nil {
						p = filepath.Join(d, name)
						break
					}
				}
			}
		}
		if notFromDebianPath(p) {
			continue
		}
		paths[name] = p
		all = append(all, candidates(p)...)
	}
	own := owners(all)
	for name, p := range paths {
		var pkgs []string
		for _, c := range candidates(p) {
			pkgs = append(pkgs, own[c]...)
		}
		ok := false
		for _, pkg := range pkgs {
			ok = ok || installed[pkg] || base[pkg]
		}
		switch {
		case len(pkgs) == 0:
			t.Errorf("%s (%s, required at %s) belongs to no Debian package: install it from one test/run.sh installs, or list it in notFromDebian with where it comes from", name, p, byName[name][0])
		case !ok:
			t.Errorf("%s (%s, required at %s) comes from %s, which test/run.sh does not install: add it to the need list", name, p, byName[name][0], strings.Join(pkgs, " or "))
		default:
			t.Logf("%s: %s", name, strings.Join(pkgs, ", "))
		}
	}
}

// TestScanRequirements shows what the scan finds and refuses.
func TestScanRequirements(t *testing.T) {
	dir := t.TempDir()
	for p, src := range map[string]string{
		"go.mod": "module " + modulePath + "\n",
		"tools/tools.go": `package tools
const EFI = "/usr/lib/x.efi"
var Tools = []string{"a", "b"}
var More = append([]string{"f", EFI}, Tools...)
func Python36() string { return "" }
`,
		"x/x_test.go": `package x
import (
	"os/exec"
	"testing"
	"` + modulePath + `/test/testenv"
	"` + modulePath + `/tools"
)
const local = "c"
var more = []string{"d"}
func TestX(t *testing.T) {
	const python = "/usr/bin/python9"
	testenv.RequireTools(t, python)
	{
		python := "/usr/bin/python8"
		_ = python
	}
	polkitd := "/usr/lib/polkitd"
	testenv.RequireTools(t, "lit", local, tools.EFI, polkitd)
	testenv.RequireTools(t, tools.Tools...)
	testenv.RequireTools(t, append([]string{"e"}, more...)...)
	testenv.RequireTools(t, append(append([]string{}, tools.More...), polkitd)...)
	testenv.RequireTools(t, append([]string{tools.Python36()}, "g")...)
	testenv.Run(t, "runtool", "arg")
	exec.Command("optionaltool", "x")
	var dyn string
	testenv.RequireTools(t, dyn)
}
`,
		"pkg/p.go": `package p
import "os/exec"
func f() { exec.Command("producttool") }
`,
	} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(dir, p), []byte(src), 0o644)
	}
	reqs, errs := scanRequirements(dir)
	var got []string
	for _, r := range reqs {
		got = append(got, r.name)
	}
	want := "/usr/bin/python8 /usr/bin/python9 /usr/lib/polkitd /usr/lib/polkitd /usr/lib/x.efi /usr/lib/x.efi a a b b c d e f g lit runtool"
	if strings.Join(got, " ") != want {
		t.Errorf("found %q, want %q", strings.Join(got, " "), want)
	}
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "RequireTools argument dyn") {
		t.Errorf("errors %v, want one for dyn", errs)
	}
}
