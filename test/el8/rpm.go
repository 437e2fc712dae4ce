package el8

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/keyarchos/kos-upgrade/test/testenv"
)

// rpmRecipe is mixed into the build's cache key: bump it whenever the recipe
// below changes what is built.
const rpmRecipe = "rpm-4.14.3 recipe 2"

// RPMTarball is the file name of rpm's sources in Sources().
const RPMTarball = "rpm-4.14.3.tar.xz"

// Python36Env overrides the Python 3.6 interpreter the bindings are built
// for (EL8's platform-python is 3.6).
const Python36Env = "KOS_UPGRADE_PYTHON36"

// Python36 returns the Python 3.6 interpreter: $KOS_UPGRADE_PYTHON36, else
// pyenv's 3.6.15 in root's home.
func Python36() string {
	if p := os.Getenv(Python36Env); p != "" {
		return p
	}
	return "/root/.pyenv/versions/3.6.15/bin/python3.6"
}

// Flavour is how rpm's Python bindings return header strings.
type Flavour string

const (
	// Bytes is plain rpm 4.14.3 (EL 8.0-8.4): header strings are bytes.
	Bytes Flavour = "bytes"
	// Str is 4.14.3 with upstream commit 84920f8 backported (EL 8.5 and
	// later): header strings are str.
	Str Flavour = "str"
)

// Flavours lists both, for table tests.
var Flavours = []Flavour{Bytes, Str}

// RPM is EL8's rpm 4.14.3 built into a private prefix: librpm with a
// Berkeley DB rpmdb (Debian's libdb5.3, EL8's version), NSS, Lua 5.3, and
// the Python 3.6 bindings in both flavours, each in a venv of its own.
type RPM struct {
	Prefix string // bin/rpm, lib/librpm.so.8 (found through the rpath), lib/rpm/macros
}

// Bin returns the path of one of the built programs (rpm, rpmdb, rpmkeys).
func (r *RPM) Bin(name string) string { return filepath.Join(r.Prefix, "bin", name) }

// Python returns the interpreter of flavour f: a Python 3.6 venv whose own
// site-packages holds the rpm module, so that it imports rpm 4.14.3 without
// PYTHONPATH, also when run isolated (-I).
func (r *RPM) Python(f Flavour) string {
	return filepath.Join(r.Prefix, "py-"+string(f), "bin", "python3")
}

// RPMTools lists what the build needs: the Debian packages of test/run.sh
// provide them (build-essential autoconf automake autopoint libtool
// gettext pkg-config patch libdb5.3-dev libpopt-dev libmagic-dev
// liblua5.3-dev libarchive-dev zlib1g-dev libbz2-dev liblzma-dev libzstd-dev
// libnss3-dev libnspr4-dev libcap-dev libacl1-dev libelf-dev libdw-dev).
var RPMTools = []string{"gcc", "make", "autoreconf", "libtoolize", "autopoint", "pkg-config", "patch", "tar", "xz",
	"/usr/include/db.h", "/usr/include/lua5.3/lua.h", "/usr/include/nss/nss.h", "/usr/include/popt.h",
	"/usr/include/magic.h", "/usr/include/archive.h", "/usr/include/zstd.h", "/usr/include/sys/capability.h",
	"/usr/include/acl/libacl.h", "/usr/include/elfutils/libdw.h"}

// MustRPM is BuildRPM for tests: it skips (fails in CI) without root, the
// build tools or Python 3.6, and fails the test when the build fails.
func MustRPM(t testing.TB) *RPM {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTools(t, append([]string{Python36()}, RPMTools...)...)
	r, err := BuildRPM(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// BuildRPM returns the cached build of rpm 4.14.3, building it first (a few
// minutes) when the cache has none for these sources and this recipe.
func BuildRPM(ctx context.Context) (*RPM, error) {
	src, err := Sources()
	if err != nil {
		return nil, err
	}
	tarball := filepath.Join(src, RPMTarball)
	py := Python36()
	key, err := Key(rpmRecipe+"\x00"+py, tarball)
	if err != nil {
		return nil, err
	}
	dir, err := Cached("rpm-4.14.3", key, func(dir string) error {
		return buildRPM(ctx, tarball, py, dir, Path("rpm-4.14.3", key))
	})
	if err != nil {
		return nil, err
	}
	// Checked once published: rpm reads its configuration from the
	// directory it was configured for. A build that fails the check is
	// removed, never left in the cache.
	r := &RPM{Prefix: dir}
	if err := checkRPM(ctx, r); err != nil {
		if rerr := os.RemoveAll(dir); rerr != nil {
			return nil, fmt.Errorf("%w (and cannot remove the bad build: %v)", err, rerr)
		}
		return nil, err
	}
	return r, nil
}

// luaCompat defines the two Lua 5.1 module functions rpm 4.14 calls
// (rpmio/rpmlua.c, luaext/): Debian's liblua5.3 is built without
// LUA_COMPAT_MODULE, which declares them (the build defines that macro) and
// would compile them into the library. rpm only registers flat module
// names ("rpm", "posix", "rex", "os"), which is all this handles.
const luaCompat = `
/* kos-upgrade test build: Lua 5.1 module functions missing from Debian's liblua5.3 */
LUALIB_API void luaL_pushmodule(lua_State *L, const char *modname, int sizehint)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_getfield(L, -1, modname) != LUA_TTABLE) {
        lua_pop(L, 1);
        if (lua_getglobal(L, modname) != LUA_TTABLE) {
            lua_pop(L, 1);
            lua_createtable(L, 0, sizehint);
            lua_pushvalue(L, -1);
            lua_setglobal(L, modname);
        }
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, modname);
    }
    lua_remove(L, -2);
}

LUALIB_API void luaL_openlib(lua_State *L, const char *libname, const luaL_Reg *l, int nup)
{
    if (libname != NULL) {
        int n = 0;
        const luaL_Reg *r;
        for (r = l; r != NULL && r->name != NULL; r++)
            n++;
        luaL_pushmodule(L, libname, n);
        lua_insert(L, -(nup + 1));
    }
    if (l != NULL)
        luaL_setfuncs(L, l, nup);
    else
        lua_pop(L, nup);
}
`

// strPatch makes the bindings return header strings as str, as EL 8.5+
// does by backporting upstream rpm commit 84920f8 ("return all string data
// as surrogate-escaped utf-8 strings"): string tag data is decoded instead
// of handed out as bytes.
const strPatch = `--- a/python/rpmsystem-py.h
+++ b/python/rpmsystem-py.h
@@ -52,4 +52,16 @@
 #define PyInt_AsSsize_t PyLong_AsSsize_t
 #endif
 
+#include <string.h>
+static inline PyObject * utf8FromString(const char *s)
+{
+    if (s == NULL)
+        Py_RETURN_NONE;
+#if PY_MAJOR_VERSION >= 3
+    return PyUnicode_DecodeUTF8(s, strlen(s), "surrogateescape");
+#else
+    return PyBytes_FromString(s);
+#endif
+}
+
 #endif	/* H_SYSTEM_PYTHON */
--- a/python/rpmtd-py.c
+++ b/python/rpmtd-py.c
@@ -17,7 +17,7 @@
 
     switch (tclass) {
     case RPM_STRING_CLASS:
-	res = PyBytes_FromString(rpmtdGetString(td));
+	res = utf8FromString(rpmtdGetString(td));
 	break;
     case RPM_NUMERIC_CLASS:
 	res = PyLong_FromLongLong(rpmtdGetNumber(td));
`

// buildRPM builds rpm into out, which becomes final (the rpath and the
// configuration directory name final).
func buildRPM(ctx context.Context, tarball, py, out, final string) error {
	work, err := os.MkdirTemp("", "kos-el8-rpm-")
	if err != nil {
		return fmt.Errorf("cannot create build directory: %w", err)
	}
	defer os.RemoveAll(work)
	logf, err := os.Create(filepath.Join(out, "build.log"))
	if err != nil {
		return fmt.Errorf("cannot create build log: %w", err)
	}
	defer logf.Close()
	b := &builder{ctx: ctx, log: logf}
	b.run(work, nil, "tar", "-xJf", tarball)
	src := filepath.Join(work, "rpm-4.14.3")
	if b.err == nil {
		b.err = appendFile(filepath.Join(src, "rpmio", "rpmlua.c"), luaCompat)
	}
	b.run(src, nil, "./autogen.sh", "--noconfigure")
	pyPrefix := filepath.Dir(filepath.Dir(py))
	lua := func(what string) string {
		if b.err != nil {
			return ""
		}
		o, err := exec.CommandContext(ctx, "pkg-config", what, "lua5.3").Output()
		if err != nil {
			b.err = fmt.Errorf("cannot run pkg-config %s lua5.3: %w", what, err)
		}
		return strings.TrimSpace(string(o))
	}
	env := []string{
		"PYTHON=" + py,
		"PKG_CONFIG_PATH=" + filepath.Join(pyPrefix, "lib", "pkgconfig"),
		"LUA_CFLAGS=" + lua("--cflags") + " -DLUA_COMPAT_MODULE",
		"LUA_LIBS=" + lua("--libs"),
		"CFLAGS=-O2 -g -fcommon",
		"CPPFLAGS=-I/usr/include/nss -I/usr/include/nspr",
		"LDFLAGS=-Wl,-rpath," + filepath.Join(final, "lib"),
	}
	b.run(src, env, "./configure", "--prefix="+final, "--localstatedir=/var", "--with-vendor=redhat",
		"--with-external-db", "--with-crypto=nss", "--with-lua", "--with-cap", "--with-acl", "--enable-zstd",
		"--enable-python", "--disable-plugins", "--disable-nls")
	jobs := fmt.Sprintf("-j%d", runtime.NumCPU())
	b.run(src, nil, "make", jobs)
	stage := filepath.Join(work, "stage")
	b.run(src, nil, "make", "install", "DESTDIR="+stage)
	if b.err != nil {
		return b.fail()
	}
	// The staged tree lives at stage/final: move it to out.
	entries, err := os.ReadDir(stage + final)
	if err != nil {
		return fmt.Errorf("cannot read the staged install: %w", err)
	}
	for _, e := range entries {
		if err := os.Rename(filepath.Join(stage+final, e.Name()), filepath.Join(out, e.Name())); err != nil {
			return fmt.Errorf("cannot move the staged install: %w", err)
		}
	}
	site := filepath.Join("lib", "python3.6", "site-packages")
	b.venv(py, filepath.Join(out, "py-bytes"), filepath.Join(out, site, "rpm"))
	// The str flavour: patch the bindings, rebuild (only they changed)
	// and install the whole tree again, so that libtool relinks the
	// module against this rpm's libraries, not the system's.
	b.run(src, nil, "patch", "-p1", "-i", writeTemp(work, "str.patch", strPatch, &b.err))
	b.run(src, nil, "make", jobs)
	stage2 := filepath.Join(work, "stage-str")
	b.run(src, nil, "make", "install", "DESTDIR="+stage2)
	b.venv(py, filepath.Join(out, "py-str"), filepath.Join(stage2+final, site, "rpm"))
	if b.err != nil {
		return b.fail()
	}
	return nil
}

// checkRPM imports both flavours of the bindings, isolated (-I), and
// checks their version and what type header strings come back as.
func checkRPM(ctx context.Context, r *RPM) error {
	for _, f := range Flavours {
		got, err := exec.CommandContext(ctx, r.Python(f), "-I", "-c", `import rpm
h = rpm.hdr()
h[rpm.RPMTAG_NAME] = "probe"
print(rpm.__version__, type(h[rpm.RPMTAG_NAME]).__name__)`).CombinedOutput()
		if err != nil {
			return fmt.Errorf("cannot import the built rpm module (%s): %w: %s", f, err, got)
		}
		if want := "4.14.3 " + string(f); strings.TrimSpace(string(got)) != want {
			return fmt.Errorf("the built rpm module (%s) says %q, want %q", f, strings.TrimSpace(string(got)), want)
		}
	}
	return nil
}

// builder runs build commands until the first failure, logging to log.
type builder struct {
	ctx context.Context
	log *os.File
	err error
}

func (b *builder) run(dir string, env []string, name string, args ...string) {
	if b.err != nil {
		return
	}
	fmt.Fprintf(b.log, "+ (cd %s && %s %s)\n", dir, name, strings.Join(args, " "))
	cmd := exec.CommandContext(b.ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = b.log, b.log
	if err := cmd.Run(); err != nil {
		b.err = fmt.Errorf("cannot run %s %s: %w", name, strings.Join(args, " "), err)
	}
}

// venv makes a Python venv at dir whose site-packages holds a copy of the
// rpm package at pkg.
func (b *builder) venv(py, dir, pkg string) {
	b.run("/", nil, py, "-m", "venv", "--without-pip", dir)
	b.run("/", nil, "cp", "-a", pkg, filepath.Join(dir, "lib", "python3.6", "site-packages", "rpm"))
}

// fail returns b.err with the end of the build log.
func (b *builder) fail() error {
	b.log.Sync()
	log, _ := os.ReadFile(b.log.Name())
	lines := bytes.Split(bytes.TrimSpace(log), []byte("\n"))
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return fmt.Errorf("%w\n%s", b.err, bytes.Join(lines, []byte("\n")))
}

func appendFile(name, text string) error {
	f, err := os.OpenFile(name, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("cannot patch %s: %w", name, err)
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return fmt.Errorf("cannot patch %s: %w", name, err)
	}
	return f.Close()
}

func writeTemp(dir, name, text string, errp *error) string {
	p := filepath.Join(dir, name)
	if *errp == nil {
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			*errp = fmt.Errorf("cannot write %s: %w", name, err)
		}
	}
	return p
}
