# kos-upgrade package helper: dnf's solver and librpm's transaction set,
# driven by kos-upgrade (Go) over JSON lines.
#
# Usage: <python> -I kos_upgrade_helper.py COMMAND < request.json 3>protocol
# COMMAND is one of: resolve, assess, test, apply, fingerprint, files.
# The protocol has its own file descriptor, 3 (stdout when 3 is not open),
# kept from scriptlets; what dnf, rpm or a scriptlet prints on stdout and
# stderr is only logged by kos-upgrade. Every protocol line is one JSON
# object with a "type":
#   progress {step, action, package, n, total, message}
#   log      {message}
#   result   {...command specific...}
#   error    {kind, message, problems}
# Diagnostics go to stderr. Must stay compatible with Python 3.6 (EL8's
# platform-python) and dnf 4 / rpm 4.14.
import sys

# Never import from the working directory (python -c puts it first on
# sys.path when the interpreter lacks -I).
sys.path[:] = [p for p in sys.path if p not in ("", ".")]

import hashlib
import json
import os
import shutil
import stat
import tempfile
import time

rpm = None  # imported by main() once the rpm database path is configured



def protocol_file():
    """The protocol's file: fd 3, not inherited by scriptlets."""
    try:
        os.fstat(3)
    except OSError:
        return sys.stdout
    os.set_inheritable(3, False)
    return os.fdopen(3, "w")


OUT = protocol_file()


def emit(obj):
    OUT.write(json.dumps(obj, sort_keys=True) + "\n")
    OUT.flush()


def progress(step, n=0, total=0, action="", package="", message=""):
    emit({"type": "progress", "step": step, "n": n, "total": total,
          "action": action, "package": package, "message": message})


def hang(where):
    """Test hook (KOS_UPGRADE_TEST_HANG_AT): say so on the console and
    stop for good; the VM tests cut the power at that line."""
    msg = "KOS-TEST: hanging at %s\n" % where
    try:
        with open("/dev/console", "w") as c:
            c.write(msg)
    except (IOError, OSError):
        pass
    sys.stderr.write(msg)
    sys.stderr.flush()
    while True:
        time.sleep(3600)


class Failure(Exception):
    def __init__(self, kind, message, problems=None):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message
        self.problems = problems or []


def nevra(pkg):
    epoch = pkg.epoch or 0
    return "%s-%s:%s-%s.%s" % (pkg.name, epoch, pkg.version, pkg.release, pkg.arch)


def hdr_nevra(h):
    epoch = h[rpm.RPMTAG_EPOCH] or 0
    return "%s-%s:%s-%s.%s" % (_s(h[rpm.RPMTAG_NAME]), epoch, _s(h[rpm.RPMTAG_VERSION]),
                              _s(h[rpm.RPMTAG_RELEASE]), _s(h[rpm.RPMTAG_ARCH] or "noarch"))


def _s(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def load_rpm(req, work):
    """Import rpm with %_dbpath set to the root's database path.

    librpm (and libdnf, which re-reads rpm's configuration) take %_dbpath from
    the macro files; a distribution may point it elsewhere (Debian's rpm uses
    ~/.rpmdb). A private ~/.rpmmacros is the one file both always read, so the
    helper runs with HOME set to a directory holding one."""
    global rpm
    with open(os.path.join(work, ".rpmmacros"), "w") as f:
        f.write("%%_dbpath %s\n" % (req.get("dbpath") or "/var/lib/rpm"))
    os.environ["HOME"] = work
    import rpm as _rpm
    rpm = _rpm


def set_dbpath(req):
    rpm.addMacro("_dbpath", req.get("dbpath") or "/var/lib/rpm")


# ---------------------------------------------------------------- resolve

def setup_base(req, work, filelists=False, system=True):
    """A dnf.Base on req["root"] with the target release's repositories,
    metadata loaded (and the root's rpmdb unless system is False). Returns
    (base, enabled repos, gpg key URLs)."""
    import dnf
    import dnf.exceptions

    root = req["root"]
    base = dnf.Base()
    conf = base.conf
    dnfconf = os.path.join(root, "etc/dnf/dnf.conf")
    if os.path.exists(dnfconf):
        conf.config_file_path = dnfconf
        conf.read(priority=dnf.conf.PRIO_MAINCONFIG)
    conf.installroot = root
    # The dnf CLI loads the variables of /etc/dnf/vars (and /etc/yum/vars)
    # that repository files use ($contentdir, $stream...); dnf.Base does
    # not. Read them from the root before its repositories.
    conf.substitutions.update_from_etc(root)
    conf.cachedir = req["cachedir"]
    conf.logdir = work
    conf.persistdir = os.path.join(work, "persist")
    conf.reposdir = [os.path.join(root, "etc/yum.repos.d")]
    conf.releasever = req["release"]
    conf.substitutions["releasever"] = req["release"]
    conf.assumeyes = True
    conf.install_weak_deps = False
    if filelists and hasattr(conf, "optional_metadata_types"):
        # The kernel's module list is in filelists (dnf >= 4.2).
        types = list(conf.optional_metadata_types or [])
        if "filelists" not in types:
            types.append("filelists")
        conf.optional_metadata_types = types
    repos = req.get("repos") or []
    if repos:
        for r in repos:
            extra = {}
            if r.get("gpgkey"):
                extra["gpgkey"] = list(r["gpgkey"])
            if r.get("repo_gpgcheck"):
                # The metadata is signed (an --iso image with
                # repomd.xml.asc): dnf verifies it with the gpgkey files.
                extra["repo_gpgcheck"] = True
            if r.get("no_proxy"):
                # A loopback server (an --iso image): no proxy, whatever
                # dnf.conf or the environment say.
                extra["proxy"] = ""
                no = [x for x in os.environ.get("no_proxy", "").split(",") if x]
                if "127.0.0.1" not in no:
                    os.environ["no_proxy"] = ",".join(no + ["127.0.0.1"])
            base.repos.add_new_repo(r["id"], conf, baseurl=[r["baseurl"]], **extra)
    else:
        base.read_all_repos()
    enabled = list(base.repos.iter_enabled())
    if not enabled:
        raise Failure("config", "no enabled repository for release %s" % req["release"])
    keys = []
    for repo in enabled:
        for k in repo.gpgkey or []:
            if k not in keys:
                keys.append(k)
    progress("resolve", message="loading repository metadata")
    try:
        base.fill_sack(load_system_repo=system, load_available_repos=True)
    except dnf.exceptions.RepoError as e:
        raise Failure("repo", "cannot load repository metadata: %s" % e)
    return base, enabled, keys


def cmd_resolve(req):
    import dnf.exceptions

    set_dbpath(req)
    work = tempfile.mkdtemp(prefix="kos-upgrade-dnf-")
    try:
        base, enabled, keys = setup_base(req, work)
        base.conf.gpgcheck = False  # kos-upgrade verifies with rpmkeys itself
        for repo in enabled:
            repo.gpgcheck = False
            repo.pkgdir = req["stagedir"]
        progress("resolve", message="resolving the upgrade with dnf")
        applied = goal(base, req)
        try:
            base.resolve(allow_erasing=True)
        except dnf.exceptions.DepsolveError as e:
            lines = [l.strip() for l in str(e).splitlines() if l.strip()]
            raise Failure("depsolve", "dependency problems in the upgrade", lines)

        items = annotate_migration(transaction_items(base), applied)
        installs = [p for p in base.transaction.install_set]
        download(base, installs, req["stagedir"], items)
        emit({"type": "result", "items": items, "gpg_keys": keys, "migration": applied})
    finally:
        shutil.rmtree(work, ignore_errors=True)


INSTALL_ACTIONS = ("install", "upgrade", "downgrade", "reinstall")


def cmd_download(req):
    """The resolve command without the solver: download and stage the
    packages of a transaction resolved before (req["items"], from assess on
    the same root, release, repositories and rpmdb). Each package is found
    by its NEVRA in its repository; one that is no longer there is an error
    (the metadata changed since: resolve again). The items come back in
    their order, with file, size and sha256, as resolve emits them."""
    set_dbpath(req)
    work = tempfile.mkdtemp(prefix="kos-upgrade-dnf-")
    try:
        # The installed packages play no part: nothing is resolved.
        base, enabled, keys = setup_base(req, work, system=False)
        base.conf.gpgcheck = False  # kos-upgrade verifies with rpmkeys itself
        for repo in enabled:
            repo.gpgcheck = False
            repo.pkgdir = req["stagedir"]
        progress("resolve", message="downloading the transaction the assessment resolved (no new resolution)")
        items = [dict(it) for it in req.get("items") or []]
        avail = base.sack.query().available()
        pkgs = []
        missing = []
        for it in items:
            if it.get("action") not in INSTALL_ACTIONS:
                continue
            found = None
            for p in avail.filter(name=it.get("name"), arch=it.get("arch")):
                if nevra(p) == it.get("nevra") and p.reponame == it.get("repo"):
                    found = p
                    break
            if found is None:
                missing.append("%s (repository %s)" % (it.get("nevra"), it.get("repo")))
                continue
            pkgs.append(found)
        if missing:
            raise Failure("repo", "the repositories no longer have packages of the resolved transaction", missing)
        download(base, pkgs, req["stagedir"], items)
        emit({"type": "result", "items": items, "gpg_keys": keys})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def goal(base, req):
    """Put the upgrade into dnf's goal: a distro-sync of everything and, for
    a migration to another distribution, the swaps of its package map as
    goal operations (install the new names, remove the installed old ones),
    all resolved together by dnf's solver with erasing allowed. Returns the
    swaps that applied, their "from" trimmed to the installed packages."""
    import dnf.exceptions

    applied = []
    mig = req.get("migration")
    if mig:
        installed = set(p.name for p in base.sack.query().installed())
        available = set(p.name for p in base.sack.query().available())
        for s in mig.get("swaps") or []:
            present = [n for n in s.get("from") or [] if n in installed]
            if not present:
                if s.get("required"):
                    raise Failure("config", "none of the packages %s is installed: the migration map does not fit "
                                  "this system" % ", ".join(s.get("from") or []))
                continue
            missing = [n for n in s.get("to") or [] if n not in available and n not in installed]
            if missing:
                raise Failure("depsolve", "the migration map replaces %s with %s, but no target repository has %s" % (
                    ", ".join(present), ", ".join(s.get("to")), ", ".join(missing)))
            for n in s.get("to") or []:
                try:
                    base.install(n)
                except dnf.exceptions.MarkingError as e:
                    raise Failure("depsolve", "cannot install %s for the migration: %s" % (n, e))
            for n in present:
                base.remove(n)
            a = dict(s)
            a["from"] = present
            applied.append(a)
    base.distro_sync()
    return applied


def annotate_migration(items, applied):
    """The swaps' reasons become the removals' reasons; a new package of a
    swap names the packages it replaces."""
    if not applied:
        return items
    why = {}
    to_from = {}
    for s in applied:
        for n in s["from"]:
            why[n] = "%s (migration map: %s)" % (s.get("reason") or s.get("kind"), s.get("kind"))
        for n in s.get("to") or []:
            to_from[n] = list(s["from"])
    erased = {}
    for it in items:
        if it["action"] in ("remove", "obsoleted"):
            erased[it["name"]] = it["nevra"]
    for it in items:
        if it["action"] in ("remove", "obsoleted") and it["name"] in why:
            it["reason"] = why[it["name"]]
        elif it["name"] in to_from:
            rep = it.get("replaces") or []
            for n in to_from[it["name"]]:
                if n in erased and erased[n] not in rep:
                    rep.append(erased[n])
            it["replaces"] = rep
    return items


# ---------------------------------------------------------------- assess

KERNEL_NAMES = ("kernel-core", "kernel")
KERNEL_MODULE_PKGS = ("kernel", "kernel-core", "kernel-modules", "kernel-modules-extra")


def cmd_assess(req):
    """Resolve the upgrade like resolve, but download nothing: report the
    transaction with sizes, dependency problems as data, the repositories and
    their keys, installed packages no enabled repository has, and the target
    kernel's module files. Changes nothing, writes only the metadata cache."""
    import dnf.exceptions

    set_dbpath(req)
    work = tempfile.mkdtemp(prefix="kos-upgrade-dnf-")
    try:
        base, enabled, keys = setup_base(req, work, filelists=True)
        repos = []
        for repo in enabled:
            repos.append({"id": repo.id, "name": repo.name or "", "gpgcheck": bool(repo.gpgcheck),
                          "gpgkey": list(repo.gpgkey or []), "baseurl": list(repo.baseurl or [])})
        available = set()
        for p in base.sack.query().available():
            available.add(p.name)
        unavailable = sorted(set(p.name for p in base.sack.query().installed()
                                 if p.name not in available and p.name != "gpg-pubkey"))
        progress("resolve", message="resolving the upgrade with dnf (no download)")
        applied = goal(base, req)
        problems = []
        items = []
        download_size = install_size = erase_size = 0
        try:
            base.resolve(allow_erasing=True)
        except dnf.exceptions.DepsolveError as e:
            problems = [l.strip() for l in str(e).splitlines() if l.strip()]
        new_kernels = []
        if not problems:
            items = annotate_migration(transaction_items(base), applied)
            sizes = {}
            for p in base.transaction.install_set:
                sizes[nevra(p)] = p.downloadsize or 0
                download_size += p.downloadsize or 0
                install_size += p.installsize or 0
                if p.name in KERNEL_NAMES:
                    new_kernels.append(p)
            for p in base.transaction.remove_set:
                erase_size += p.installsize or 0
            for it in items:
                if it["nevra"] in sizes:
                    it["size"] = sizes[it["nevra"]]
        emit({"type": "result", "items": items, "problems": problems, "repos": repos, "gpg_keys": keys,
              "unavailable": unavailable, "download_size": download_size, "install_size": install_size,
              "erase_size": erase_size, "kernel": target_kernel(base, new_kernels), "migration": applied})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def target_kernel(base, new_kernels):
    """The kernel the upgraded system boots: the newest one the transaction
    installs, else the newest available one; with its module files."""
    cands = list(new_kernels)
    in_transaction = bool(cands)
    if not cands:
        cands = list(base.sack.query().available().filter(name=list(KERNEL_NAMES)).latest())
    if not cands:
        return None
    k = cands[0]
    for p in cands[1:]:
        if p.evr_cmp(k) > 0:
            k = p
    modules = []
    files_known = False
    q = base.sack.query().available().filter(name=list(KERNEL_MODULE_PKGS), evr=k.evr, arch=k.arch)
    for p in q:
        files = p.files or []
        for f in files:
            if f.startswith("/lib/modules/") or f.startswith("/usr/lib/modules/"):
                files_known = True
                if ".ko" in os.path.basename(f):
                    modules.append(f)
    installed = bool(base.sack.query().installed().filter(name=k.name, evr=k.evr, arch=k.arch))
    return {"nevra": nevra(k), "name": k.name, "version": "%s-%s.%s" % (k.version, k.release, k.arch),
            "download_size": k.downloadsize or 0, "installed": installed, "in_transaction": in_transaction,
            "files_known": files_known, "modules": sorted(set(modules))}


def transaction_items(base):
    import dnf.transaction
    T = dnf.transaction
    fwd = {T.PKG_INSTALL: "install", T.PKG_UPGRADE: "upgrade", T.PKG_DOWNGRADE: "downgrade",
           T.PKG_REINSTALL: "reinstall", T.PKG_OBSOLETE: "install"}
    installs = []
    erased = []
    replaced = {}
    for tsi in base.transaction:
        a = tsi.action
        if a in fwd:
            installs.append((fwd[a], tsi.pkg))
        elif a in (T.PKG_UPGRADED, T.PKG_DOWNGRADED, T.PKG_REINSTALLED):
            replaced.setdefault((tsi.pkg.name, tsi.pkg.arch), []).append(nevra(tsi.pkg))
        elif a in (T.PKG_OBSOLETED, T.PKG_REMOVE):
            erased.append((a, tsi.pkg))
    new_pkgs = [p for _, p in installs]
    obsoleters = {}
    for p in new_pkgs:
        try:
            for old in base._goal.obsoleted_by_package(p):
                if old.installed:
                    obsoleters[nevra(old)] = nevra(p)
        except Exception:  # private API of dnf 4; the relation is informational
            pass
    items = []
    for action, p in installs:
        rep = list(replaced.get((p.name, p.arch), []))
        for old, by in obsoleters.items():
            if by == nevra(p) and old not in rep:
                rep.append(old)
        items.append({"action": action, "nevra": nevra(p), "name": p.name, "arch": p.arch,
                      "repo": p.reponame, "install_size": p.installsize, "replaces": rep})
    for a, p in erased:
        n = nevra(p)
        item = {"action": "remove", "nevra": n, "name": p.name, "arch": p.arch}
        if n in obsoleters or a == T.PKG_OBSOLETED:
            item["action"] = "obsoleted"
            item["obsoleted_by"] = obsoleters.get(n, "")
            item["reason"] = "obsoleted by %s" % (obsoleters.get(n) or "a package of the target release")
        else:
            item["reason"] = removal_reason(base, p, new_pkgs)
        items.append(item)
    return items


def removal_reason(base, pkg, new_pkgs):
    # Name the new packages that conflict with it, else say it could not be
    # kept with the target release's dependencies.
    culprits = []
    for np in new_pkgs:
        for c in np.conflicts:
            try:
                q = base.sack.query().filterm(pkg=[pkg]).filter(provides=c)
            except Exception:
                q = []
            if q:
                culprits.append("%s conflicts with %s" % (nevra(np), str(c)))
    if culprits:
        return "; ".join(culprits)
    return "its dependencies cannot be satisfied in the target release, so dnf erases it"


def download(base, pkgs, stagedir, items):
    import dnf.callback

    total = len(pkgs)
    state = {"n": 0}
    failed = []
    mirror = {}

    class Progress(dnf.callback.DownloadProgress):
        def start(self, total_files, total_size, total_drpms=0):
            progress("download", 0, total, message="downloading %d packages" % total_files)

        def progress(self, payload, done):
            pass

        def end(self, payload, status, msg):
            name = str(payload)
            if status == dnf.callback.STATUS_MIRROR:
                # One mirror failed (the reason, e.g. a checksum that does
                # not match the metadata); the download goes on.
                seen = mirror.setdefault(name, [])
                if str(msg) not in seen:
                    seen.append(str(msg))
                return
            state["n"] += 1
            if status == dnf.callback.STATUS_FAILED:
                emit({"type": "log", "message": "download failed: %s: %s" % (name, msg)})
                failed.append("%s: %s" % (name, "; ".join(mirror.get(name, []) or [str(msg)])))
            progress("download", min(state["n"], total), total, "download", name)

    try:
        base.download_packages(pkgs, Progress())
    except Exception as e:  # dnf.exceptions.DownloadError and friends
        if failed:  # each package with its reason (a checksum mismatch names it)
            raise Failure("download", "cannot download packages", failed)
        raise Failure("download", "cannot download packages: %s" % e)
    byname = {}
    for p in pkgs:
        byname[nevra(p)] = p
    os.makedirs(stagedir, exist_ok=True)
    staged = 0
    for it in items:
        p = byname.get(it["nevra"])
        if p is None:
            continue
        staged += 1
        src = p.localPkg()
        name = os.path.basename(src)
        dst = os.path.join(stagedir, name)
        if os.path.realpath(src) != os.path.realpath(dst):
            tmp = dst + ".part"
            shutil.copyfile(src, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.rename(tmp, dst)
        it["file"] = name
        it["size"] = os.path.getsize(dst)
        it["sha256"] = sha256_file(dst)
        progress("stage", staged, len(byname), "stage", it["nevra"])


# ---------------------------------------------------------------- needs, bundle

def cmd_needs(req):
    """What this host needs resolved elsewhere (kos-upgrade prepare
    --export-needs): its installed packages, the ids of its enabled
    repositories, its base architecture. Reads the repository configuration
    only: no metadata, no network."""
    import dnf
    import hawkey

    set_dbpath(req)
    ts = rpm.TransactionSet(req["root"])
    ts.setVSFlags(rpm._RPMVSF_NOSIGNATURES | rpm._RPMVSF_NODIGESTS)
    installed = []
    for h in ts.dbMatch():
        name = _s(h[rpm.RPMTAG_NAME])
        if name == "gpg-pubkey":
            continue
        installed.append({"name": name, "nevra": hdr_nevra(h), "arch": _s(h[rpm.RPMTAG_ARCH] or "noarch")})
    ts.closeDB()
    installed.sort(key=lambda p: p["nevra"])
    base = dnf.Base()
    root = req["root"]
    dnfconf = os.path.join(root, "etc/dnf/dnf.conf")
    if os.path.exists(dnfconf):
        base.conf.config_file_path = dnfconf
        base.conf.read(priority=dnf.conf.PRIO_MAINCONFIG)
    base.conf.installroot = root
    base.conf.reposdir = [os.path.join(root, "etc/yum.repos.d")]
    base.conf.substitutions["releasever"] = req["release"]
    try:
        base.read_all_repos()
        repos = sorted(r.id for r in base.repos.iter_enabled())
    except Exception as e:  # a broken .repo file: the needs still help
        emit({"type": "log", "message": "cannot read the repository configuration: %s" % e})
        repos = []
    arch = hawkey.detect_arch()
    emit({"type": "result", "installed": installed, "repos": repos, "arch": dnf.rpm.basearch(arch)})


def cmd_bundle_resolve(req):
    """Resolve, on a connected machine, what another host needs for its
    upgrade: every package it has installed (or what obsoletes it) at the
    target release's version, with dependencies, by dnf's solver on the
    target repositories alone (the host's rpmdb is not here). The packages
    the host has in exactly that version already are left out; the rest are
    downloaded into stagedir (re-using files already there)."""
    import dnf.exceptions
    import dnf.selector

    work = tempfile.mkdtemp(prefix="kos-upgrade-dnf-")
    try:
        base, enabled, _ = setup_base(req, work, system=False)
        base.conf.gpgcheck = False  # the host verifies with rpmkeys itself
        for repo in enabled:
            repo.gpgcheck = False
            repo.pkgdir = req["stagedir"]
        progress("resolve", message="resolving the host's upgrade with dnf")
        avail = base.sack.query().available()
        have = set()
        missing = []
        for p in req.get("installed") or []:
            have.add(p["nevra"])
            q = avail.filter(name=p["name"], arch=[p["arch"], "noarch"])
            if not q:
                q = avail.filter(obsoletes=p["name"])
                if not q:
                    missing.append(p["nevra"])
                    continue
            sltr = dnf.selector.Selector(base.sack)
            sltr.set(pkg=q.latest())
            # optional: a job the solver cannot satisfy together with the
            # others (a conflict) is dropped, as distro-sync erases one.
            base._goal.install(select=sltr, optional=True)
        try:
            base.resolve(allow_erasing=True)
        except dnf.exceptions.DepsolveError as e:
            lines = [l.strip() for l in str(e).splitlines() if l.strip()]
            raise Failure("depsolve", "dependency problems in the host's upgrade", lines)
        pkgs = [p for p in base.transaction.install_set if nevra(p) not in have]
        items = []
        for p in sorted(pkgs, key=nevra):
            items.append({"action": "install", "nevra": nevra(p), "name": p.name, "arch": p.arch,
                          "repo": p.reponame, "install_size": p.installsize})
        download(base, pkgs, req["stagedir"], items)
        emit({"type": "result", "items": items, "missing": missing})
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- rpm ts

SCRIPTLETS = (("PREIN", "%pre"), ("POSTIN", "%post"), ("PREUN", "%preun"), ("POSTUN", "%postun"),
              ("PRETRANS", "%pretrans"), ("POSTTRANS", "%posttrans"), ("TRIGGERPREIN", "%triggerprein"),
              ("TRIGGERIN", "%triggerin"), ("TRIGGERUN", "%triggerun"), ("TRIGGERPOSTUN", "%triggerpostun"),
              ("VERIFYSCRIPT", "%verifyscript"), ("FILETRIGGERIN", "%filetriggerin"),
              ("FILETRIGGERUN", "%filetriggerun"), ("FILETRIGGERPOSTUN", "%filetriggerpostun"),
              ("TRANSFILETRIGGERIN", "%transfiletriggerin"), ("TRANSFILETRIGGERUN", "%transfiletriggerun"),
              ("TRANSFILETRIGGERPOSTUN", "%transfiletriggerpostun"))


def scriptlet_name(tag):
    for t, name in SCRIPTLETS:
        if getattr(rpm, "RPMTAG_" + t, None) == tag:
            return name
    return "a scriptlet"


def element_name(key):
    if isinstance(key, dict):
        return key.get("nevra") or "a package"
    if isinstance(key, (str, bytes)) and key:
        return _s(key)
    return "an installed package"


class TsCallback(object):
    def __init__(self, fds, total, step):
        self.total = total
        self.step = step
        self.fds = fds
        self.n = 0
        self.errors = []
        self.warnings = []

    def __call__(self, reason, amount, total, key, client_data):
        if reason == rpm.RPMCALLBACK_INST_OPEN_FILE:
            # The descriptor build_ts checked the sha256 of: a file swapped
            # in the staging directory since is never read.
            fd = self.fds[key["file"]]
            os.lseek(fd, 0, os.SEEK_SET)
            return fd
        if reason == rpm.RPMCALLBACK_INST_CLOSE_FILE:
            return None
        if reason == rpm.RPMCALLBACK_INST_START:
            self.n += 1
            progress(self.step, self.n, self.total, key["action"], key["nevra"])
            if self.n == 3 and self.step == "transaction" and \
                    os.environ.get("KOS_UPGRADE_TEST_CRASH_AT") == "mid-transaction":
                # Crash tests: a power cut in the middle of the transaction
                # stops kos-upgrade and the helper at once.
                os.kill(os.getppid(), 9)
                os._exit(137)
            if self.n == 3 and self.step == "transaction" and \
                    os.environ.get("KOS_UPGRADE_TEST_HANG_AT") == "mid-transaction":
                # VM tests: stop here for good, say so on the console,
                # and let the test cut the power.
                hang("mid-transaction")
        elif reason == rpm.RPMCALLBACK_UNINST_START:
            self.n += 1
            name = key if isinstance(key, str) else ""
            progress(self.step, self.n, self.total, "erase", name)
        elif reason == rpm.RPMCALLBACK_SCRIPT_ERROR:
            # amount is the scriptlet's tag; total is not an exit code but
            # rpm's verdict (lib/transaction.c runScript): 0 when rpm only
            # warns and goes on (%post, %posttrans, %postun, triggers),
            # non-zero when the failure stops the element (%pre, %preun,
            # %pretrans: the package is not installed or not erased).
            what = "the %s scriptlet of %s failed" % (scriptlet_name(amount), element_name(key))
            if total:
                self.errors.append(what)
            else:
                self.warnings.append(what + " (rpm only warns about it and went on)")
        elif reason in (rpm.RPMCALLBACK_UNPACK_ERROR, rpm.RPMCALLBACK_CPIO_ERROR):
            self.errors.append("cannot unpack %s" % element_name(key))
        return None


def open_staged(stagedir, it):
    """Open the staged file of item it (a plain name in stagedir, a regular
    file, no symlink) and check its size and sha256 against the plan from
    this descriptor, which rpm then reads the header and payload from."""
    name = it.get("file") or ""
    if not name or "/" in name or name in (".", ".."):
        raise Failure("package", "the plan names no valid staged file for %s" % it.get("nevra"))
    path = os.path.join(stagedir, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise Failure("package", "cannot open %s: %s" % (path, e))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Failure("package", "%s is not a regular file" % path)
        h = hashlib.sha256()
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            h.update(b)
        if not it.get("sha256") or h.hexdigest() != it["sha256"] or \
                (it.get("size") and st.st_size != it["size"]):
            raise Failure("changed", "%s changed since it was verified (sha256 %s, the plan says %s)" % (
                path, h.hexdigest(), it.get("sha256") or "nothing"))
        os.lseek(fd, 0, os.SEEK_SET)
        return fd
    except BaseException:
        os.close(fd)
        raise


def build_ts(req, fds):
    """A transaction set of req's items; fds gets each staged file's open,
    checked descriptor by file name (the caller closes them)."""
    set_dbpath(req)
    ts = rpm.TransactionSet(req["root"])
    # Signatures were verified by kos-upgrade with the target keys already,
    # and open_staged checks that these are the bytes it verified; the
    # root's keyring may not hold the new release key yet.
    ts.setVSFlags(rpm._RPMVSF_NOSIGNATURES)
    stagedir = req["stagedir"]
    erase = []
    for it in req["items"]:
        if it["action"] in ("install", "upgrade", "downgrade", "reinstall"):
            path = os.path.join(stagedir, it.get("file") or "")
            fd = open_staged(stagedir, it)
            fds[it["file"]] = fd
            try:
                h = ts.hdrFromFdno(fd)
            except rpm.error as e:
                raise Failure("package", "cannot read %s: %s" % (path, e))
            os.lseek(fd, 0, os.SEEK_SET)
            mode = "i" if it["action"] == "install" else "u"
            if it["action"] == "reinstall":
                ts.addReinstall(h, it)
            else:
                ts.addInstall(h, it, mode)
        else:
            erase.append(it)
    planned_erase = set()
    for it in erase:
        planned_erase.add(it["nevra"])
    present = set()
    for te in ts:
        if te.Type() == rpm.TR_REMOVED:
            present.add(te_nevra(te))
    for it in erase:
        if it["nevra"] in present:
            continue
        mi = ts.dbMatch("name", it["name"])
        found = False
        for h in mi:
            if hdr_nevra(h) == it["nevra"]:
                ts.addErase(h)
                found = True
        if not found:
            raise Failure("stale", "%s is planned for removal but is not installed" % it["nevra"])
    if ts.check():
        raise Failure("depsolve", "the planned transaction has dependency problems",
                      problem_sentences(ts) or ["rpm found dependency problems it did not name"])
    ts.order()
    return ts


def problem_sentences(ts):
    """The problems librpm recorded in ts, each as the sentence rpm prints
    ("libmissing is needed by app-3.0-1.noarch"): never the tuples that
    ts.check() and ts.run() return."""
    out = []
    for p in ts.problems() or []:
        line = _s(str(p)).strip()
        if line and line not in out:
            out.append(line)
    return out


def te_nevra(te):
    return "%s-%s:%s-%s.%s" % (te.N(), te.E() or 0, te.V(), te.R(), te.A() or "noarch")


def close_all(fds):
    for fd in fds.values():
        os.close(fd)
    fds.clear()


def prob_filter(req):
    """The rpm problems a plan allows: older packages replacing newer ones
    (rpm -U --oldpackage) when the plan downgrades, which kos-upgrade
    plans only when the user allowed a downgrade (allow-downgrade)."""
    for it in req["items"]:
        if it["action"] == "downgrade":
            return rpm.RPMPROB_FILTER_OLDPACKAGE
    return 0


def run_ts(req, ts, fds, test):
    """Run ts; returns (problems, warnings) as sentences. ts.run() returns
    None only when the transaction completed; a list (empty when rpm
    stopped without naming a problem, or when elements failed) means it
    did not."""
    cb = TsCallback(fds, len(list(ts)), "test" if test else "transaction")
    flags = 0
    if test:
        flags |= rpm.RPMTRANS_FLAG_TEST
    ts.setFlags(flags)
    ts.setProbFilter(prob_filter(req))
    res = ts.run(cb, "")
    problems = []
    if res is not None:
        problems = problem_sentences(ts)
        for p in res:
            # (sentence, (type, string, number)) from rpm's transaction.py
            line = _s(p[0]) if isinstance(p, tuple) and p else _s(str(p))
            if line not in problems:
                problems.append(line)
    problems.extend(cb.errors)
    if res is not None and not problems:
        problems.append("rpm stopped the transaction without naming a problem (its messages are in the log)")
    return problems, cb.warnings


def cmd_test(req):
    fds = {}
    try:
        ts = build_ts(req, fds)
        problems, _ = run_ts(req, ts, fds, True)
        ts.closeDB()
    finally:
        close_all(fds)
    if problems:
        raise Failure("test", "the test transaction failed", problems)
    emit({"type": "result", "ok": True})


def cmd_apply(req):
    before = history_rpmdb_version(req["root"])
    fds = {}
    try:
        ts = build_ts(req, fds)
        problems, warnings = run_ts(req, ts, fds, False)
        ts.closeDB()
    finally:
        close_all(fds)
    if problems:
        raise Failure("transaction", "the transaction failed", problems + warnings)
    for w in warnings:
        emit({"type": "log", "message": "warning: " + w})
    # Check the rpmdb holds exactly what the plan says.
    ts = rpm.TransactionSet(req["root"])
    installed = set()
    for h in ts.dbMatch():
        installed.add(hdr_nevra(h))
    ts.closeDB()
    missing = []
    left = []
    for it in req["items"]:
        if it["action"] in ("install", "upgrade", "downgrade", "reinstall"):
            if it["nevra"] not in installed:
                missing.append(it["nevra"])
        elif it["nevra"] in installed:
            left.append(it["nevra"])
    if missing or left:
        probs = ["not installed: " + n for n in missing] + ["not erased: " + n for n in left]
        raise Failure("transaction", "the transaction did not complete", probs)
    # dnf history: never a reason to fail an upgrade that is done.
    note = write_dnf_history(req, before)
    if note:
        warnings.append(note)
    emit({"type": "result", "ok": True, "warnings": warnings})


# ---------------------------------------------------------------- dnf history
#
# After apply, the new root's dnf history (/var/lib/dnf/history.sqlite) gets
# one transaction, written with dnf's own history API (dnf.db.history, on
# libdnf's swdb), as `dnf distro-sync` would have written it: every item of
# the plan with its action, the command line "kos-upgrade apply", reasons
# carried over (a user-installed package stays user-installed; a new package
# is a dependency, or takes the reason of what it obsoletes). Where dnf
# cannot be imported (a root with only python3-rpm), nothing is written and
# the result says so.

HISTORY_CMDLINE = "kos-upgrade apply"


class HistoryPackage(object):
    """What dnf's history needs of a package: its NEVRA and repository."""

    def __init__(self, nevra, reponame):
        rest, self.arch = nevra.rsplit(".", 1)
        self.name, evr, self.release = rest.rsplit("-", 2)
        epoch, _, self.version = evr.rpartition(":")
        self.epoch = int(epoch or 0)
        self.reponame = reponame


def history_rpmdb_version(root):
    """dnf's version of the rpmdb of root (rpm's cookie where rpm has one,
    else dnf's own sum), or "" where dnf cannot be imported."""
    try:
        import dnf  # noqa: F401
    except ImportError:
        return ""
    try:
        ts = rpm.TransactionSet(root)
        try:
            if hasattr(ts, "dbCookie"):
                ts.openDB()
                cookie = ts.dbCookie()
                if cookie:
                    return cookie
        finally:
            ts.closeDB()
        base = dnf.Base()
        try:
            base.conf.installroot = root
            base.fill_sack(load_system_repo=True, load_available_repos=False)
            return str(base.sack._rpmdb_version())
        finally:
            base.close()
    except Exception as e:  # the history is a record, not the upgrade
        sys.stderr.write("kos-upgrade: cannot read the rpmdb version for dnf's history: %s\n" % e)
        return ""


def history_releasever(root):
    try:
        import dnf.rpm
        rv = dnf.rpm.detect_releasever(root)
        if rv:
            return rv
    except Exception:
        pass
    try:
        with open(os.path.join(root, "etc/os-release")) as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                if k == "VERSION_ID":
                    return v.strip('"')
    except (IOError, OSError):
        pass
    return ""


def write_dnf_history(req, before):
    """Record the applied plan in the root's dnf history. Returns "" when
    written, else the sentence saying why not."""
    try:
        import dnf.db.history
        import libdnf.transaction
    except ImportError as e:
        return "no dnf history was written: dnf cannot be imported by %s (%s)" % (sys.executable, e)
    root = req["root"]
    try:
        persistdir = os.path.join(root, "var/lib/dnf")
        if not os.path.isdir(persistdir):
            os.makedirs(persistdir, 0o755)
        history = dnf.db.history.SwdbInterface(persistdir, history_releasever(root))
        try:
            record_history_items(history, req["items"], libdnf.transaction)
            after = history_rpmdb_version(root)
            try:
                history.beg(before or after, [], [], HISTORY_CMDLINE, "kos-upgrade")
            except TypeError:  # dnf before 4.4: no comment
                history.beg(before or after, [], [], HISTORY_CMDLINE)
            for tsi in history.rpm:
                tsi.state = libdnf.transaction.TransactionItemState_DONE
            history.end(after)
        finally:
            history.close()
    except Exception as e:
        return "no dnf history was written: %s: %s" % (type(e).__name__, e)
    emit({"type": "log", "message": "recorded the upgrade in dnf's history (dnf history info last)"})
    return ""


def record_history_items(history, items, T):
    """Adds the plan's items to history's transaction, with dnf's actions."""
    system = "@System"
    obsoleted_by = {}
    for it in items:
        if it["action"] == "obsoleted" and it.get("obsoleted_by"):
            obsoleted_by.setdefault(it["obsoleted_by"], []).append(HistoryPackage(it["nevra"], system))
    done = set()
    for it in items:
        action = it["action"]
        if action not in ("install", "upgrade", "downgrade", "reinstall"):
            continue
        new = HistoryPackage(it["nevra"], it.get("repo") or "kos-upgrade")
        replaced = [HistoryPackage(n, system) for n in it.get("replaces") or []]
        obsoleted = obsoleted_by.get(it["nevra"], []) + obsoleted_by.get(it["name"], [])
        for o in obsoleted:
            done.add((o.name, o.arch, o.version, o.release))
        same = [r for r in replaced if r.name == new.name]
        others = [r for r in replaced if r.name != new.name]
        for r in others:
            if (r.name, r.arch, r.version, r.release) not in done:
                obsoleted.append(r)
                done.add((r.name, r.arch, r.version, r.release))
        if action == "upgrade" and same:
            history.rpm.add_upgrade(new, same[0], obsoleted)
        elif action == "downgrade" and same:
            history.rpm.add_downgrade(new, same[0], obsoleted)
        elif action == "reinstall" and same:
            history.rpm.add_reinstall(new, same[0], obsoleted)
        else:
            # A package new to the system: it obsoletes others (and takes
            # the reason of the first), or it came in as a dependency.
            reason = T.TransactionItemReason_DEPENDENCY
            if obsoleted:
                reason = history.rpm.get_reason(obsoleted[0])
            history.rpm.add_install(new, obsoleted, reason)
    for it in items:
        if it["action"] in ("remove", "erase"):
            old = HistoryPackage(it["nevra"], system)
            history.rpm.add_remove(old, history.rpm.get_reason(old))
        elif it["action"] == "obsoleted":
            old = HistoryPackage(it["nevra"], system)
            if (old.name, old.arch, old.version, old.release) not in done:
                history.rpm.add_remove(old, history.rpm.get_reason(old))


def cmd_fingerprint(req):
    set_dbpath(req)
    ts = rpm.TransactionSet(req["root"])
    ts.setVSFlags(rpm._RPMVSF_NOSIGNATURES | rpm._RPMVSF_NODIGESTS)
    lines = []
    for h in ts.dbMatch():
        sigmd5 = h[rpm.RPMTAG_SIGMD5]
        if isinstance(sigmd5, bytes):
            sigmd5 = sigmd5.hex() if hasattr(sigmd5, "hex") else ""
        lines.append("%s %s" % (hdr_nevra(h), sigmd5 or ""))
    ts.closeDB()
    lines.sort()
    h = hashlib.sha256()
    for l in lines:
        h.update((l + "\n").encode("utf-8"))
    emit({"type": "result", "fingerprint": "sha256:" + h.hexdigest(), "count": len(lines)})


def nevra_name(n):
    """The name of a NEVRA name-epoch:version-release.arch."""
    parts = n.rsplit("-", 2)
    return parts[0] if len(parts) == 3 else n


def hdr_files(h):
    return [_s(f) for f in (h[rpm.RPMTAG_FILENAMES] or [])]


# The scriptlets a transaction runs of a package it installs (new) and of
# an installed package it removes or replaces (old), by header tag; both
# run their triggers.
NEW_SCRIPTS = (("PRETRANS", "%pretrans"), ("PREIN", "%pre"), ("POSTIN", "%post"), ("POSTTRANS", "%posttrans"))
OLD_SCRIPTS = (("PREUN", "%preun"), ("POSTUN", "%postun"))
TRIGGER_SCRIPTS = (("TRIGGERSCRIPTS", "triggers"), ("FILETRIGGERSCRIPTS", "file triggers"),
                   ("TRANSFILETRIGGERSCRIPTS", "transaction file triggers"))


def hdr_scripts(h, new):
    """The names of the scriptlets the transaction runs of header h."""
    out = []
    for t, name in (NEW_SCRIPTS if new else OLD_SCRIPTS) + TRIGGER_SCRIPTS:
        tag = getattr(rpm, "RPMTAG_" + t, None)
        if tag is None:
            continue
        try:
            v = h[tag]
        except (KeyError, ValueError, rpm.error):
            continue
        if v:
            out.append(name)
    return out


def cmd_files(req):
    """The paths req's items change: every file of the installed packages
    they upgrade, downgrade, reinstall, obsolete or erase (%config files
    included: the file lists have them all), and every file of the staged
    packages they install; and the packages whose scriptlets it runs, with
    their names."""
    set_dbpath(req)
    ts = rpm.TransactionSet(req["root"])
    ts.setVSFlags(rpm._RPMVSF_NOSIGNATURES | rpm._RPMVSF_NODIGESTS)
    old_nevras, names = set(), set()
    for it in req["items"]:
        if it["action"] in ("install", "upgrade", "downgrade", "reinstall"):
            if it["action"] != "install":
                names.add(it["name"])
            for r in it.get("replaces") or []:
                old_nevras.add(r)
                names.add(nevra_name(r))
        else:
            old_nevras.add(it["nevra"])
            names.add(it["name"])
    files = set()
    old = []
    scripts = []
    for h in ts.dbMatch():
        n = hdr_nevra(h)
        name = _s(h[rpm.RPMTAG_NAME])
        if n in old_nevras or name in names:
            old.append(n)
            files.update(hdr_files(h))
            sc = hdr_scripts(h, False)
            if sc:
                scripts.append({"nevra": n, "scriptlets": sc})
    fds = {}
    try:
        for it in req["items"]:
            if it["action"] not in ("install", "upgrade", "downgrade", "reinstall"):
                continue
            fd = open_staged(req["stagedir"], it)
            fds[it["file"]] = fd
            try:
                h = ts.hdrFromFdno(fd)
            except rpm.error as e:
                raise Failure("package", "cannot read %s: %s" % (it.get("file"), e))
            files.update(hdr_files(h))
            sc = hdr_scripts(h, True)
            if sc:
                scripts.append({"nevra": hdr_nevra(h), "scriptlets": sc})
    finally:
        close_all(fds)
    ts.closeDB()
    scripts.sort(key=lambda s: s["nevra"])
    emit({"type": "result", "files": sorted(files), "old": sorted(old), "scripts": scripts})


COMMANDS = {"resolve": cmd_resolve, "download": cmd_download, "assess": cmd_assess, "test": cmd_test, "apply": cmd_apply,
            "fingerprint": cmd_fingerprint, "files": cmd_files, "needs": cmd_needs, "bundle-resolve": cmd_bundle_resolve}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in COMMANDS:
        sys.stderr.write("usage: kos_upgrade_helper.py {%s} < request.json\n" % ",".join(sorted(COMMANDS)))
        return 2
    home = tempfile.mkdtemp(prefix="kos-upgrade-home-")
    try:
        req = json.load(sys.stdin)
        load_rpm(req, home)
        COMMANDS[sys.argv[1]](req)
    except Failure as f:
        emit({"type": "error", "kind": f.kind, "message": f.message, "problems": f.problems})
        return 1
    except Exception as e:  # report, never a traceback only
        import traceback
        traceback.print_exc()
        emit({"type": "error", "kind": "internal", "message": "%s: %s" % (type(e).__name__, e)})
        return 1
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
