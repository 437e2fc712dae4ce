// The kos-upgrade Cockpit page: a client of org.kos.Upgrade1 (docs/dbus.md)
// through cockpit.dbus on the system bus, with superuser "try": an
// administrator's session calls as root, anybody else as themselves (the
// daemon then refuses changes with AccessDenied, which the page says in
// words). See docs/cockpit.md.
import * as fmt from "./format.js";

const cockpit = window.cockpit;
const NAME = "org.kos.Upgrade1";
const PATH = "/org/kos/Upgrade1";
const IFACE = "org.kos.Upgrade1";
const PROPS_IFACE = "org.freedesktop.DBus.Properties";

const $ = id => document.getElementById(id);

// h builds an element: h("p", {class: "x"}, "text", child, ...). Text is
// always set as text, never parsed as HTML.
function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
        if (v === undefined || v === null || v === false)
            continue;
        if (k.startsWith("on"))
            el.addEventListener(k.slice(2), v);
        else
            el.setAttribute(k, v === true ? "" : v);
    }
    append(el, children);
    return el;
}

function append(el, children) {
    for (const c of children.flat()) {
        if (c === undefined || c === null || c === false)
            continue;
        el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
}

function replace(el, ...children) {
    el.replaceChildren();
    append(el, children);
}

const SVG = "http://www.w3.org/2000/svg";
// icon draws a small status icon in the alert's color (no icon font).
function icon(kind) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 16 16");
    svg.setAttribute("width", "1em");
    svg.setAttribute("height", "1em");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("fill", "currentColor");
    const shape = (name, attrs) => {
        const e = document.createElementNS(SVG, name);
        for (const [k, v] of Object.entries(attrs))
            e.setAttribute(k, v);
        svg.append(e);
    };
    if (kind === "warning") {
        shape("path", { d: "M8 0.5 L15.8 15 H0.2 Z" });
        shape("rect", { x: "7", y: "5", width: "2", height: "5.5", fill: "#fff" });
        shape("rect", { x: "7", y: "11.8", width: "2", height: "2", fill: "#fff" });
    } else {
        shape("circle", { cx: "8", cy: "8", r: "8" });
        if (kind === "success") {
            shape("path", { d: "M4 8.3 L7 11.2 L12.2 5.4", stroke: "#fff", "stroke-width": "2", fill: "none" });
        } else if (kind === "danger") {
            shape("rect", { x: "7", y: "3.5", width: "2", height: "6", fill: "#fff" });
            shape("rect", { x: "7", y: "10.8", width: "2", height: "2", fill: "#fff" });
        } else {
            shape("rect", { x: "7", y: "6.5", width: "2", height: "6", fill: "#fff" });
            shape("rect", { x: "7", y: "3.2", width: "2", height: "2", fill: "#fff" });
        }
    }
    return svg;
}

const ALERT_LABEL = { danger: "Danger alert:", warning: "Warning alert:", success: "Success alert:", info: "Info alert:" };

// alertBox is a PatternFly inline alert. kind: danger, warning, success, info.
function alertBox(kind, title, body, opts = {}) {
    const el = h("div", { class: "pf-c-alert pf-m-inline pf-m-" + kind + (opts.plain ? " pf-m-plain" : "") + (opts.class ? " " + opts.class : ""), "aria-label": ALERT_LABEL[kind] + " " + (typeof title === "string" ? title : "") },
                 h("div", { class: "pf-c-alert__icon" }, icon(kind)),
                 h("p", { class: "pf-c-alert__title" }, h("span", { class: "pf-u-screen-reader" }, ALERT_LABEL[kind]), title));
    if (opts.onClose) {
        el.append(h("div", { class: "pf-c-alert__action" },
                    h("button", { class: "pf-c-button pf-m-plain", type: "button", "aria-label": "Close alert: " + title, onclick: opts.onClose }, "×")));
    }
    if (body && (!Array.isArray(body) || body.length))
        el.append(h("div", { class: "pf-c-alert__description" }, body));
    return el;
}

// --- the service -----------------------------------------------------------

const client = cockpit.dbus(NAME, { bus: "system", superuser: "try" });

function call(method, options, iface = IFACE) {
    const args = iface === IFACE ? [options || {}] : options;
    const type = iface === IFACE ? "a{sv}" : undefined;
    return client.call(PATH, iface, method, args, type ? { type } : {});
}

const sv = (t, v) => ({ t, v });

const model = {
    props: {}, // the properties, unwrapped
    status: null, // GetReport: the status document (with the plan)
    check: null, // the last assessment report
    history: [],
    progress: null, // {step, percent, message} of the running job
    job: null, // the method this page called and waits for
    loaded: false,
    unavailable: null, // an error text when the service cannot be reached
};

function showError(method, err) {
    const t = fmt.errorText(method, err);
    addAlert("danger", t.title, t.detail);
}

const alerts = [];
// addAlert shows an alert above the status. A new outcome replaces the
// earlier success and warning alerts; errors stay until closed.
function addAlert(kind, title, detail) {
    if (kind !== "danger") {
        for (const old of alerts.filter(a => a.dataset.kind !== "danger")) {
            old.remove();
            alerts.splice(alerts.indexOf(old), 1);
        }
    }
    const el = alertBox(kind, title, detail ? h("p", {}, detail) : null, {
        onClose: () => {
            el.remove();
        },
    });
    el.dataset.kind = kind;
    $("alerts").append(el);
    alerts.push(el);
    // Keep the last few only.
    while (alerts.length > 4)
        alerts.shift().remove();
}

async function loadProps() {
    const [all] = await call("GetAll", [IFACE], PROPS_IFACE);
    model.props = fmt.unwrap(all);
}

async function loadStatus() {
    const [json] = await call("GetReport", {});
    model.status = JSON.parse(json);
}

async function loadCheck() {
    const [json] = await call("GetReport", { what: sv("s", "check") });
    const r = JSON.parse(json);
    if (r && r.findings)
        model.check = r;
}

async function loadHistory() {
    const [runs] = await call("GetHistory", { limit: sv("u", 20) });
    model.history = fmt.unwrap(runs);
}

let refreshing = null;
let refreshAgain = false;
// refresh reads everything again (coalesced).
async function refresh() {
    if (refreshing) {
        refreshAgain = true;
        return refreshing;
    }
    refreshing = (async () => {
        try {
            await loadProps();
            await Promise.all([loadStatus(), loadHistory(), model.loaded ? null : loadCheck()]);
            model.unavailable = null;
        } catch (err) {
            console.warn("kos-upgrade: refresh failed", err);
            model.unavailable = fmt.errorText("GetReport", err);
        }
        model.loaded = true;
        render();
    })();
    try {
        await refreshing;
    } finally {
        refreshing = null;
    }
    if (refreshAgain) {
        refreshAgain = false;
        return refresh();
    }
}

client.subscribe({ path: PATH, interface: PROPS_IFACE, member: "PropertiesChanged" }, (path, iface, signal, args) => {
    if (args[0] !== IFACE)
        return;
    const changed = fmt.unwrap(args[1]);
    Object.assign(model.props, changed);
    if (changed.State !== undefined && changed.State !== "preparing" && changed.State !== "applying")
        model.progress = null;
    render();
    if ("State" in changed || "Plan" in changed || "LastResult" in changed || "Armed" in changed)
        refresh();
});

client.subscribe({ path: PATH, interface: IFACE }, (path, iface, signal, args) => {
    if (signal === "Progress") {
        const [step, percent, message] = args;
        model.progress = { step, percent, message: message || (model.progress && model.progress.step === step ? model.progress.message : "") };
        renderProgress();
    } else if (signal === "Finished") {
        const [success, message] = args;
        model.progress = null;
        if (!model.job || model.job === "Prepare") {
            // Jobs started elsewhere (the CLI, another browser) and our
            // Prepare end here; our synchronous calls report themselves.
            if (success)
                addAlert("success", "Finished: " + message);
            else
                addAlert("danger", "The upgrade task failed.", message);
            if (model.job === "Prepare")
                model.job = null;
        }
        refresh();
    }
});

// The daemon exits when idle (docs/dbus.md) and is started again by the
// next call: read again when its owner changes, so that what the CLI did
// meanwhile shows.
client.addEventListener("owner", (ev, owner) => {
    if (owner === null)
        window.setTimeout(refresh, 1000);
    else if (model.loaded)
        refresh();
});

client.addEventListener("close", (ev, options) => {
    model.unavailable = fmt.errorText("GetReport", options || { problem: "disconnected" });
    render();
});

// --- rendering -------------------------------------------------------------

function render() {
    const p = model.props;
    const app = $("app");
    app.setAttribute("aria-busy", model.loaded ? "false" : "true");
    app.dataset.state = p.State || "";

    const unavailable = $("unavailable");
    if (model.unavailable) {
        const el = alertBox("danger", model.unavailable.title, h("p", {}, model.unavailable.detail));
        el.id = "unavailable";
        if (unavailable)
            unavailable.replaceWith(el);
        else
            $("alerts").before(el);
    } else if (unavailable) {
        unavailable.remove();
    }

    $("current-release").textContent = p.CurrentRelease || "unknown";
    $("target-release").textContent = p.TargetRelease || "none";
    const si = fmt.stateInfo(p.State);
    replace($("state"), h("span", { class: "pf-c-label pf-m-" + si.color, id: "state-label" },
                           h("span", { class: "pf-c-label__content" }, si.label)));
    $("step").textContent = fmt.stepText(p.Step) || "none";
    $("state-text").textContent = si.text;

    const lr = p.LastResult || {};
    if (lr.run_id) {
        const what = fmt.runTitle(lr);
        const path = fmt.pathText(lr);
        replace($("last-result"), what + ": ",
                h("strong", {}, lr.success ? "succeeded" : "failed"),
                lr.finished_usec ? ", " + fmt.formatTime(lr.finished_usec) : "",
                path ? h("div", { id: "last-path" }, path) : "");
    } else {
        $("last-result").textContent = "none yet";
    }
    $("rollback").textContent = p.RollbackAvailable
        ? "available" + (lr.snapshot ? " (snapshot " + lr.snapshot + ")" : "")
        : "not available";

    const allowed = fmt.allowedActions(p, !!model.job || !!(model.status && model.status.job) || !!model.unavailable);
    $("btn-check").disabled = !allowed.check;
    $("btn-prepare").disabled = !allowed.prepare;
    $("btn-reboot").disabled = !allowed.reboot;
    $("btn-cancel").disabled = !allowed.cancel;
    $("btn-rollback").disabled = !allowed.rollback;

    renderProgress();
    renderHealth();
    renderReport();
    renderPlan();
    renderHistory();
}

// renderHealth shows the last first-boot verdict (health.json, in the
// status document; docs/health.md): after a fallback the old system says
// why. The checks' output is not in the status (root only).
function renderHealth() {
    const card = $("health-card");
    const v = model.status && model.status.health;
    const vi = fmt.verdictInfo(v);
    const err = model.status && model.status.health_error;
    card.classList.toggle("ku-hidden", !vi && !err);
    if (!vi) {
        replace($("health"), err ? alertBox("warning", "The health verdict cannot be read", h("p", {}, err)) : []);
        return;
    }
    const list = (id, items) => items && items.length ? h("ul", { class: "ku-details", id }, items.map(x => h("li", {}, x))) : null;
    const out = [
        h("p", {},
          h("span", { class: "pf-c-label pf-m-" + vi.color, id: "health-label" }, h("span", { class: "pf-c-label__content" }, vi.label)),
          " ", h("span", { id: "health-text" }, vi.text)),
        descList([
            ["Judged", fmt.formatTime(v.at)],
            v.confirm_by && v.decision === "confirming" ? ["On trial until", fmt.formatTime(v.confirm_by)] : null,
            v.confirmed ? ["Confirmation", v.confirmed] : null,
            ["Baseline", v.baseline || "none"],
        ]),
    ];
    if (v.reasons && v.reasons.length) {
        out.push(h("h3", { class: "pf-c-title pf-m-md ku-subtitle" }, "Why it failed"));
        out.push(list("health-reasons", v.reasons));
    }
    if (v.warnings && v.warnings.length) {
        out.push(h("h3", { class: "pf-c-title pf-m-md ku-subtitle" }, "Warnings"));
        out.push(list("health-warnings", v.warnings));
    }
    const notCounted = [
        ...(v.expected || []).map(c => c.message + " (expected: " + c.rule + ")"),
        ...(v.pre_existing || []).map(u => u + " had failed before the upgrade already"),
    ];
    if (notCounted.length) {
        out.push(h("h3", { class: "pf-c-title pf-m-md ku-subtitle" }, "Not counted"));
        out.push(list("health-not-counted", notCounted));
    }
    const checks = [...(v.checks || []), ...(v.hooks || [])];
    if (checks.length) {
        out.push(table("Health checks", ["Check", "Result", "Details"], checks.map(c => [
            h("span", { class: "ku-mono" }, c.name),
            h("span", { class: "pf-c-label pf-m-" + (c.result === "passed" ? "green" : c.class === "wanted" || c.class === "hook" || c.class === "probe" ? "orange" : "red") },
              h("span", { class: "pf-c-label__content" }, c.result)),
            c.detail || "",
        ]), "health-checks"));
    }
    replace($("health"), out);
}

function renderProgress() {
    const p = model.props;
    // Long tasks only: Cancel, Arm and Reboot take a moment and need no bar.
    const long = ["Check", "Prepare", "Rollback", "check", "prepare", "rollback"];
    const running = p.State === "preparing" || p.State === "applying" || long.includes(model.job) ||
        (model.status && model.status.job && long.includes(model.status.job.name));
    const box = $("progress");
    box.classList.toggle("ku-hidden", !running);
    if (!running)
        return;
    let percent = Number(p.Progress) || 0;
    let step = p.Step;
    let message = "";
    if (model.progress) {
        percent = Math.max(percent, Number(model.progress.percent) || 0);
        step = model.progress.step || step;
        message = model.progress.message;
    }
    percent = Math.min(100, Math.max(0, percent));
    const job = model.job || (model.status && model.status.job && model.status.job.name) || (p.State === "preparing" ? "Prepare" : "");
    const jobLabel = { Check: "Checking", Prepare: "Preparing the upgrade", prepare: "Preparing the upgrade", check: "Checking", Cancel: "Cancelling", Reboot: "Arming", Rollback: "Rolling back" }[job] || "Working";
    $("progress-label").textContent = jobLabel + (step ? ": " + fmt.stepText(step) : "");
    $("progress-measure").textContent = percent + "%";
    $("progress-bar").setAttribute("aria-valuenow", String(percent));
    $("progress-indicator").style.width = percent + "%"; // CSSOM: allowed by the CSP
    $("progress-message").textContent = message || "";
}

function labelFor(f) {
    if (fmt.isInhibitor(f))
        return h("span", { class: "pf-c-label pf-m-red" }, h("span", { class: "pf-c-label__content" }, "Inhibitor"));
    const colors = { high: "orange", medium: "gold", low: "blue", info: "grey" };
    return h("span", { class: "pf-c-label pf-m-" + (colors[f.severity] || "grey") },
             h("span", { class: "pf-c-label__content" }, f.severity || "info"));
}

function findingKind(f) {
    if (fmt.isInhibitor(f))
        return "danger";
    if (f.severity === "high" || f.severity === "medium")
        return "warning";
    if (f.severity === "low")
        return "info";
    return "info";
}

function findingView(f) {
    const body = [h("p", {}, f.summary)];
    const details = f.details || [];
    if (details.length) {
        const shown = details.slice(0, 15);
        body.push(h("ul", { class: "ku-details" }, shown.map(d => h("li", {}, d)),
                    details.length > shown.length ? h("li", {}, "and " + (details.length - shown.length) + " more") : null));
    }
    for (const r of f.remediations || []) {
        body.push(h("p", { class: "ku-remedy" },
                    h("span", { class: "ku-remedy-label" }, r.type === "command" ? "Run:" : "What to do:"),
                    r.type === "command" ? h("code", { class: "ku-command" }, r.text) : r.text));
    }
    const title = [labelFor(f), " ", f.title, " ", h("span", { class: "ku-finding-key" }, f.key)];
    const el = alertBox(findingKind(f), title, body, { class: "ku-finding" });
    el.dataset.key = f.key;
    return el;
}

function reportView(r, source) {
    const findings = fmt.sortFindings(r.findings);
    const notable = findings.filter(f => fmt.isInhibitor(f) || f.severity !== "info");
    const info = findings.filter(f => !fmt.isInhibitor(f) && f.severity === "info");
    const c = r.counts || {};
    const out = [];
    out.push(h("p", { class: "ku-summary", id: "report-summary" },
               (r.target ? "Upgrade from " + (r.source || "this system") + " to " + r.target : "Checks that need no target release") +
               ", assessed " + fmt.formatTime(r.generated_at) + (source ? " " + source : "") + "."));
    if (r.inhibited) {
        out.push(alertBox("danger", (c.inhibitors || notable.filter(fmt.isInhibitor).length) + " problem(s) block the upgrade",
                          h("p", {}, "Fix each problem marked Inhibitor below, then run Check again."), { class: "ku-verdict" }));
    } else {
        out.push(alertBox("success", r.target ? "Nothing blocks the upgrade to " + r.target : "Nothing blocks an upgrade",
                          h("p", {}, notable.length ? "Read the warnings below." : "No warnings."), { class: "ku-verdict" }));
    }
    const list = h("div", { class: "ku-findings", id: "findings" }, notable.map(findingView));
    out.push(list);
    if (info.length) {
        out.push(h("details", { class: "ku-info-findings" },
                   h("summary", {}, info.length + " informational finding(s)"),
                   h("div", { class: "ku-findings" }, info.map(findingView))));
    }
    return out;
}

function renderReport() {
    const el = $("report");
    let r = model.check;
    let source = "";
    const plan = model.status && model.status.plan;
    if ((!r || !r.findings) && plan && plan.report) {
        r = plan.report;
        source = "when the upgrade was prepared";
    }
    if (!r || !r.findings) {
        replace(el, emptyState("No assessment yet", "Check assesses whether this system can be upgraded, and says what to fix first. It changes nothing."));
        return;
    }
    replace(el, reportView(r, source));
}

function emptyState(title, text) {
    return h("div", { class: "pf-c-empty-state pf-m-sm" },
             h("div", { class: "pf-c-empty-state__content" },
               h("h3", { class: "pf-c-title pf-m-md" }, title),
               h("div", { class: "pf-c-empty-state__body" }, text)));
}

function count(value, label, id) {
    return h("div", { class: "ku-count", id },
             h("span", { class: "ku-count-value" }, String(value ?? 0)),
             h("span", { class: "ku-count-label" }, label));
}

function descList(rows) {
    return h("dl", { class: "pf-c-description-list pf-m-horizontal pf-m-compact" },
             rows.filter(r => r).map(([term, value]) =>
                 h("div", { class: "pf-c-description-list__group" },
                   h("dt", { class: "pf-c-description-list__term" }, h("span", { class: "pf-c-description-list__text" }, term)),
                   h("dd", { class: "pf-c-description-list__description" }, h("div", { class: "pf-c-description-list__text" }, value)))));
}

function table(label, headers, rows, id) {
    return h("div", { class: "ku-table-wrap" },
             h("table", { class: "pf-c-table pf-m-compact pf-m-grid-md", role: "grid", "aria-label": label, id },
               h("thead", {}, h("tr", { role: "row" }, headers.map(t => h("th", { role: "columnheader", scope: "col" }, t)))),
               h("tbody", {}, rows.map(r => h("tr", { role: "row" }, r.map((c, i) => h("td", { role: "gridcell", "data-label": headers[i] }, c)))))));
}

function renderPlan() {
    const el = $("plan");
    const p = model.props.Plan || {};
    if (!p.id) {
        replace(el, emptyState("No upgrade is prepared", "Prepare resolves the upgrade to a release, downloads and verifies its packages. The running system is not changed."));
        return;
    }
    const full = model.status && model.status.plan && model.status.plan.id === p.id ? model.status.plan : null;
    const out = [];
    out.push(h("div", { class: "ku-counts", id: "plan-counts" },
               count(p.packages, "packages", "count-packages"),
               count(p.upgrade, "to upgrade", "count-upgrade"),
               count(p.install, "to install", "count-install"),
               count((p.remove || 0) + (p.obsoleted || 0), "to remove", "count-remove"),
               p.downgrade ? count(p.downgrade, "to downgrade", "count-downgrade") : null));
    out.push(descList([
        ["Upgrade", (p.source || model.props.CurrentRelease || "?") + " → " + (p.target || "?")],
        ["Download size", fmt.humanSize(p.download_size)],
        ["Installed size", fmt.humanSize(p.install_size)],
        ["Snapshot", p.snapshot === "none" ? "none: no rollback is possible" : (p.snapshot || "unknown") + " (the old system stays bootable)"],
        ["Signatures", p.signature_check === "skipped" ? "NOT checked (prepared without GPG check)" : "checked"],
        ["Repositories", reposText(p)],
        ["Prepared", fmt.formatTime(p.created_usec)],
        ["Plan", h("span", { class: "ku-mono" }, p.id)],
    ]));
    if (full) {
        const rm = fmt.removals(full);
        out.push(h("h3", { class: "pf-c-title pf-m-md ku-subtitle" }, "Packages removed"));
        if (rm.length)
            out.push(table("Packages removed", ["Package", "Why"], rm.map(r => [h("span", { class: "ku-mono" }, r.nevra || r.name), r.reason || r.action]), "removals"));
        else
            out.push(h("p", {}, "None: every installed package is upgraded or kept."));
        const keep = fmt.kept(full);
        out.push(h("h3", { class: "pf-c-title pf-m-md ku-subtitle" }, "Packages kept from outside the distribution"));
        if (keep.length)
            out.push(h("ul", { class: "ku-details", id: "kept" }, keep.map(k => h("li", {}, k.text + (k.kind === "orphaned" ? " (no longer in the distribution)" : " (third-party)")))));
        else
            out.push(h("p", {}, "None: every installed package comes from the distribution."));
    } else if (model.status && model.status.plan_error) {
        out.push(alertBox("warning", "The plan cannot be read", h("p", {}, model.status.plan_error)));
    }
    replace(el, out);
}

function renderHistory() {
    const el = $("history");
    const runs = [...(model.history || [])].reverse();
    if (!runs.length) {
        replace(el, emptyState("No upgrade has run yet", "Upgrades and rollbacks applied on this system are listed here with their results."));
        return;
    }
    replace(el, table("Upgrade history", ["Started", "What", "Result", "Details"], runs.map(r => [
        fmt.formatTime(r.started_usec),
        fmt.runTitle(r),
        h("span", { class: "pf-c-label pf-m-" + (r.success ? "green" : "red") }, h("span", { class: "pf-c-label__content" }, r.success ? "succeeded" : "failed")),
        [r.error ? r.error + (r.step ? " (at step " + r.step + ")" : "") : (r.status || ""), fmt.pathText(r)].filter(x => x).join(". "),
    ]), "history-table"));
}

// --- dialogs and actions -----------------------------------------------------

let dialogResolve = null;
let dialogOpener = null;

// reposText says where a plan's packages come from (the daemon redacts
// credentials in the URLs).
function reposText(p) {
    const r = p.repos || [];
    const images = p.images || [];
    const parts = [];
    if (images.length)
        parts.push("the image" + (images.length > 1 ? "s " : " ") + images.join(", ") + " (read in place on this server)");
    if (r.length)
        parts.push("the repositories given to prepare: " + r.join(", "));
    return parts.length ? parts.join(" and ") : "the system's own repositories";
}

// confirm opens the dialog and resolves with the form's values, or null
// when the person closes it.
function confirmDialog({ title, body, confirm, variant = "primary", onInput }) {
    const dlg = $("dialog");
    $("dialog-title").textContent = title;
    replace($("dialog-body"), body);
    const btn = $("dialog-confirm");
    btn.textContent = confirm;
    btn.className = "pf-c-button pf-m-" + variant;
    dialogOpener = document.activeElement;
    if (onInput) {
        $("dialog-form").oninput = () => onInput($("dialog-form"), btn);
        onInput($("dialog-form"), btn);
    } else {
        $("dialog-form").oninput = null;
    }
    dlg.returnValue = "";
    dlg.showModal();
    const first = dlg.querySelector("input:not([type=hidden])") || btn;
    first.focus();
    return new Promise(resolve => {
        dialogResolve = resolve;
    });
}

$("dialog").addEventListener("close", () => {
    const dlg = $("dialog");
    const resolve = dialogResolve;
    dialogResolve = null;
    const values = {};
    for (const el of $("dialog-form").elements) {
        if (el.name)
            values[el.name] = el.type === "checkbox" ? el.checked : el.value;
    }
    if (dialogOpener && document.contains(dialogOpener))
        dialogOpener.focus();
    if (resolve)
        resolve(dlg.returnValue === "confirm" ? values : null);
});
$("dialog-dismiss").addEventListener("click", () => $("dialog").close(""));

function field(id, label, input, helper) {
    return h("div", { class: "pf-c-form__group" },
             h("div", { class: "pf-c-form__group-label" },
               h("label", { class: "pf-c-form__label", for: id }, h("span", { class: "pf-c-form__label-text" }, label))),
             h("div", { class: "pf-c-form__group-control" }, input,
               helper ? h("p", { class: "pf-c-form__helper-text", id: id + "-helper" }, helper) : null));
}

function checkbox(id, name, label, checked, description) {
    return h("div", { class: "pf-c-check" },
             h("input", { class: "pf-c-check__input", type: "checkbox", id, name, checked }),
             h("label", { class: "pf-c-check__label", for: id }, label),
             description ? h("span", { class: "pf-c-check__description" }, description) : null);
}

function releaseInput(id, required) {
    return h("input", {
        class: "pf-c-form-control", type: "text", id, name: "to", required,
        value: model.props.TargetRelease || "", placeholder: "e.g. 5.9", inputmode: "decimal",
        pattern: "[0-9]+(\\.[0-9]+)*", autocomplete: "off", "aria-describedby": id + "-helper",
        spellcheck: "false",
    });
}

// run calls a job method; synchronous ones report success here.
async function run(method, options, success) {
    model.job = method;
    model.progress = null;
    render();
    try {
        const result = await call(method, options);
        if (method !== "Prepare")
            model.job = null;
        if (success)
            success(result);
    } catch (err) {
        model.job = null;
        showError(method, err);
    }
    await refresh();
}

function planText() {
    const p = model.props.Plan || {};
    return "the upgrade from " + (p.source || model.props.CurrentRelease) + " to " + (p.target || model.props.TargetRelease) +
        " (" + (p.packages || 0) + " packages, " + fmt.humanSize(p.download_size) + " downloaded)";
}

$("btn-check").addEventListener("click", async () => {
    const v = await confirmDialog({
        title: "Check the system",
        body: [
            h("p", {}, "kos-upgrade assesses whether this system can be upgraded: state, free space, /boot and the boot loader, the snapshot for rollback, and, for a target release, whether dnf can resolve the upgrade and which packages it would remove or keep. Nothing is downloaded and nothing on the system changes."),
            field("check-to", "Target release", releaseInput("check-to", false), "Leave empty to check only what needs no target release."),
        ],
        confirm: "Check",
    });
    if (!v)
        return;
    const opts = v.to ? { to: sv("s", v.to.trim()) } : {};
    await run("Check", opts, ([inhibited, json]) => {
        try {
            model.check = JSON.parse(json);
        } catch (e) {
            model.check = null;
        }
        addAlert(inhibited ? "warning" : "success",
                 inhibited ? "The check found problems that block the upgrade." : "The check found nothing that blocks the upgrade.",
                 "The assessment is shown below.");
    });
});

$("btn-prepare").addEventListener("click", async () => {
    const replacing = !!(model.props.Plan || {}).id;
    const v = await confirmDialog({
        title: "Prepare an upgrade",
        body: [
            h("p", {}, "kos-upgrade checks the system, resolves the upgrade with dnf, downloads the packages, verifies their signatures and checksums, and tests the transaction. Nothing on the running system changes: you choose later when to reboot into the upgrade."),
            h("p", {}, "This can take several minutes; the progress shows on this page, and you may leave it meanwhile."),
            replacing ? h("p", {}, h("strong", {}, "The upgrade prepared before is replaced.")) : null,
            field("prepare-to", "Target release", releaseInput("prepare-to", false), "The release to upgrade to, such as 5.9. May stay empty with an image that names its release."),
            field("prepare-iso", "From an image on this server",
                  h("input", {
                      class: "pf-c-form-control", type: "text", id: "prepare-iso", name: "iso", value: "",
                      placeholder: "/srv/KOS-5.9-x86_64-dvd.iso", autocomplete: "off", spellcheck: "false",
                      "aria-describedby": "prepare-iso-helper",
                  }),
                  "Optional: the absolute path of an ISO image on this server (the release DVD, or a bundle made by kos-upgrade bundle). It is read in place: nothing is uploaded, and only the packages the upgrade needs are copied out and verified. Empty: the system's own repositories."),
        ],
        confirm: "Prepare",
        onInput: (form, btn) => {
            const to = form.elements.to.value.trim();
            const iso = form.elements.iso.value.trim();
            btn.disabled = iso ? !fmt.validImagePath(iso) || (to !== "" && !fmt.validRelease(to)) : !fmt.validRelease(to);
        },
    });
    if (!v)
        return;
    const opts = {};
    if (v.to.trim())
        opts.to = sv("s", v.to.trim());
    if (v.iso.trim())
        opts.iso = sv("as", [v.iso.trim()]);
    await run("Prepare", opts);
});

$("btn-reboot").addEventListener("click", async () => {
    const p = model.props.Plan || {};
    const v = await confirmDialog({
        title: "Reboot and apply the upgrade",
        body: [
            h("p", {}, "kos-upgrade arms " + planText() + " and reboots the machine now."),
            h("ul", {},
              h("li", {}, "At the next boot the upgrade runs offline, from the packages already downloaded."),
              p.snapshot && p.snapshot !== "none"
                  ? h("li", {}, "It is applied into a " + p.snapshot + " snapshot: the current system stays as it is until the upgrade has succeeded, and you can roll back to it.")
                  : h("li", {}, h("strong", {}, "This upgrade has no snapshot: it changes the system in place and cannot be rolled back.")),
              h("li", { id: "reboot-repos" }, "Packages from " + reposText(p) + "."),
              p.signature_check === "skipped"
                  ? h("li", { id: "reboot-signatures" }, h("strong", {}, "The packages' GPG signatures were NOT checked: this upgrade was prepared without GPG check."))
                  : h("li", { id: "reboot-signatures" }, "Every package's GPG signature and checksum was verified."),
              h("li", {}, "The machine is unavailable for several minutes; everyone logged in is disconnected.")),
            checkbox("reboot-now", "reboot", "Reboot now", true, "Uncheck to only arm the upgrade: it then runs at the next reboot, whenever that happens."),
        ],
        confirm: "Reboot and apply",
        variant: "warning",
        onInput: (form, btn) => {
            btn.textContent = form.elements.reboot.checked ? "Reboot and apply" : "Arm for the next boot";
        },
    });
    if (!v)
        return;
    const noReboot = !v.reboot;
    await run("Reboot", { no_reboot: sv("b", noReboot) }, () => {
        addAlert("success", noReboot ? "The upgrade is armed: it runs at the next boot." : "The upgrade is armed; the machine reboots now.");
    });
});

$("btn-cancel").addEventListener("click", async () => {
    const v = await confirmDialog({
        title: "Cancel the upgrade",
        body: [
            h("p", {}, "kos-upgrade drops " + planText() + "."),
            h("ul", {},
              h("li", {}, "Nothing runs at the next boot."),
              h("li", {}, "The plan and the downloaded packages are deleted."),
              h("li", {}, "The running system is not changed.")),
        ],
        confirm: "Cancel upgrade",
        variant: "danger",
    });
    if (!v)
        return;
    await run("Cancel", {}, () => addAlert("success", "The upgrade was cancelled: nothing is armed, the plan and the downloaded packages are gone."));
});

$("btn-rollback").addEventListener("click", async () => {
    const lr = model.props.LastResult || {};
    const v = await confirmDialog({
        title: "Roll back the upgrade",
        body: [
            h("p", {}, "kos-upgrade makes the system from before the upgrade" + (lr.from ? " (release " + lr.from + ")" : "") +
              (lr.snapshot ? ", kept in the snapshot " + lr.snapshot + "," : "") + " boot again, and reboots."),
            h("p", {}, "Changes made on the upgraded system since the upgrade are not carried back."),
            checkbox("rollback-now", "reboot", "Reboot now", true, "Uncheck to boot the old system at the next reboot."),
        ],
        confirm: "Roll back",
        variant: "danger",
    });
    if (!v)
        return;
    await run("Rollback", { no_reboot: sv("b", !v.reboot) }, () => addAlert("success", "Rolled back: the next boot starts the system from before the upgrade."));
});

refresh();
