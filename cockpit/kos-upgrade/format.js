// Pure helpers of the kos-upgrade page: no DOM, no cockpit; node's test
// runner tests them (test/cockpit/format.test.mjs).

// unwrap turns cockpit.dbus variants ({t, v}) into plain values, deeply.
export function unwrap(x) {
    if (Array.isArray(x))
        return x.map(unwrap);
    if (x && typeof x === "object") {
        if ("t" in x && "v" in x && Object.keys(x).length === 2)
            return unwrap(x.v);
        const out = {};
        for (const k of Object.keys(x))
            out[k] = unwrap(x[k]);
        return out;
    }
    return x;
}

// humanSize: bytes in the units kos-upgrade's CLI uses (1024-based).
export function humanSize(n) {
    n = Number(n) || 0;
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
        n /= 1024;
        i++;
    }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
}

// formatTime: microseconds since the epoch (D-Bus) or an RFC 3339 string,
// in the browser's locale; "" when unknown.
export function formatTime(t) {
    if (t === undefined || t === null || t === 0 || t === "")
        return "";
    const d = typeof t === "number" ? new Date(t / 1000) : new Date(t);
    if (isNaN(d.getTime()))
        return "";
    return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

const STATES = {
    idle: { label: "Up to date", color: "grey", text: "Nothing is prepared. Run Check to see whether the system can be upgraded, then Prepare." },
    preparing: { label: "Preparing", color: "blue", text: "The upgrade is being resolved, downloaded and verified. The running system is not changed." },
    prepared: { label: "Prepared", color: "cyan", text: "The upgrade is downloaded and verified. Reboot to apply it, or cancel it." },
    armed: { label: "Ready to apply", color: "orange", text: "The upgrade runs at the next boot. Cancel to disarm it." },
    applying: { label: "Applying", color: "orange", text: "The upgrade is being applied." },
    succeeded: { label: "Upgraded", color: "green", text: "The last upgrade succeeded." },
    failed: { label: "Failed", color: "red", text: "The last upgrade failed; the system runs the release it had before. See the history for the error." },
    "rolled-back": { label: "Rolled back", color: "purple", text: "The system was rolled back to the release it had before the upgrade." },
};

// stateInfo describes a State property value for a person.
export function stateInfo(state) {
    return STATES[state] || { label: state || "Unknown", color: "grey", text: "" };
}

const STEPS = {
    check: "Checking the system",
    fingerprint: "Reading the installed packages",
    resolve: "Resolving the upgrade",
    download: "Downloading packages",
    stage: "Staging packages",
    verify: "Verifying signatures and checksums",
    test: "Testing the transaction",
    plan: "Writing the plan",
    prepare: "Prepared",
    recover: "Cleaning up an interrupted run",
    rollback: "Rolling back",
    snapshot: "Taking a snapshot",
    transaction: "Installing packages",
    boot: "Updating the boot loader",
    switch: "Switching to the upgraded system",
};

// stepText names a Step property value for a person ("" when none).
export function stepText(step) {
    if (!step)
        return "";
    return STEPS[step] || step.charAt(0).toUpperCase() + step.slice(1).replaceAll("-", " ");
}

const SEVERITY_RANK = { high: 3, medium: 2, low: 1, info: 0 };

export function isInhibitor(f) {
    return Array.isArray(f.groups) && f.groups.includes("inhibitor");
}

// sortFindings: inhibitors first, then by severity (high first), then key.
export function sortFindings(findings) {
    return [...(findings || [])].sort((a, b) =>
        (isInhibitor(b) - isInhibitor(a)) ||
        ((SEVERITY_RANK[b.severity] || 0) - (SEVERITY_RANK[a.severity] || 0)) ||
        String(a.key).localeCompare(String(b.key)));
}

// removals lists the packages the plan erases, each with dnf's reason.
export function removals(plan) {
    return ((plan && plan.transaction) || [])
            .filter(it => it.action === "remove" || it.action === "obsoleted")
            .map(it => ({
                name: it.name,
                nevra: it.nevra,
                action: it.action,
                reason: it.reason || (it.obsoleted_by ? "obsoleted by " + it.obsoleted_by : ""),
            }));
}

// kept lists the installed packages the upgrade keeps although no target
// repository has them (third-party and orphaned), from the report stored
// in the plan.
export function kept(plan) {
    const findings = (plan && plan.report && plan.report.findings) || [];
    const out = [];
    for (const f of findings) {
        if (f.key !== "packages.third-party" && f.key !== "packages.orphaned")
            continue;
        for (const d of f.details || [])
            out.push({ kind: f.key === "packages.third-party" ? "third-party" : "orphaned", text: d });
    }
    return out;
}

const ACTION_VERBS = {
    Check: "check the system",
    Prepare: "prepare an upgrade",
    Reboot: "reboot into the upgrade",
    Arm: "arm the upgrade",
    Cancel: "cancel the upgrade",
    Rollback: "roll back",
    GetReport: "read the upgrade status",
    GetHistory: "read the upgrade history",
};

// errorText turns a failed D-Bus call (a cockpit DBusError with name and
// message, or a channel problem) into words for a person.
export function errorText(method, err) {
    const verb = ACTION_VERBS[method] || method;
    const name = (err && err.name) || "";
    const msg = (err && err.message) || "";
    const problem = (err && err.problem) || "";
    if (name === "org.freedesktop.DBus.Error.AccessDenied" || problem === "access-denied" ||
            name === "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired") {
        // The daemon's message is written for the CLI: keep why, drop its
        // advice to run a command, say "nothing was changed" once.
        const why = msg === "Access denied" ? "" : msg.replace(/\s*Run the command as root.*$/s, "").replace(/\s*Nothing was changed\.?/g, "").trim();
        return {
            title: "You are not allowed to " + verb + ".",
            detail: (why ? why + " " : "") + "Nothing was changed. " +
                "Switch to administrative access (the \"Limited access\" button at the top of Cockpit), or ask an administrator.",
        };
    }
    if (name === "org.kos.Upgrade1.Error.Busy")
        return { title: "Another upgrade task is running, so this one was not started.", detail: msg + " Wait until it ends, then try again." };
    if (name === "org.kos.Upgrade1.Error.StalePlan")
        return { title: "The prepared upgrade is out of date.", detail: msg + " Packages changed since it was prepared: prepare it again." };
    if (name === "org.kos.Upgrade1.Error.WrongRoot")
        return { title: "The upgrade service manages another system.", detail: msg };
    if (name === "org.kos.Upgrade1.Error.NotSupported")
        return { title: "This kos-upgrade cannot " + verb + ".", detail: msg };
    if (name === "org.freedesktop.DBus.Error.InvalidArgs")
        return { title: "The request to " + verb + " was not accepted.", detail: msg };
    if (name === "org.freedesktop.DBus.Error.ServiceUnknown" || name === "org.freedesktop.DBus.Error.NameHasNoOwner" ||
            problem === "not-found")
        return {
            title: "The upgrade service is not available.",
            detail: "kos-upgrade's D-Bus service (org.kos.Upgrade1) is not running and cannot be started. Is kos-upgrade installed?" +
                (msg ? " (" + msg + ")" : ""),
        };
    if (name === "org.freedesktop.DBus.Error.NoReply" || name === "org.freedesktop.DBus.Error.Timeout" || problem === "timeout")
        return { title: "The upgrade service did not answer in time.", detail: "It may still be working: watch the status. " + msg };
    if (problem === "disconnected" || problem === "terminated")
        return { title: "The connection to the system was lost.", detail: "Reload the page once the system is reachable again." };
    if (name === "org.kos.Upgrade1.Error.Failed")
        return { title: "Could not " + verb + ".", detail: msg };
    return { title: "Could not " + verb + ".", detail: msg || problem || String(err) };
}

// The actions the state allows: {check, prepare, reboot, cancel, rollback}.
export function allowedActions(props, jobRunning) {
    const s = props.State;
    const busy = jobRunning || s === "preparing" || s === "applying";
    return {
        check: !busy,
        prepare: !busy && s !== "armed",
        reboot: !busy && (s === "prepared" || s === "armed"),
        cancel: !busy && (s === "prepared" || s === "armed" || s === "failed"),
        rollback: !busy && !!props.RollbackAvailable,
    };
}

// An image path as the daemon accepts it for Prepare's iso option: an
// absolute, clean path to a file (the daemon checks that it is a regular
// file).
export function validImagePath(p) {
    return p.startsWith("/") && !p.endsWith("/") && !p.includes("\0") &&
        !p.split("/").some(c => c === "." || c === "..") && !p.includes("//");
}

// A release version as kos-upgrade accepts it (VERSION_ID): digits and dots.
export function validRelease(v) {
    return /^[0-9]+(\.[0-9]+)*$/.test(v);
}

// verdictInfo describes the first-boot health verdict (health.json, the
// status document's "health"; docs/health.md) for a person.
export function verdictInfo(v) {
    if (!v)
        return null;
    const checks = v.checks || [];
    const failed = checks.filter(c => c.result !== "passed").length;
    if (v.decision === "confirming")
        return { label: "Healthy, on trial", color: "blue", text: "The upgraded system is healthy and stays on trial until its application probes pass or the confirmation window ends." };
    if (v.green)
        return { label: "Healthy", color: "green", text: "The first boot of the upgraded system was healthy" + (v.decision === "blessed" ? ": it was kept." : ".") + (failed ? " " + failed + " check(s) did not pass (warnings)." : "") };
    return { label: "Unhealthy", color: "red", text: "The first boot of the upgraded system was not healthy" + (v.decision === "fallback" ? ": the system fell back to the release it had before the upgrade." : ".") };
}

// runTitle names a run of the history (or LastResult): an upgrade, a
// rollback asked for, or the automatic fallback of a first boot that
// failed its health check (docs/health.md).
export function runTitle(r) {
    if (r.kind === "rollback")
        return "Rollback";
    if (r.kind === "fallback")
        return "Automatic fallback " + (r.from || "?") + " → " + (r.to || "?");
    return "Upgrade " + (r.from || "?") + " → " + (r.to || "?");
}

// pathText says how an upgrade's offline step ran (LastResult, a history
// entry; docs/stage.md): staged before the reboot with what was carried
// over, or the offline transaction and why, and the offline window; ""
// where staging does not exist (LVM, no snapshot) or for a rollback.
export function pathText(r) {
    if (!r || (r.path !== "staged" && r.path !== "classic"))
        return "";
    const window = r.offline_usec ? "; offline " + (Number(r.offline_usec) / 1e6).toFixed(1) + " s" : "";
    if (r.path === "staged") {
        const n = Number(r.carried) || 0;
        return "Staged before the reboot" + (r.at_shutdown ? ", finalized at shutdown (one boot)" : "") + ": " +
            n + (n === 1 ? " path" : " paths") + " carried over (" +
            humanSize(r.bytes_cloned) + " cloned)" + window;
    }
    return "Offline transaction" + (r.path_reason ? " (" + r.path_reason + ")" : "") + window;
}
