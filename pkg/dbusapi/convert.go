package dbusapi

import (
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/keyarchos/kos-upgrade/pkg/pkgmgr"
	"github.com/keyarchos/kos-upgrade/upgrader"
)

func usec(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	return uint64(t.UnixMicro())
}

// planSummary is the Plan property: empty when there is no plan.
func planSummary(p *upgrader.Plan) map[string]dbus.Variant {
	m := map[string]dbus.Variant{}
	if p == nil {
		return m
	}
	c := p.Counts()
	m["id"] = dbus.MakeVariant(p.ID)
	m["source"] = dbus.MakeVariant(p.Source.VersionID)
	m["target"] = dbus.MakeVariant(p.Target.VersionID)
	m["snapshot"] = dbus.MakeVariant(p.Snapshot)
	m["signature_check"] = dbus.MakeVariant(p.SignatureCheck)
	mode := p.Mode
	if mode == "" {
		mode = upgrader.ModeTarget // plans older than the mode
	}
	m["mode"] = dbus.MakeVariant(mode)
	repos := make([]string, len(p.Repos)) // empty: the system's own
	for i, r := range p.Repos {
		repos[i] = r.String() // ID=URL, credentials redacted
	}
	m["repos"] = dbus.MakeVariant(repos)
	if len(p.Images) > 0 {
		images := make([]string, len(p.Images))
		for i, im := range p.Images {
			images[i] = im.Path
			if im.Label != "" {
				images[i] += " (label " + im.Label + ")"
			}
		}
		m["images"] = dbus.MakeVariant(images)
	}
	m["created_usec"] = dbus.MakeVariant(usec(p.CreatedAt))
	m["download_size"] = dbus.MakeVariant(uint64(max(p.DownloadSize, 0)))
	m["install_size"] = dbus.MakeVariant(uint64(max(p.InstallSize, 0)))
	m["packages"] = dbus.MakeVariant(uint32(len(p.Transaction)))
	for k, a := range map[string]string{
		"upgrade": pkgmgr.ActionUpgrade, "install": pkgmgr.ActionInstall, "downgrade": pkgmgr.ActionDowngrade,
		"obsoleted": pkgmgr.ActionObsoleted, "remove": pkgmgr.ActionRemove,
	} {
		m[k] = dbus.MakeVariant(uint32(c[a]))
	}
	return m
}

// resultDict is a GetHistory entry, and with state (the run's current
// state) the LastResult property: reboot_required is the state's, whether
// what the result did (an in-place rollback point merged back) completes
// only at the next boot.
func resultDict(r *upgrader.Result, state *upgrader.State) map[string]dbus.Variant {
	m := map[string]dbus.Variant{}
	if r == nil {
		return m
	}
	m["run_id"] = dbus.MakeVariant(r.RunID)
	m["kind"] = dbus.MakeVariant(r.Kind)
	m["success"] = dbus.MakeVariant(r.Success)
	m["status"] = dbus.MakeVariant(string(r.Status))
	m["error"] = dbus.MakeVariant(pkgmgr.RedactText(r.Error))
	m["step"] = dbus.MakeVariant(r.Step)
	m["from"] = dbus.MakeVariant(r.From)
	m["to"] = dbus.MakeVariant(r.To)
	m["snapshot"] = dbus.MakeVariant(r.Snapshot)
	m["in_place"] = dbus.MakeVariant(r.InPlace)
	if state != nil {
		m["reboot_required"] = dbus.MakeVariant(state.RebootRequired)
	}
	m["started_usec"] = dbus.MakeVariant(usec(r.StartedAt))
	m["finished_usec"] = dbus.MakeVariant(usec(r.FinishedAt))
	// How the offline step upgraded (docs/stage.md): staged or classic
	// ("" where staging does not exist) and why, what was carried over,
	// and the offline window (0 while unfinished).
	m["path"] = dbus.MakeVariant(r.Path)
	m["path_reason"] = dbus.MakeVariant(pkgmgr.RedactText(r.PathReason))
	m["carried"] = dbus.MakeVariant(uint32(max(r.Carried, 0)))
	m["bytes_cloned"] = dbus.MakeVariant(uint64(max(r.BytesCloned, 0)))
	var window uint64
	if !r.FinishedAt.IsZero() && r.FinishedAt.After(r.StartedAt) {
		window = uint64(r.FinishedAt.Sub(r.StartedAt).Microseconds())
	}
	m["offline_usec"] = dbus.MakeVariant(window)
	m["at_shutdown"] = dbus.MakeVariant(r.AtShutdown)
	return m
}
