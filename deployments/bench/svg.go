package main

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/anivault/anivault/events"
)

// timelineSVG draws the outage timeline by hand: requests per second (reads,
// writes) as polylines, errors per 100 ms as red bars, uncached reads
// answered 503 as orange bars, the outage shaded, the modes as bands.
func timelineSVG(t *TimelineResult) string {
	const (
		W, H                  = 1200, 520
		left, right, top, bot = 70, 250, 60, 70
		bandH                 = 18
	)
	pw, ph := float64(W-left-right), float64(H-top-bot-bandH-10)
	plotTop := float64(top + bandH + 10)
	end := t.End.Seconds()
	if end <= 0 {
		end = 1
	}
	x := func(d time.Duration) float64 { return float64(left) + d.Seconds()/end*pw }
	step := t.Step.Seconds()
	var maxRPS float64
	var maxErr int64
	for _, s := range t.Samples {
		maxRPS = max(maxRPS, float64(s.Reads+s.Unavailable+s.ReadErrors)/step, float64(s.Committed+s.Buffered+s.WriteErrors)/step)
		maxErr = max(maxErr, s.ReadErrors+s.WriteErrors, s.Unavailable)
	}
	yMax := niceCeil(maxRPS * 1.1)
	y := func(v float64) float64 { return plotTop + ph - v/yMax*ph }
	errMax := float64(max(maxErr, 10))
	errMax = niceCeil(errMax * 1.1)
	yErr := func(v float64) float64 { return plotTop + ph - v/errMax*ph }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", W, H, W, H)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", W, H)
	c := t.Counters
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="16" font-weight="bold">AniVault under load through a PostgreSQL outage (SIGKILL, restart, replay)</text>`+"\n", left)
	fmt.Fprintf(&b, `<text x="%d" y="42" font-size="12">%d writers + %d readers on 2 cache-nodes · acknowledged writes %d (committed %d, buffered %d) · write errors %d · lost %d · reads answered 503 (not cached) %d</text>`+"\n",
		left, t.Writers, t.Readers, t.Tally.Acknowledged, c.Committed, c.Buffered, c.WriteErrors, t.Tally.Lost, c.ReadUnavailable)

	// Outage: PostgreSQL down (killed until it answers again).
	fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#999" fill-opacity="0.18"/>`+"\n", x(t.KillAt), plotTop, x(t.UpAt)-x(t.KillAt), ph)
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="#555">PostgreSQL down</text>`+"\n", x(t.KillAt)+4, plotTop+14)
	fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#555" stroke-dasharray="3,3"/>`+"\n", x(t.StartCalledAt), x(t.StartCalledAt), plotTop, plotTop+ph)

	// Mode bands.
	colors := map[events.Mode]string{events.ModeNormal: "#4caf50", events.ModeCacheOnly: "#ff9800", events.ModeRecovering: "#2196f3"}
	for _, m := range t.Modes {
		if m.To <= m.From {
			continue
		}
		fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"><title>%s %.2fs–%.2fs</title></rect>`+"\n",
			x(m.From), top, x(m.To)-x(m.From), bandH, colors[m.Mode], m.Mode, m.From.Seconds(), m.To.Seconds())
		if x(m.To)-x(m.From) > 60 {
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="white" font-weight="bold">%s</text>`+"\n", x(m.From)+4, top+13, m.Mode)
		}
	}

	// Axes and grid.
	for i := 0; i <= 5; i++ {
		v := yMax * float64(i) / 5
		fmt.Fprintf(&b, `<line x1="%d" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, float64(left)+pw, y(v), y(v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%.0f</text>`+"\n", left-6, y(v)+4, v)
		ev := errMax * float64(i) / 5
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="#c62828">%.0f</text>`+"\n", float64(left)+pw+6, yErr(ev)+4, ev)
	}
	for s := 0.0; s <= end; s += 5 {
		xx := x(time.Duration(s * float64(time.Second)))
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#eee"/>`+"\n", xx, xx, plotTop, plotTop+ph)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%.0fs</text>`+"\n", xx, plotTop+ph+16, s)
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#333"/>`+"\n", left, plotTop, pw, ph)
	fmt.Fprintf(&b, `<text x="16" y="%.1f" transform="rotate(-90 16 %.1f)" text-anchor="middle">requests per second (100 ms steps)</text>`+"\n", plotTop+ph/2, plotTop+ph/2)
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" transform="rotate(90 %.1f %.1f)" text-anchor="middle" fill="#c62828">errors / 503 per 100 ms</text>`+"\n",
		float64(left)+pw+40, plotTop+ph/2, float64(left)+pw+40, plotTop+ph/2)

	// Bars: 503 (orange) and errors (red), per 100 ms.
	bw := math.Max(1, pw/end*step*0.8)
	for _, s := range t.Samples {
		xx := x(s.T - t.Step)
		if s.Unavailable > 0 {
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#ffb74d"/>`+"\n", xx, yErr(float64(s.Unavailable)), bw, plotTop+ph-yErr(float64(s.Unavailable)))
		}
		if e := s.ReadErrors + s.WriteErrors; e > 0 {
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#e53935"/>`+"\n", xx, yErr(float64(e)), bw, plotTop+ph-yErr(float64(e)))
		}
	}
	// Lines: reads and writes per second.
	line := func(color string, f func(sample) float64) {
		var pts []string
		for _, s := range t.Samples {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(s.T-t.Step/2), y(f(s)/step)))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.6" points="%s"/>`+"\n", color, strings.Join(pts, " "))
	}
	line("#1565c0", func(s sample) float64 { return float64(s.Reads) })
	line("#2e7d32", func(s sample) float64 { return float64(s.Committed) })
	line("#6a1b9a", func(s sample) float64 { return float64(s.Buffered) })

	// Legend.
	lx, ly := float64(left)+pw+60, plotTop+10
	items := []struct{ color, label string }{
		{"#1565c0", "reads/s (200, 404)"}, {"#2e7d32", "writes/s committed"}, {"#6a1b9a", "writes/s buffered"},
		{"#e53935", "errors per 100 ms"}, {"#ffb74d", "reads 503 per 100 ms"},
		{"#4caf50", "mode normal"}, {"#ff9800", "mode cache_only"}, {"#2196f3", "mode recovering"},
	}
	for i, it := range items {
		yy := ly + float64(i)*18
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="12" height="10" fill="%s"/><text x="%.1f" y="%.1f" font-size="11">%s</text>`+"\n", lx, yy, it.color, lx+16, yy+9, it.label)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#555">dashed line: PostgreSQL start requested (crash recovery until it answers); shaded: PostgreSQL not answering. Time from the start of the load.</text>`+"\n", left, H-18)
	b.WriteString("</svg>\n")
	return b.String()
}

func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}
