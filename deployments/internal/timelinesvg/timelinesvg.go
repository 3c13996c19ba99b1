// Package timelinesvg draws an outage timeline as one self-contained SVG
// document (no script, no external font or stylesheet): the system's modes as
// background bands, time series as lines or bars in one or more stacked
// panels, each with a left and an optional right axis, shaded spans (the
// database down) and labelled event markers. The demo (deployments/local)
// and the benchmarks (deployments/bench) draw their timelines with it.
//
// The document is regular: every mode period is one <g class="band">, every
// event one <g class="event">, every shaded span one <g class="shade">, every
// series one <g class="series">, so that tests and tools can find them.
package timelinesvg

import (
	"encoding/xml"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// Chart is one timeline. Times are offsets from the chart's origin (the
// start of the load, say); the time axis runs from 0 to End.
type Chart struct {
	Title    string
	Subtitle []string // lines under the title
	Note     string   // a line under the chart
	// End is the length of the time axis; 0: the latest time in the data.
	End time.Duration
	// Modes are drawn as background bands across every panel and as a
	// labelled strip above the first one.
	Modes []ModeSpan
	// Shades are grey spans across every panel, labelled at the top.
	Shades []Span
	// Events are vertical markers, labelled above the panels (labels that
	// would overlap go to further rows).
	Events []Event
	// Panels are stacked from top to bottom and share the time axis.
	Panels []Panel
}

// ModeSpan is one period in one mode.
type ModeSpan struct {
	Mode     string // normal, cache_only, recovering (others get grey)
	From, To time.Duration
}

// Span is a labelled period.
type Span struct {
	Label    string
	From, To time.Duration
}

// Event is a labelled instant.
type Event struct {
	At    time.Duration
	Label string
	// Color of the marker; "" picks one from the label (mode.* events in
	// the mode's colour, db.unhealthy red, db.recovered green, else grey).
	Color  string
	Dashed bool
}

// Panel is one plot area.
type Panel struct {
	// Weight is the panel's share of the plot height (0 counts as 1).
	Weight float64
	// Label and RightLabel name the left and right axes.
	Label, RightLabel string
	// RightMin is the least top of the right axis (so that a few errors
	// do not fill the panel); 0 means 1.
	RightMin float64
	Series   []Series
}

// Series is one time series of a panel.
type Series struct {
	Label string
	Color string
	// Bars draws a bar of width Step ending at each point's time (counts per
	// step); otherwise a line through the points.
	Bars bool
	Step time.Duration
	// Right puts the series on the panel's right axis.
	Right  bool
	Points []Point
}

// Point is one value at one time.
type Point struct {
	T time.Duration
	V float64
}

// modeColor is a mode band's colour.
func modeColor(m string) string {
	switch m {
	case "normal":
		return "#4caf50"
	case "cache_only":
		return "#ff9800"
	case "recovering":
		return "#2196f3"
	}
	return "#9e9e9e"
}

func eventColor(e Event) string {
	if e.Color != "" {
		return e.Color
	}
	l := e.Label
	switch {
	case strings.HasPrefix(l, "mode.cache_only"):
		return modeColor("cache_only")
	case strings.HasPrefix(l, "mode.recovering"):
		return modeColor("recovering")
	case strings.HasPrefix(l, "mode.normal"):
		return modeColor("normal")
	case strings.HasPrefix(l, "db.unhealthy"):
		return "#c62828"
	case strings.HasPrefix(l, "db.recovered"):
		return "#2e7d32"
	}
	return "#555555"
}

// Layout constants, in pixels.
const (
	width       = 1200
	left        = 80
	right       = 260 // right axis, its label and the legend
	eventRowH   = 14
	bandStripH  = 18
	panelGap    = 26
	plotH       = 400 // total height of the panels (without gaps)
	charW       = 6.1 // estimated width of a character at font-size 11
	maxLabelLen = 60
	maxRows     = 8 // event label rows; further labels show as tooltips only
)

// esc escapes s for XML character data and attribute values.
func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// finite replaces NaN and infinities with 0.
func finite(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return v
}

func shorten(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// end returns the time axis length.
func (c *Chart) end() time.Duration {
	if c.End > 0 {
		return c.End
	}
	var e time.Duration
	for _, p := range c.Panels {
		for _, s := range p.Series {
			for _, pt := range s.Points {
				e = max(e, pt.T)
			}
		}
	}
	for _, m := range c.Modes {
		e = max(e, m.To)
	}
	for _, s := range c.Shades {
		e = max(e, s.To)
	}
	for _, ev := range c.Events {
		e = max(e, ev.At)
	}
	if e <= 0 {
		e = time.Second
	}
	return e
}

// NiceCeil rounds v up to 1, 2, 2.5 or 5 times a power of ten (1 for v <= 0).
func NiceCeil(v float64) float64 {
	v = finite(v)
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

// timeStep picks the spacing of the time axis' ticks: about ten ticks.
func timeStep(end time.Duration) time.Duration {
	for _, s := range []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 15 * time.Second,
		30 * time.Second, time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 30 * time.Minute, time.Hour} {
		if end/s <= 12 {
			return s
		}
	}
	return end / 10
}

// eventRows assigns each event label (in time order) a row so that labels
// in one row do not overlap; it returns the row of each event (-1: no room
// in maxRows rows) and the number of rows.
func eventRows(xs []float64, labels []string) ([]int, int) {
	rows := make([]int, len(xs))
	var ends []float64 // the right end of the last label of each row
	for i, x := range xs {
		w := float64(len([]rune(labels[i])))*charW + 8
		rows[i] = -1
		for r, e := range ends {
			if x >= e {
				rows[i], ends[r] = r, x+w
				break
			}
		}
		if rows[i] < 0 && len(ends) < maxRows {
			rows[i] = len(ends)
			ends = append(ends, x+w)
		}
	}
	return rows, len(ends)
}

// Render returns the chart as an SVG document.
func Render(c Chart) string {
	end := c.end()
	pw := float64(width - left - right)
	x := func(d time.Duration) float64 {
		return float64(left) + math.Min(math.Max(d.Seconds()/end.Seconds(), 0), 1)*pw
	}

	// Event labels: rows above the mode strip.
	type ev struct {
		Event
		x     float64
		label string
	}
	var evs []ev
	for _, e := range c.Events {
		if e.At < 0 || e.At > end {
			continue
		}
		evs = append(evs, ev{Event: e, x: x(e.At), label: shorten(e.Label, maxLabelLen)})
	}
	// Rows are assigned in time order.
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].x < evs[j].x })
	xs, labels := make([]float64, len(evs)), make([]string, len(evs))
	for i, e := range evs {
		xs[i], labels[i] = e.x, e.label
	}
	rows, nRows := eventRows(xs, labels)

	titleH := 30 + 16*len(c.Subtitle)
	eventsTop := float64(titleH + 10)
	stripTop := eventsTop + float64(nRows*eventRowH) + 6
	plotTop := stripTop + bandStripH + 8
	panels := c.Panels
	if len(panels) == 0 {
		panels = []Panel{{}}
	}
	var weights float64
	for _, p := range panels {
		weights += panelWeight(p)
	}
	totalH := plotTop + plotH + float64(panelGap*(len(panels)-1)) + 40
	legendH := plotTop + float64(legendItems(c, panels))*18 + 20
	height := math.Max(totalH, legendH)
	if c.Note != "" {
		height += 18
	}
	plotBottom := plotTop + plotH + float64(panelGap*(len(panels)-1))

	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%.0f" viewBox="0 0 %d %.0f" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<title>%s</title>`+"\n", esc(c.Title))
	fmt.Fprintf(&b, `<rect width="%d" height="%.0f" fill="white"/>`+"\n", width, height)
	fmt.Fprintf(&b, `<text class="title" x="%d" y="22" font-size="16" font-weight="bold">%s</text>`+"\n", left, esc(c.Title))
	for i, s := range c.Subtitle {
		fmt.Fprintf(&b, `<text class="subtitle" x="%d" y="%d">%s</text>`+"\n", left, 42+16*i, esc(s))
	}

	// Mode bands: background across the panels and a labelled strip.
	for _, m := range c.Modes {
		if m.To <= m.From || m.To < 0 || m.From > end {
			continue
		}
		x0, x1 := x(m.From), x(m.To)
		col := modeColor(m.Mode)
		fmt.Fprintf(&b, `<g class="band" data-mode="%s"><title>%s %.2fs–%.2fs</title>`, esc(m.Mode), esc(m.Mode), m.From.Seconds(), m.To.Seconds())
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%d" fill="%s"/>`, x0, stripTop, x1-x0, bandStripH, esc(col))
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="0.10"/>`, x0, plotTop, x1-x0, plotBottom-plotTop, esc(col))
		if x1-x0 > float64(len(m.Mode))*7+8 {
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="white" font-weight="bold">%s</text>`, x0+4, stripTop+13, esc(m.Mode))
		}
		b.WriteString("</g>\n")
	}
	// Shaded spans.
	for _, s := range c.Shades {
		if s.To <= s.From || s.To < 0 || s.From > end {
			continue
		}
		x0, x1 := x(s.From), x(s.To)
		fmt.Fprintf(&b, `<g class="shade"><title>%s %.2fs–%.2fs</title><rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#777" fill-opacity="0.16"/>`,
			esc(s.Label), s.From.Seconds(), s.To.Seconds(), x0, plotTop, x1-x0, plotBottom-plotTop)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="#444">%s</text></g>`+"\n", x0+4, plotTop+14, esc(shorten(s.Label, int(math.Max((x1-x0)/charW, 8)))))
	}

	// Panels.
	legend := []legendItem{}
	seen := map[string]bool{}
	y0 := plotTop
	for pi, p := range panels {
		ph := plotH * panelWeight(p) / weights
		drawPanel(&b, p, y0, ph, x, pw, end, pi == len(panels)-1)
		for _, s := range p.Series {
			if !seen[s.Label+s.Color] {
				seen[s.Label+s.Color] = true
				legend = append(legend, legendItem{s.Color, s.Label})
			}
		}
		y0 += ph + panelGap
	}

	// Event markers over everything.
	for i, e := range evs {
		col := esc(eventColor(e.Event))
		row := rows[i]
		if row < 0 {
			row = nRows - 1 // the marker's dot goes in the last row, its label into the tooltip only
		}
		ly := eventsTop + float64(row*eventRowH) + 10
		dash := ""
		if e.Dashed {
			dash = ` stroke-dasharray="4,3"`
		}
		fmt.Fprintf(&b, `<g class="event"><title>%s at %.2fs</title>`, esc(e.Label), e.At.Seconds())
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="%s" stroke-width="1.2"%s/>`, e.x, e.x, ly+2, plotBottom, col, dash)
		fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"/>`, e.x, ly-3, col)
		if rows[i] >= 0 {
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11" fill="%s">%s</text>`, e.x+4, ly, col, esc(e.label))
		}
		b.WriteString("</g>\n")
	}

	// Legend.
	lx, ly := float64(left)+pw+70, plotTop
	for _, m := range []string{"normal", "cache_only", "recovering"} {
		legend = append(legend, legendItem{modeColor(m), "mode " + m})
	}
	if len(c.Shades) > 0 {
		legend = append(legend, legendItem{"#bbbbbb", c.Shades[0].Label})
	}
	for i, it := range legend {
		yy := ly + float64(i)*18
		fmt.Fprintf(&b, `<g class="legend"><rect x="%.1f" y="%.1f" width="12" height="10" fill="%s"/><text x="%.1f" y="%.1f" font-size="11">%s</text></g>`+"\n",
			lx, yy, esc(it.color), lx+16, yy+9, esc(shorten(it.label, 28)))
	}
	if c.Note != "" {
		fmt.Fprintf(&b, `<text class="note" x="%d" y="%.0f" fill="#555">%s</text>`+"\n", left, height-14, esc(c.Note))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

type legendItem struct{ color, label string }

func legendItems(c Chart, panels []Panel) int {
	n := 3
	if len(c.Shades) > 0 {
		n++
	}
	for _, p := range panels {
		n += len(p.Series)
	}
	return n
}

func panelWeight(p Panel) float64 {
	if p.Weight > 0 {
		return p.Weight
	}
	return 1
}

// drawPanel draws one panel's frame, grid, axes and series.
func drawPanel(b *strings.Builder, p Panel, top, ph float64, x func(time.Duration) float64, pw float64, end time.Duration, last bool) {
	var maxL, maxR float64
	hasR := false
	for _, s := range p.Series {
		for _, pt := range s.Points {
			v := finite(pt.V)
			if s.Right {
				maxR = max(maxR, v)
			} else {
				maxL = max(maxL, v)
			}
		}
		hasR = hasR || s.Right
	}
	yMaxL, yMaxR := NiceCeil(maxL*1.1), NiceCeil(max(maxR*1.1, p.RightMin, 1))
	yl := func(v float64) float64 { return top + ph - math.Max(0, math.Min(finite(v)/yMaxL, 1))*ph }
	yr := func(v float64) float64 { return top + ph - math.Max(0, math.Min(finite(v)/yMaxR, 1))*ph }
	fmt.Fprintf(b, `<g class="panel">`+"\n")
	ticks := 5
	if ph < 150 {
		ticks = 2
	}
	for i := 0; i <= ticks; i++ {
		v := yMaxL * float64(i) / float64(ticks)
		fmt.Fprintf(b, `<line x1="%d" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, float64(left)+pw, yl(v), yl(v))
		fmt.Fprintf(b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, yl(v)+4, axisNum(v))
		if hasR {
			rv := yMaxR * float64(i) / float64(ticks)
			fmt.Fprintf(b, `<text x="%.1f" y="%.1f" fill="#c62828">%s</text>`+"\n", float64(left)+pw+6, yr(rv)+4, axisNum(rv))
		}
	}
	step := timeStep(end)
	for s := time.Duration(0); s <= end; s += step {
		xx := x(s)
		fmt.Fprintf(b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#eee"/>`+"\n", xx, xx, top, top+ph)
		if last {
			fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle">%ss</text>`+"\n", xx, top+ph+16, axisNum(s.Seconds()))
		}
	}
	fmt.Fprintf(b, `<rect x="%d" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#333"/>`+"\n", left, top, pw, ph)
	if p.Label != "" {
		fmt.Fprintf(b, `<text x="18" y="%.1f" transform="rotate(-90 18 %.1f)" text-anchor="middle">%s</text>`+"\n", top+ph/2, top+ph/2, esc(p.Label))
	}
	if hasR && p.RightLabel != "" {
		rx := float64(left) + pw + 46
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" transform="rotate(90 %.1f %.1f)" text-anchor="middle" fill="#c62828">%s</text>`+"\n", rx, top+ph/2, rx, top+ph/2, esc(p.RightLabel))
	}
	// Bars first, lines over them.
	for _, s := range p.Series {
		if !s.Bars {
			continue
		}
		y := yl
		if s.Right {
			y = yr
		}
		fmt.Fprintf(b, `<g class="series" data-label="%s" fill="%s">`, esc(s.Label), esc(s.Color))
		for _, pt := range s.Points {
			v := finite(pt.V)
			if v <= 0 || pt.T < 0 || pt.T-s.Step > end {
				continue
			}
			x0 := x(pt.T - s.Step)
			w := math.Max(1, (x(pt.T)-x0)*0.8)
			fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f"/>`, x0, y(v), w, top+ph-y(v))
		}
		b.WriteString("</g>\n")
	}
	for _, s := range p.Series {
		if s.Bars {
			continue
		}
		y := yl
		if s.Right {
			y = yr
		}
		pts := make([]string, 0, len(s.Points))
		for _, pt := range s.Points {
			if pt.T < 0 || pt.T > end || math.IsNaN(pt.V) || math.IsInf(pt.V, 0) {
				continue // a gap in the data is not a zero
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(pt.T), y(pt.V)))
		}
		fmt.Fprintf(b, `<g class="series" data-label="%s"><polyline fill="none" stroke="%s" stroke-width="1.6" points="%s"/></g>`+"\n", esc(s.Label), esc(s.Color), strings.Join(pts, " "))
	}
	b.WriteString("</g>\n")
}

// axisNum prints an axis value without needless decimals.
func axisNum(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}
