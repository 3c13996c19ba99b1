package main

import (
	"fmt"

	"github.com/anivault/anivault/deployments/internal/timelinesvg"
)

// timelineSVG draws the outage timeline with the shared renderer (the demo
// draws its own with it too): requests per second (reads, writes) as lines,
// errors and uncached reads answered 503 per step as bars on the right axis,
// the outage shaded, the modes as bands, the kill and the restart request as
// markers.
func timelineSVG(t *TimelineResult) string {
	c := t.Counters
	step := t.Step.Seconds()
	if step <= 0 {
		step = 1
	}
	var reads, committed, buffered, unavailable, errs []timelinesvg.Point
	for _, s := range t.Samples {
		mid := s.T - t.Step/2
		reads = append(reads, timelinesvg.Point{T: mid, V: float64(s.Reads) / step})
		committed = append(committed, timelinesvg.Point{T: mid, V: float64(s.Committed) / step})
		buffered = append(buffered, timelinesvg.Point{T: mid, V: float64(s.Buffered) / step})
		unavailable = append(unavailable, timelinesvg.Point{T: s.T, V: float64(s.Unavailable)})
		errs = append(errs, timelinesvg.Point{T: s.T, V: float64(s.ReadErrors + s.WriteErrors)})
	}
	var modes []timelinesvg.ModeSpan
	for _, m := range t.Modes {
		modes = append(modes, timelinesvg.ModeSpan{Mode: string(m.Mode), From: m.From, To: m.To})
	}
	per := fmt.Sprintf("per %v", t.Step)
	return timelinesvg.Render(timelinesvg.Chart{
		Title: "AniVault under load through a PostgreSQL outage (SIGKILL, restart, replay)",
		Subtitle: []string{fmt.Sprintf("%d writers + %d readers on 2 cache-nodes · acknowledged writes %d (committed %d, buffered %d) · write errors %d · lost %d · reads answered 503 (not cached) %d",
			t.Writers, t.Readers, t.Tally.Acknowledged, c.Committed, c.Buffered, c.WriteErrors, t.Tally.Lost, c.ReadUnavailable)},
		Note:   "Shaded: PostgreSQL not answering (killed, then crash recovery). Time from the start of the load.",
		End:    t.End,
		Modes:  modes,
		Shades: []timelinesvg.Span{{Label: "PostgreSQL down", From: t.KillAt, To: t.UpAt}},
		Events: []timelinesvg.Event{
			{At: t.KillAt, Label: "PostgreSQL SIGKILL", Color: "#c62828"},
			{At: t.StartCalledAt, Label: "start requested", Color: "#555555", Dashed: true},
			{At: t.NormalAt, Label: "normal on every node", Color: "#2e7d32"},
		},
		Panels: []timelinesvg.Panel{{
			Label:      fmt.Sprintf("requests per second (%v steps)", t.Step),
			RightLabel: "errors / 503 " + per,
			RightMin:   10,
			Series: []timelinesvg.Series{
				{Label: "reads 503 " + per, Color: "#ffb74d", Bars: true, Step: t.Step, Right: true, Points: unavailable},
				{Label: "errors " + per, Color: "#e53935", Bars: true, Step: t.Step, Right: true, Points: errs},
				{Label: "reads/s (200, 404)", Color: "#1565c0", Points: reads},
				{Label: "writes/s committed", Color: "#2e7d32", Points: committed},
				{Label: "writes/s buffered", Color: "#6a1b9a", Points: buffered},
			},
		}},
	})
}
