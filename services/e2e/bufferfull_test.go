package e2e_test

import (
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/events"
)

// A full write buffer refuses writes with 503 and Retry-After: never a 202
// that is not durable. Every write that did get a 202 reaches the table.
func TestFullBufferRefusesVisibly(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{AutoRecovery: true})
	n := s.StartNode("n1", map[string]string{"BUFFER_MAX_MSGS": "20", "BUFFER_GROUP_COMMIT_MAX": "1"})
	s.StartMonitor(nil)
	s.StartManager(nil)
	var mr events.ModeReply
	if err := s.Request(events.SubjectCacheOnlyEnter, events.CacheOnlyEnterRequest{Reason: "buffer test"}, &mr); err != nil {
		t.Fatal(err)
	}
	waitNodeMode(t, n, events.ModeCacheOnly)
	l := newLedger()
	accepted, refused := 0, 0
	for id := int64(1); id <= 40; id++ {
		r, err := n.Put(anime(id, "fill"))
		if err != nil {
			t.Fatal(err)
		}
		switch r.Code {
		case 202:
			var wr WriteResult
			r.JSON(t, &wr)
			l.ack(id, wr.Version, false)
			accepted++
		case 503:
			if r.Header.Get("Retry-After") == "" {
				t.Fatalf("503 without Retry-After: %s", r.Body)
			}
			if !strings.Contains(string(r.Body), "write buffer full") {
				t.Fatalf("503 that does not say the buffer is full: %s", r.Body)
			}
			refused++
		default:
			t.Fatalf("write %d: %d %s", id, r.Code, r.Body)
		}
	}
	if accepted != 20 || refused != 20 {
		t.Fatalf("accepted %d, refused %d; want 20 and 20 with a 20-message buffer", accepted, refused)
	}
	at := time.Now()
	if err := s.Request(events.SubjectCacheOnlyExit, struct{}{}, &mr); err != nil {
		t.Fatal(err)
	}
	s.Events.Wait(t, events.SubjectModeNormal, at, 30*time.Second, nil)
	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	l.check(t, got)
	if len(got) != 20 {
		t.Fatalf("table holds %d rows, want the 20 accepted", len(got))
	}
}
