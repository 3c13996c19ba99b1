package timelinesvg_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/deployments/internal/timelinesvg"
)

// decode parses a whole document and fails the test on any error.
func decode(t *testing.T, doc string) *timelinesvg.Element {
	t.Helper()
	root, err := timelinesvg.Parse(doc)
	if err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	return root
}

func fixedChart() timelinesvg.Chart {
	s := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	var writes, reads, pending []timelinesvg.Point
	for i := range 40 {
		t := s(float64(i) + 0.5)
		w := 400.0
		if i >= 8 && i < 20 {
			w = 120
		}
		writes = append(writes, timelinesvg.Point{T: t, V: w})
		reads = append(reads, timelinesvg.Point{T: t, V: 900})
		p := 0.0
		if i >= 8 && i < 26 {
			p = float64(min(i-7, 26-i)) * 50
		}
		pending = append(pending, timelinesvg.Point{T: s(float64(i)), V: p})
	}
	// A NaN must not leak into the document.
	reads[3].V = math.NaN()
	return timelinesvg.Chart{
		Title:    "Demo <outage> & recovery",
		Subtitle: []string{"8 writers + 8 readers", "lost 0"},
		Note:     "time from the start of the load",
		End:      s(40),
		Modes: []timelinesvg.ModeSpan{
			{Mode: "normal", From: 0, To: s(9.2)},
			{Mode: "cache_only", From: s(9.2), To: s(21)},
			{Mode: "recovering", From: s(21), To: s(27.5)},
			{Mode: "normal", From: s(27.5), To: s(40)},
		},
		Shades: []timelinesvg.Span{{Label: "PostgreSQL down", From: s(8), To: s(20)}},
		Events: []timelinesvg.Event{
			{At: s(8), Label: "PostgreSQL SIGKILL", Dashed: true},
			{At: s(9.1), Label: `db.unhealthy "select 1: connection refused"`},
			{At: s(9.2), Label: "mode.cache_only (epoch 1)"},
			{At: s(21), Label: "mode.recovering (epoch 2)"},
			{At: s(27.4), Label: "replay.completed node-1: 157 replayed"},
			{At: s(27.4), Label: "replay.completed node-2: 171 replayed"},
			{At: s(27.5), Label: "mode.normal (epoch 3)"},
			{At: s(99), Label: "after the end: not drawn"},
		},
		Panels: []timelinesvg.Panel{
			{Label: "requests per second", Series: []timelinesvg.Series{
				{Label: "writes/s", Color: "#2e7d32", Points: writes},
				{Label: "reads/s", Color: "#1565c0", Points: reads},
				{Label: "errors", Color: "#e53935", Bars: true, Right: true, Step: time.Second, Points: []timelinesvg.Point{{T: s(9), V: 3}}},
			}},
			{Label: "buffer pending", Weight: 0.5, Series: []timelinesvg.Series{{Label: "pending", Color: "#8d6e63", Points: pending}}},
		},
	}
}

// TestRenderIsWellFormed renders a fixed timeline and checks the document:
// well-formed XML in the SVG namespace, the title, one band per mode period
// in order, one marker per event in the time range, the shaded outage, a
// series per input series, no script and nothing fetched from elsewhere.
func TestRenderIsWellFormed(t *testing.T) {
	c := fixedChart()
	doc := timelinesvg.Render(c)
	root := decode(t, doc)

	titles := root.Find(timelinesvg.ByName("title"))
	if len(titles) == 0 || titles[0].Text != c.Title {
		t.Fatalf("document title %v, want %q", titles, c.Title)
	}
	if shown := root.Find(timelinesvg.ByClass("title")); len(shown) != 1 || shown[0].Text != c.Title {
		t.Fatalf("visible title %v", shown)
	}
	if subs := root.Find(timelinesvg.ByClass("subtitle")); len(subs) != 2 || subs[1].Text != "lost 0" {
		t.Fatalf("subtitles %d", len(subs))
	}

	bands := root.Find(timelinesvg.ByClass("band"))
	var modes []string
	for _, b := range bands {
		modes = append(modes, b.Attrs["data-mode"])
		if len(b.Find(timelinesvg.ByName("rect"))) != 2 {
			t.Errorf("band %s: want a strip and a background rect", b.Attrs["data-mode"])
		}
	}
	if got := strings.Join(modes, ","); got != "normal,cache_only,recovering,normal" {
		t.Fatalf("bands %q, want one per mode period in order", got)
	}
	// The cache_only band spans 9.2 s to 21 s of 40 s over the plot's width.
	cacheOnly := bands[1].Find(timelinesvg.ByName("rect"))[0]
	if w := cacheOnly.Attrs["width"]; w != "253.7" { // (21-9.2)/40 * 860 px
		t.Errorf("cache_only band width %s px, want 253.7", w)
	}

	evs := root.Find(timelinesvg.ByClass("event"))
	if len(evs) != 7 {
		t.Fatalf("%d event markers, want 7 (the event after the end is left out)", len(evs))
	}
	var labels []string
	for _, e := range evs {
		if len(e.Find(timelinesvg.ByName("line"))) != 1 {
			t.Errorf("event %q has no line", e.AllText())
		}
		texts := e.Find(timelinesvg.ByName("text"))
		if len(texts) != 1 {
			t.Fatalf("event without a label")
		}
		labels = append(labels, texts[0].Text)
	}
	if labels[1] != `db.unhealthy "select 1: connection refused"` {
		t.Errorf("label %q: escaping lost the text", labels[1])
	}
	// Labels close in time go to different rows.
	ys := map[string]bool{}
	for _, e := range evs[4:7] {
		ys[e.Find(timelinesvg.ByName("text"))[0].Attrs["y"]] = true
	}
	if len(ys) != 3 {
		t.Errorf("the three labels at 27.4-27.5 s share rows: %v", ys)
	}

	if sh := root.Find(timelinesvg.ByClass("shade")); len(sh) != 1 || !strings.Contains(sh[0].AllText(), "PostgreSQL down") {
		t.Fatalf("shaded outage: %v", sh)
	}
	if ps := root.Find(timelinesvg.ByClass("panel")); len(ps) != 2 {
		t.Fatalf("%d panels, want 2", len(ps))
	}
	series := root.Find(timelinesvg.ByClass("series"))
	if len(series) != 4 {
		t.Fatalf("%d series, want 4", len(series))
	}
	for _, s := range series {
		want := 40
		if s.Attrs["data-label"] == "reads/s" {
			want = 39 // the NaN is left out, not drawn as 0
		}
		for _, pl := range s.Find(timelinesvg.ByName("polyline")) {
			if n := len(strings.Fields(pl.Attrs["points"])); n != want {
				t.Errorf("series %s: %d points, want %d", s.Attrs["data-label"], n, want)
			}
		}
	}
	if bars := series[0].Find(timelinesvg.ByName("rect")); series[0].Attrs["data-label"] != "errors" || len(bars) != 1 {
		t.Errorf("the bar series comes first with one bar: %s %d", series[0].Attrs["data-label"], len(bars))
	}
	if legend := root.Find(timelinesvg.ByClass("legend")); len(legend) != 4+3+1 {
		t.Errorf("%d legend entries, want 8 (series, modes, shade)", len(legend))
	}
	for _, bad := range []string{"<script", "NaN", "Inf", "href", "@import", "url("} {
		if strings.Contains(doc, bad) {
			t.Errorf("the document contains %q", bad)
		}
	}
}

// An empty chart is still a document, and hostile labels stay text.
func TestRenderEmptyAndHostile(t *testing.T) {
	root := decode(t, timelinesvg.Render(timelinesvg.Chart{}))
	if len(root.Find(timelinesvg.ByClass("band"))) != 0 || len(root.Find(timelinesvg.ByClass("panel"))) != 1 {
		t.Fatalf("empty chart: unexpected elements")
	}
	evil := `</text><script>alert(1)</script><text>`
	doc := timelinesvg.Render(timelinesvg.Chart{Title: evil, End: time.Second,
		Modes:  []timelinesvg.ModeSpan{{Mode: evil, From: 0, To: time.Second}},
		Events: []timelinesvg.Event{{At: time.Second / 2, Label: evil, Color: `"/><script>`}}})
	root = decode(t, doc)
	if len(root.Find(timelinesvg.ByName("script"))) != 0 {
		t.Fatalf("a label became markup:\n%s", doc)
	}
	if got := root.Find(timelinesvg.ByClass("title"))[0].Text; got != evil {
		t.Fatalf("title %q", got)
	}
}

func TestNiceCeil(t *testing.T) {
	for in, want := range map[float64]float64{0: 1, -3: 1, 0.7: 1, 1.1: 2, 2.1: 2.5, 3: 5, 7: 10, 1100: 2000, math.NaN(): 1} {
		if got := timelinesvg.NiceCeil(in); got != want {
			t.Errorf("NiceCeil(%v) = %v, want %v", in, got, want)
		}
	}
}

// Parse rejects what is not one well-formed SVG document.
func TestParseRejects(t *testing.T) {
	for name, doc := range map[string]string{
		"unclosed":      `<svg xmlns="http://www.w3.org/2000/svg"><g>`,
		"bad entity":    `<svg xmlns="http://www.w3.org/2000/svg"><text>a &b</text></svg>`,
		"not svg":       `<html xmlns="http://www.w3.org/2000/svg"></html>`,
		"no namespace":  `<svg></svg>`,
		"two roots":     `<svg xmlns="http://www.w3.org/2000/svg"></svg><svg xmlns="http://www.w3.org/2000/svg"></svg>`,
		"empty":         ``,
		"truncated doc": timelinesvg.Render(fixedChart())[:500],
	} {
		if _, err := timelinesvg.Parse(doc); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// Many events close together fill a bounded number of label rows; the
// others keep their marker and their tooltip.
func TestRenderManyEvents(t *testing.T) {
	c := timelinesvg.Chart{End: 10 * time.Second}
	for i := range 30 {
		c.Events = append(c.Events, timelinesvg.Event{At: time.Duration(i) * 10 * time.Millisecond, Label: "mode.cache_only (epoch 1)"})
	}
	root := decode(t, timelinesvg.Render(c))
	evs := root.Find(timelinesvg.ByClass("event"))
	if len(evs) != 30 {
		t.Fatalf("%d markers, want 30", len(evs))
	}
	labelled, rows := 0, map[string]bool{}
	for _, e := range evs {
		if len(e.Find(timelinesvg.ByName("title"))) != 1 {
			t.Fatalf("a marker without its tooltip")
		}
		if txt := e.Find(timelinesvg.ByName("text")); len(txt) == 1 {
			labelled++
			rows[txt[0].Attrs["y"]] = true
		}
	}
	if labelled != 8 || len(rows) != 8 {
		t.Fatalf("%d labels on %d rows, want 8 on 8", labelled, len(rows))
	}
}
