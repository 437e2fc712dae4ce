// Unit tests of cockpit/kos-upgrade/format.js (node --test), run by
// TestFormatJS in format_test.go; no browser, no Cockpit.
import test from "node:test";
import assert from "node:assert/strict";
import * as fmt from "../../cockpit/kos-upgrade/format.js";

test("unwrap turns variants into values, deeply", () => {
    assert.deepEqual(fmt.unwrap({ a: { t: "s", v: "x" }, b: { t: "a{sv}", v: { c: { t: "u", v: 3 } } } }), { a: "x", b: { c: 3 } });
    assert.deepEqual(fmt.unwrap([{ run_id: { t: "s", v: "r1" } }]), [{ run_id: "r1" }]);
});

test("humanSize", () => {
    assert.equal(fmt.humanSize(0), "0 B");
    assert.equal(fmt.humanSize(1536), "1.5 KiB");
    assert.equal(fmt.humanSize(33 * 1024 + 10), "33 KiB");
    assert.equal(fmt.humanSize(5 * 1024 * 1024 * 1024), "5.0 GiB");
});

test("sortFindings: inhibitors first, then severity, then key", () => {
    const got = fmt.sortFindings([
        { key: "b", severity: "info", groups: [] },
        { key: "a", severity: "medium", groups: [] },
        { key: "z", severity: "high", groups: ["inhibitor"] },
        { key: "c", severity: "high", groups: [] },
        { key: "y", severity: "medium", groups: ["space", "inhibitor"] },
    ]).map(f => f.key);
    assert.deepEqual(got, ["z", "y", "c", "a", "b"]);
});

test("errorText says 'not allowed' for AccessDenied, without the CLI advice, once", () => {
    const t = fmt.errorText("Prepare", {
        name: "org.freedesktop.DBus.Error.AccessDenied",
        message: "Prepare refused: only root may do this and you are alice (uid 1000); polkit is not running to authorize you otherwise. Nothing was changed. Run the command as root (sudo kos-upgrade ...).",
    });
    assert.equal(t.title, "You are not allowed to prepare an upgrade.");
    assert.match(t.detail, /only root may do this and you are alice/);
    assert.doesNotMatch(t.detail, /sudo/);
    assert.equal(t.detail.match(/Nothing was changed/g).length, 1);
    assert.equal(fmt.errorText("Cancel", { problem: "access-denied" }).title, "You are not allowed to cancel the upgrade.");
});

test("errorText for the other errors", () => {
    assert.match(fmt.errorText("Prepare", { name: "org.kos.Upgrade1.Error.Busy", message: "the daemon is running prepare" }).title, /Another upgrade task is running/);
    assert.match(fmt.errorText("Reboot", { name: "org.kos.Upgrade1.Error.StalePlan", message: "x" }).title, /out of date/);
    assert.match(fmt.errorText("GetReport", { name: "org.freedesktop.DBus.Error.ServiceUnknown", message: "" }).title, /not available/);
    assert.match(fmt.errorText("GetReport", { problem: "disconnected" }).title, /connection/);
    assert.equal(fmt.errorText("Rollback", { name: "org.kos.Upgrade1.Error.Failed", message: "no snapshot" }).detail, "no snapshot");
});

test("allowedActions follows the state", () => {
    const a = (State, extra = {}, job = false) => fmt.allowedActions({ State, ...extra }, job);
    assert.deepEqual(a("idle"), { check: true, prepare: true, reboot: false, cancel: false, rollback: false });
    assert.deepEqual(a("preparing"), { check: false, prepare: false, reboot: false, cancel: false, rollback: false });
    assert.deepEqual(a("prepared"), { check: true, prepare: true, reboot: true, cancel: true, rollback: false });
    assert.deepEqual(a("armed"), { check: true, prepare: false, reboot: true, cancel: true, rollback: false });
    assert.equal(a("succeeded", { RollbackAvailable: true }).rollback, true);
    assert.equal(a("prepared", {}, true).reboot, false, "nothing while a job of this page runs");
});

test("removals and kept come from the plan", () => {
    const plan = {
        transaction: [
            { action: "upgrade", name: "app", nevra: "app-0:2.0-1.noarch" },
            { action: "obsoleted", name: "oldtool", nevra: "oldtool-0:1.0-1.noarch", obsoleted_by: "newtool-0:2.0-1.noarch" },
            { action: "remove", name: "legacy", nevra: "legacy-0:1.0-1.noarch", reason: "kos-release conflicts with legacy" },
        ],
        report: { findings: [{ key: "packages.third-party", details: ["tool-1.0 (Example Inc.)"] }, { key: "packages.orphaned", details: ["failpre-0:1.0-1.noarch"] }] },
    };
    assert.deepEqual(fmt.removals(plan).map(r => [r.name, r.reason]), [["oldtool", "obsoleted by newtool-0:2.0-1.noarch"], ["legacy", "kos-release conflicts with legacy"]]);
    assert.deepEqual(fmt.kept(plan), [{ kind: "third-party", text: "tool-1.0 (Example Inc.)" }, { kind: "orphaned", text: "failpre-0:1.0-1.noarch" }]);
    assert.deepEqual(fmt.removals(null), []);
});

test("state and step words", () => {
    assert.equal(fmt.stateInfo("armed").label, "Ready to apply");
    assert.equal(fmt.stateInfo("weird").label, "weird");
    assert.equal(fmt.stepText("download"), "Downloading packages");
    assert.equal(fmt.stepText("new-step"), "New step");
    assert.equal(fmt.stepText(""), "");
    assert.ok(fmt.validRelease("5.9") && fmt.validRelease("10") && !fmt.validRelease("5.9; rm") && !fmt.validRelease(""));
    assert.ok(fmt.validImagePath("/srv/KOS-5.9 dvd.iso") && !fmt.validImagePath("KOS.iso") && !fmt.validImagePath("/srv/../x.iso") &&
              !fmt.validImagePath("/srv/") && !fmt.validImagePath("") && !fmt.validImagePath("/srv//x.iso"));
});

test("verdictInfo: red fallback, green blessed, on trial, none", () => {
    assert.equal(fmt.verdictInfo(null), null);
    const red = fmt.verdictInfo({ green: false, decision: "fallback", reasons: ["acme-web.service was active before the upgrade and is inactive after"] });
    assert.equal(red.label, "Unhealthy");
    assert.equal(red.color, "red");
    assert.match(red.text, /fell back/);
    const green = fmt.verdictInfo({ green: true, decision: "blessed", checks: [{ name: "wanted.d/x", result: "failed" }, { name: "health.d/y", result: "passed" }] });
    assert.equal(green.color, "green");
    assert.match(green.text, /kept\. 1 check\(s\) did not pass/);
    assert.equal(fmt.verdictInfo({ green: true, decision: "confirming" }).label, "Healthy, on trial");
});

test("runTitle: upgrade, rollback, automatic fallback", () => {
    assert.equal(fmt.runTitle({ kind: "apply", from: "5.8", to: "5.9" }), "Upgrade 5.8 → 5.9");
    assert.equal(fmt.runTitle({ kind: "rollback" }), "Rollback");
    assert.equal(fmt.runTitle({ kind: "fallback", from: "5.9", to: "5.8" }), "Automatic fallback 5.9 → 5.8");
});

test("pathText: staged or the offline transaction and why, with the offline window", () => {
    assert.equal(fmt.pathText({ path: "staged", carried: 1007, bytes_cloned: 1073741824 + 524288, offline_usec: 680000 }),
                 "Staged before the reboot: 1007 paths carried over (1.0 GiB cloned); offline 0.7 s");
    assert.equal(fmt.pathText({ path: "staged", carried: 1, bytes_cloned: 0, offline_usec: 0 }),
                 "Staged before the reboot: 1 path carried over (0 B cloned)");
    assert.equal(fmt.pathText({ path: "classic", path_reason: "not staged: kos-upgrade reboot --no-stage", offline_usec: 2500000 }),
                 "Offline transaction (not staged: kos-upgrade reboot --no-stage); offline 2.5 s");
    assert.equal(fmt.pathText({ path: "staged", carried: 3, bytes_cloned: 2048, offline_usec: 300000, at_shutdown: true }),
                 "Staged before the reboot, finalized at shutdown (one boot): 3 paths carried over (2.0 KiB cloned); offline 0.3 s");
    assert.equal(fmt.pathText({ path: "", kind: "apply" }), "");
    assert.equal(fmt.pathText(undefined), "");
});
