// Browser steps of the Cockpit plugin test, run by cockpit_test.go:
//     node browser.mjs admin|user
// Environment (set by the Go test): KOS_URL (cockpit-ws), KOS_SHOTS
// (screenshot directory), KOS_BIN and KOS_ROOT (the CLI and the system it
// acts on), DBUS_SYSTEM_BUS_ADDRESS (the test bus), KOS_CHROMIUM, and for
// "user" KOS_USER and KOS_PASSWORD. Exits non-zero on the first failed
// expectation, after a screenshot named FAILED-<scenario>.png.
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import path from "node:path";

const env = name => {
    const v = process.env[name];
    if (!v)
        throw new Error(`${name} is not set: run this through go test ./test/cockpit`);
    return v;
};

const scenario = process.argv[2];
const URL = env("KOS_URL");
const SHOTS = env("KOS_SHOTS");
const t0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);

const browser = await chromium.launch({
    executablePath: process.env.KOS_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 1700 } });
const page = await context.newPage();
page.setDefaultTimeout(30000);

const problems = [];
page.on("console", msg => {
    const text = msg.text();
    if (/Content Security Policy|Content-Security-Policy/i.test(text))
        problems.push("CSP violation: " + text);
    if (msg.type() === "error" || msg.type() === "warning")
        log(`console.${msg.type()}:`, text);
});
page.on("pageerror", err => problems.push("uncaught exception in the page: " + err.message));

let shotN = 0;
// shot saves a screenshot of the page, scrolled to the top unless the
// caller scrolled to something.
async function shot(name, { keepScroll = false } = {}) {
    shotN++;
    if (!keepScroll)
        await el("body").evaluate(() => window.scrollTo(0, 0)).catch(() => {});
    const file = path.join(SHOTS, `${scenario}-${String(shotN).padStart(2, "0")}-${name}.png`);
    await page.screenshot({ path: file });
    log("screenshot", file);
}

function check(cond, what) {
    if (!cond)
        throw new Error("expectation failed: " + what);
    if (problems.length)
        throw new Error(problems.join("\n"));
}

// waitUntil polls fn until it returns a truthy value.
async function waitUntil(what, fn, timeout = 30000) {
    const end = Date.now() + timeout;
    let last;
    for (;;) {
        try {
            last = await fn();
            if (last)
                return last;
        } catch (e) {
            last = e;
        }
        if (Date.now() > end)
            throw new Error(`timed out after ${timeout / 1000}s waiting for ${what} (last: ${last})`);
        await new Promise(r => setTimeout(r, 100));
    }
}

// cli runs kos-upgrade against the test system and the test bus.
function cli(...args) {
    return new Promise((resolve, reject) => {
        const p = spawn(env("KOS_BIN"), ["--root", env("KOS_ROOT"), ...args], { env: process.env });
        let out = "";
        p.stdout.on("data", d => { out += d });
        p.stderr.on("data", d => { out += d });
        p.on("error", reject);
        p.on("close", code => code === 0 ? resolve(out) : reject(new Error(`kos-upgrade ${args.join(" ")}: exit ${code}\n${out}`)));
    });
}

// The page inside the Cockpit shell.
const frame = () => page.frameLocator('iframe[name="cockpit1:localhost/kos-upgrade"]');
const el = sel => frame().locator(sel);
const text = async sel => (await el(sel).textContent()) || "";

async function waitState(label, timeout = 60000) {
    await waitUntil(`state "${label}"`, async () => (await text("#state-label")).trim() === label, timeout);
    if (label !== "Preparing") // settled: the page's own call has returned too
        await waitUntil("Check enabled", async () => !(await el("#btn-check").isDisabled()), 10000);
    log("state:", label);
}

async function openShell() {
    await page.goto(URL + "/kos-upgrade");
    await el("#app[aria-busy=false]").waitFor();
    log("page loaded in the shell");
}

// dialog opens the dialog of button sel and checks it says what will happen.
async function openDialog(sel, titleWord) {
    await el(sel).click();
    await el("#dialog[open]").waitFor();
    const title = await text("#dialog-title");
    check(title.includes(titleWord), `dialog title "${title}" names ${titleWord}`);
    return el("#dialog");
}

async function admin() {
    await openShell();
    // The menu of the shell has our entry.
    check(await page.locator("a", { hasText: "OS upgrade" }).count() > 0, "the shell's menu lists OS upgrade");
    await waitState("Up to date");
    check((await text("#current-release")).trim() === "5.8", "installed release 5.8");
    check(await el("#btn-reboot").isDisabled() && await el("#btn-cancel").isDisabled(), "reboot and cancel disabled when idle");
    await shot("idle");

    // Keyboard: the Check dialog opens from the keyboard, focus is in it,
    // Escape closes it and focus returns to the button.
    await el("#btn-check").focus();
    await page.keyboard.press("Enter");
    await el("#dialog[open]").waitFor();
    check(await el("#check-to").evaluate(e => e === document.activeElement), "focus in the dialog's input");
    await page.keyboard.press("Escape");
    await el("#dialog:not([open])").waitFor({ state: "attached" });
    check(await el("#btn-check").evaluate(e => e === document.activeElement), "focus back on Check after Escape");

    // Check, with a target: the report, inhibitors first.
    await openDialog("#btn-check", "Check");
    await el("#check-to").fill("5.9");
    await shot("check-dialog");
    await el("#dialog-confirm").click();
    await waitUntil("the assessment report", async () => (await text("#report-summary")).includes("5.9"), 90000);
    const verdict = await text("#report .ku-verdict");
    check(/Nothing blocks the upgrade to 5\.9/.test(verdict), `verdict: ${verdict}`);
    const keys = await el("#report [data-key]").evaluateAll(es => es.map(e => e.dataset.key));
    log("findings:", keys.join(" "));
    check(keys.length > 0, "the report lists findings");
    await shot("check-report");

    // Prepare 5.9 from the page: the progress moves, then the plan.
    await openDialog("#btn-prepare", "Prepare");
    await el("#prepare-to").fill("");
    check(await el("#dialog-confirm").isDisabled(), "Prepare is disabled without a target");
    await el("#prepare-to").fill("5.9");
    check(!(await el("#dialog-confirm").isDisabled()), "Prepare is enabled with 5.9");
    await shot("prepare-dialog");
    await el("#dialog-confirm").click();
    const seen = new Set();
    let progressShot = false;
    await waitUntil("the prepared state", async () => {
        const visible = await el("#progress").isVisible();
        if (visible) {
            const v = Number(await el("#progress-bar").getAttribute("aria-valuenow"));
            seen.add(v);
            if (!progressShot && v > 0 && v < 100) {
                progressShot = true;
                await shot("preparing");
            }
        }
        return (await text("#state-label")).trim() === "Prepared";
    }, 120000);
    log("progress values seen:", [...seen].sort((a, b) => a - b).join(" "));
    check([...seen].filter(v => v > 0 && v < 100).length >= 2, "the progress bar moved through at least two values");
    await el("#plan-counts").waitFor();
    const packages = Number(await text("#count-packages .ku-count-value"));
    check(packages > 0, `the plan has packages (${packages})`);
    check((await text("#target-release")).trim() === "5.9", "target release 5.9");
    const removals = await text("#removals");
    log("removals:", removals.replace(/\s+/g, " "));
    check(/legacy/.test(removals) && /oldtool/.test(removals), "removals name legacy and oldtool, with reasons");
    await el("#plan-card").scrollIntoViewIfNeeded();
    await shot("prepared", { keepScroll: true });

    // Reboot and apply, only arming (the daemon serves a test root).
    await openDialog("#btn-reboot", "Reboot");
    const body = await text("#dialog-body");
    check(/reboots the machine now/.test(body) && /snapshot/.test(body), "the reboot dialog says what happens");
    check(/Packages from the system's own repositories/.test(body) && /GPG signature and checksum was verified/.test(body),
          "the reboot dialog says where the packages come from and that their signatures were checked");
    await shot("reboot-dialog");
    await el("#reboot-now").uncheck();
    check((await text("#dialog-confirm")).includes("Arm"), "confirm button says Arm when not rebooting");
    await el("#dialog-confirm").click();
    await waitState("Ready to apply");
    await shot("armed");

    // Cancel from the page.
    await openDialog("#btn-cancel", "Cancel");
    check(/deleted/.test(await text("#dialog-body")), "the cancel dialog says the plan is deleted");
    await el("#dialog-confirm").click();
    await waitState("Up to date");
    check((await text("#plan")).includes("No upgrade is prepared"), "no plan after cancel");
    await shot("cancelled");

    // Prepare from an image on this server: a path, no upload; the
    // release comes from the image.
    await openDialog("#btn-prepare", "Prepare");
    await el("#prepare-to").fill("");
    await el("#prepare-iso").fill("KOS.iso");
    check(await el("#dialog-confirm").isDisabled(), "Prepare is disabled with a relative image path");
    await el("#prepare-iso").fill(env("KOS_ISO"));
    check(!(await el("#dialog-confirm").isDisabled()), "Prepare is enabled with an image and no target");
    await shot("prepare-iso-dialog");
    await el("#dialog-confirm").click();
    await waitState("Prepared", 120000);
    await el("#plan-counts").waitFor();
    const planText = await text("#plan");
    check(planText.includes(env("KOS_ISO")) && planText.includes("KOS-5.9-x86_64"), "the plan names the image and its label");
    check((await text("#target-release")).trim() === "5.9", "target release 5.9, from the image");
    await el("#plan-card").scrollIntoViewIfNeeded();
    await shot("prepared-from-iso", { keepScroll: true });
    await cli("cancel");
    await waitState("Up to date");

    // The page follows the CLI: prepare and cancel through the daemon.
    log("CLI: prepare --to 5.9");
    const prep = cli("prepare", "--to", "5.9");
    await waitState("Preparing", 30000);
    await shot("cli-preparing");
    await prep;
    await waitState("Prepared");
    await el("#plan-counts").waitFor();
    await shot("cli-prepared");
    log("CLI: cancel");
    await cli("cancel");
    await waitState("Up to date");
    log("CLI: prepare --to 5.9 (left for the user scenario)");
    await cli("prepare", "--to", "5.9");
    await waitState("Prepared");
    check(problems.length === 0, "no CSP violation or uncaught exception");
}

async function login() {
    // The login page answers any path; after the login the shell opens it.
    await page.goto(URL + "/kos-upgrade");
    const form = page.locator("#login-user-input");
    await form.waitFor({ timeout: 10000 }).catch(() => {});
    if (await form.isVisible()) {
        await form.fill(env("KOS_USER"));
        await page.locator("#login-password-input").fill(env("KOS_PASSWORD"));
        await page.locator("#login-button").click();
    }
    await waitUntil("the page after the login", async () =>
        await el("#app[aria-busy=false]").count() > 0 || await page.locator("#login-error-message").isVisible(), 20000);
    if (await page.locator("#login-error-message").isVisible())
        check(false, "login: " + await page.locator("#login-error-message").textContent());
}

async function user() {
    try {
        await login();
    } catch (e) {
        // Debian's cockpit-bridge 287 sometimes dies (SIGSEGV in libgio)
        // right after a password login without logind: try once more.
        log("the session did not come up (", e.message, "): logging in again");
        await shot("login-retry");
        await login();
    }
    log("logged in as", env("KOS_USER"));
    // The status is readable by everyone.
    await waitState("Prepared");
    check((await text("#target-release")).trim() === "5.9", "target release 5.9");
    await el("#plan-counts").waitFor();
    await shot("status");
    // The verdict of the last first boot (health.json: a fallback).
    await el("#health-card:not(.ku-hidden)").waitFor();
    check((await text("#health-label")).trim() === "Unhealthy", "the verdict is red");
    const reasons = await text("#health-reasons");
    check(reasons.includes("acme-web.service was active before the upgrade and is inactive after"), "the verdict says acme-web stopped: " + reasons);
    const warnings = await text("#health-warnings");
    check(warnings.includes("tcp 127.0.0.1:8080 (acme-web.service) was listening before the upgrade and is not after"), "the vanished port is shown: " + warnings);
    check((await text("#health-not-counted")).includes("kos-e2e-broken.service had failed before the upgrade already"), "the pre-existing failure is not counted");
    const checks = await text("#health-checks");
    check(checks.includes("wanted.d/20-cache") && checks.includes("red.d/10-drain"), "checks and hooks are listed: " + checks);
    check(!checks.includes("cache cold"), "the checks' output (root only) is not shown");
    await el("#health-card").scrollIntoViewIfNeeded();
    await shot("health-verdict", { keepScroll: true });
    await openDialog("#btn-prepare", "Prepare");
    await el("#prepare-to").fill("5.9");
    await el("#dialog-confirm").click();
    const alert = el("#alerts .pf-c-alert.pf-m-danger");
    await alert.waitFor();
    const words = await alert.textContent();
    log("refusal:", words);
    check(/You are not allowed to prepare an upgrade/.test(words), "the refusal says you are not allowed");
    check(/Nothing was changed/.test(words), "the refusal says nothing was changed");
    check(words.match(/Nothing was changed/g).length === 1, "the refusal says it once");
    check((await text("#state-label")).trim() === "Prepared", "still prepared");
    await shot("refused");
}

let failed = false;
try {
    if (scenario === "admin")
        await admin();
    else if (scenario === "user")
        await user();
    else
        throw new Error("usage: node browser.mjs admin|user");
    log("scenario", scenario, "passed");
} catch (e) {
    failed = true;
    console.log("FAILED:", e.stack || e);
    await page.screenshot({ path: path.join(SHOTS, `FAILED-${scenario}.png`) }).catch(() => {});
} finally {
    await browser.close();
}
process.exit(failed ? 1 : 0);
