package main

import (
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/deployments/internal/timelinesvg"
	"github.com/anivault/anivault/deployments/load"
	"github.com/anivault/anivault/events"
)

// TestTimelineSVG draws the benchmark's outage timeline from a fixed run
// with the shared renderer and checks the document: well-formed, one band
// per mode period, the three markers, the shaded outage, five series.
func TestTimelineSVG(t *testing.T) {
	step := 100 * time.Millisecond
	res := &TimelineResult{Writers: 16, Readers: 16, Step: step, End: 20 * time.Second,
		KillAt: 5 * time.Second, StartCalledAt: 13 * time.Second, UpAt: 14 * time.Second, NormalAt: 16 * time.Second,
		Counters: load.Counters{Committed: 900, Buffered: 100}, Tally: load.Tally{Acknowledged: 1000},
		Modes: []modeSpan{{events.ModeNormal, 0, 6 * time.Second}, {events.ModeCacheOnly, 6 * time.Second, 14 * time.Second},
			{events.ModeRecovering, 14 * time.Second, 16 * time.Second}, {events.ModeNormal, 16 * time.Second, 20 * time.Second}}}
	for i := 1; i <= 200; i++ {
		res.Samples = append(res.Samples, sample{T: time.Duration(i) * step, Reads: 90, Committed: 40, Unavailable: int64(i % 3)})
	}
	doc := timelineSVG(res)
	root, err := timelinesvg.Parse(doc)
	if err != nil {
		t.Fatal(err)
	}
	count := func(class string) int { return len(root.Find(timelinesvg.ByClass(class))) }
	if count("band") != 4 || count("event") != 3 || count("shade") != 1 || count("series") != 5 {
		t.Fatalf("bands %d, events %d, shades %d, series %d: want 4, 3, 1, 5", count("band"), count("event"), count("shade"), count("series"))
	}
	if title := root.Find(timelinesvg.ByClass("title")); len(title) != 1 || !strings.Contains(title[0].Text, "PostgreSQL outage") {
		t.Fatalf("title %v", title)
	}
}
