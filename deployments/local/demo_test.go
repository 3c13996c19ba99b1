package main

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/deployments/internal/timelinesvg"
	"github.com/anivault/anivault/deployments/load"
)

// TestDemoChart turns a fixed recording into the picture's chart: rates per
// second from consecutive samples, the buffer's pending messages, one band
// per mode from the mode events, the outage shaded, every event a marker.
func TestDemoChart(t *testing.T) {
	begin := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	start := begin.Add(30 * time.Second) // the build and the warm-up took 30 s
	at := func(s float64) time.Time { return start.Add(time.Duration(s * float64(time.Second))) }
	tl := &timeline{begin: begin, loadStart: start}
	var c load.Counters
	for i := range 21 {
		s := sample{At: at(float64(i)), C: c, Pending: 0, Mode: "normal"}
		if i == 0 {
			s.Pending, s.Mode = -1, "" // the first sample is taken before any answer
		}
		if i >= 5 && i < 12 {
			s.Pending, s.Mode = int64(40*(i-4)), "cache_only"
		}
		tl.samples = append(tl.samples, s)
		c.Reads += 100
		c.ReadUnavailable += 3
		if i >= 4 && i < 10 {
			c.Buffered += 50
			c.WriteErrors += 2
			c.WriteUnavailable++
		} else {
			c.Committed += 50
		}
	}
	tl.outage(at(4), time.Time{}, "PostgreSQL down")
	tl.outage(time.Time{}, at(10), "")
	tl.events = []recorded{
		{At: at(4), Label: "PostgreSQL SIGKILL"},
		{At: at(5), Subject: "db.unhealthy", Label: "db.unhealthy"},
		{At: at(5.2), Subject: "mode.cache_only", Label: "mode.cache_only (epoch 1)"},
		{At: at(11), Subject: "mode.recovering", Label: "mode.recovering (epoch 2)"},
		{At: at(14.5), Subject: "mode.normal", Label: "mode.normal (epoch 3)"},
		{At: at(-2), Subject: "mode.normal", Label: "before the load: left out"},
	}
	ch := tl.chart(picture{Nodes: 2, Writers: 8, Readers: 8, Tally: &load.Tally{Acknowledged: 1000, Lost: 0}, Counters: c, Healed: true})

	if ch.End != 20*time.Second {
		t.Fatalf("end %v, want 20s (the last sample)", ch.End)
	}
	var modes []string
	for _, m := range ch.Modes {
		modes = append(modes, m.Mode)
	}
	if got := strings.Join(modes, ","); got != "normal,cache_only,recovering,normal" {
		t.Fatalf("mode bands %s", got)
	}
	if m := ch.Modes[1]; m.From != 5200*time.Millisecond || m.To != 11*time.Second {
		t.Fatalf("cache_only band %v-%v, want 5.2s-11s", m.From, m.To)
	}
	if len(ch.Events) != 5 || !ch.Events[0].Dashed || ch.Events[1].Dashed {
		t.Fatalf("events %+v: want 5, the demo's own marks dashed", ch.Events)
	}
	if len(ch.Shades) != 1 || ch.Shades[0].From != 4*time.Second || ch.Shades[0].To != 10*time.Second {
		t.Fatalf("outage shade %+v", ch.Shades)
	}
	series := map[string][]timelinesvg.Point{}
	for _, p := range ch.Panels {
		for _, s := range p.Series {
			series[s.Label] = s.Points
		}
	}
	want := map[string]struct{ at, v float64 }{
		"reads ok (200, 404)":        {0.5, 100},
		"reads failed (503, errors)": {0.5, 3},
		"writes 200 committed":       {0.5, 50},
		"writes 202 buffered":        {4.5, 50},
		"writes 503":                 {4.5, 1},
		"writes failed otherwise":    {4.5, 1},
	}
	for label, w := range want {
		pts := series[label]
		if len(pts) != 20 {
			t.Fatalf("%s: %d points, want 20", label, len(pts))
		}
		i := int(w.at)
		if pts[i].T != time.Duration(w.at*float64(time.Second)) || math.Abs(pts[i].V-w.v) > 1e-9 {
			t.Errorf("%s: point %d is %v, want %v/s at %vs", label, i, pts[i], w.v, w.at)
		}
	}
	if p := series["buffered writes pending"]; len(p) != 20 || p[9].T != 10*time.Second || p[9].V != 240 {
		t.Errorf("pending %v: want 20 points (the unknown first left out), 240 at 10s", p)
	}
	root, err := timelinesvg.Parse(timelinesvg.Render(ch))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(root.Find(timelinesvg.ByClass("band"))); n != 4 {
		t.Fatalf("%d bands drawn", n)
	}
	if sub := root.Find(timelinesvg.ByClass("subtitle")); len(sub) != 2 || !strings.Contains(sub[1].Text, "lost 0") {
		t.Fatalf("subtitles %v", sub)
	}
}

// TestDemoWritesTimeline runs the demo itself, shortened (14 s of load,
// PostgreSQL killed 3 s in for 5 s), on a private PostgreSQL, and checks
// that it loses nothing and leaves timeline.svg in its directory, says so,
// and that the picture shows the outage: well-formed, titled, a cache_only
// band, and markers for the kill, db.unhealthy and the return to normal.
func TestDemoWritesTimeline(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the demo's processes: go tool task test runs it")
	}
	t.Setenv("DATABASE_URL", "") // a private PostgreSQL: the demo kills it
	dir := filepath.Join(t.TempDir(), "demo")
	t.Chdir("../..") // the demo builds the services from the module root
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := runDemo(ctx, []string{"--duration", "14s", "--outage-at", "3s", "--outage", "5s",
		"--nodes", "2", "--writers", "2", "--readers", "2", "--dir", dir}, &out)
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	path := filepath.Join(dir, "timeline.svg")
	if !strings.Contains(out.String(), "timeline:              "+path+"\n") {
		t.Fatalf("the tally does not say where the timeline is:\n%s", out.String())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	root, err := timelinesvg.Parse(string(b))
	if err != nil {
		t.Fatal(err)
	}
	if title := root.Find(timelinesvg.ByClass("title")); len(title) != 1 || !strings.Contains(title[0].Text, "AniVault demo") {
		t.Fatalf("title %v", title)
	}
	modes := map[string]int{}
	for _, b := range root.Find(timelinesvg.ByClass("band")) {
		modes[b.Attrs["data-mode"]]++
	}
	if modes["cache_only"] == 0 || modes["normal"] < 2 {
		t.Errorf("mode bands %v: want the outage's cache_only between normal periods\n%s", modes, out.String())
	}
	var labels []string
	for _, e := range root.Find(timelinesvg.ByClass("event")) {
		labels = append(labels, e.Find(timelinesvg.ByName("text"))[0].Text)
	}
	all := strings.Join(labels, "\n")
	for _, want := range []string{"PostgreSQL SIGKILL", "db.unhealthy", "mode.cache_only", "mode.normal", "healed"} {
		if !strings.Contains(all, want) {
			t.Errorf("no %q marker among\n%s", want, all)
		}
	}
	if n := len(root.Find(timelinesvg.ByClass("series"))); n != 7 {
		t.Errorf("%d series, want 7", n)
	}
	t.Logf("demo output:\n%s", out.String())
}
