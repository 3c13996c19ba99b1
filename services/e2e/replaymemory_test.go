package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
)

// procKiB reads a field in kB (VmRSS, VmHWM) of /proc/<pid>/status.
func procKiB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			v, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// procCPU reads the user and system CPU time a process has used.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command name (which may hold spaces) in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %v %v", pid, err1, err2)
	}
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// maxMsgWrites builds one buffer message as large as group commit makes
// them (just under maxBatchBytes, 1 MiB - 16 KiB): either 256 writes of
// about 4 KiB, or 4 records near the 256 KiB record limit, their strings full
// of characters that need escaping (quotes, backslashes, newlines, tabs,
// non-ASCII).
func maxMsgWrites(t *testing.T, firstID, version int64, big bool) (data []byte, n int) {
	t.Helper()
	const most, least = 1<<20 - 16<<10, 1<<20 - 32<<10
	per := 256
	if big {
		per = 4
	}
	at := time.Now().UTC()
	build := func(size int) []byte {
		var bb events.BufferBatch
		for i := range per {
			id := firstID + int64(i)
			ov := strings.Repeat("Humanity \"fights\" titans\\\n\t進撃 ", size/4/40+1)
			status := "Ended"
			raw := fmt.Appendf(nil, `{"id":%d,"seasons":[`, id)
			for j := 0; len(raw) < size*3/4; j++ {
				if j > 0 {
					raw = append(raw, ',')
				}
				raw = fmt.Appendf(raw, `{"n":%d,"name":"Season \"%d\"\\n","air":"2013-04-07","x":[1,2.5,true,null]}`, j, j)
			}
			raw = append(raw, "]}"...)
			rec := events.Record{TMDBID: id, Title: fmt.Sprintf("Attack on Titan %d", id), Overview: &ov, Status: &status,
				Genres: []string{"Animation", "Action & Adventure"}, Networks: []string{"MBS"}, RawData: raw,
				Version: version, UpdatedAt: &at}
			if body, err := events.Marshal(&rec); err != nil || len(body) > events.MaxRecordBytes {
				t.Fatalf("record of %d bytes (limit %d): %v", len(body), events.MaxRecordBytes, err)
			}
			bb.Writes = append(bb.Writes, events.BufferedWrite{TMDBID: id, Version: version, AcceptedAt: at, Node: "memory-test", Record: &rec})
		}
		data, err := events.Marshal(bb)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	size := least / per
	for range 20 {
		data = build(size)
		if len(data) >= least && len(data) <= most {
			return data, per
		}
		size = size * (least + most) / 2 / len(data)
	}
	t.Fatalf("no maximum-size message: the last was %d bytes", len(data))
	return nil, 0
}

// TestReplayOfFullBufferStaysInMemoryBudget fills the write buffer (32 MiB
// here, BUFFER_MAX_BYTES) with maximum-size messages during maintenance,
// until it refuses more, and leaves maintenance: the node replays all of
// them, and its peak resident set (VmHWM of the real process, read from
// /proc) stays under its memory budget, CACHE_MAX_MEMORY_MB=100, the
// default. The writes are not in the change log (as if their node died
// before logging them), so the replay logs each one too. Measured before
// the fix: a peak of 91 to 109 MiB, the live heap at 32 MB from the first
// fetch on (FetchBytes sized the client's channels for a million messages);
// now under 30 MiB.
func TestReplayOfFullBufferStaysInMemoryBudget(t *testing.T) {
	t.Parallel()
	const budgetMiB, bufferMiB = 100, 32
	s := NewSystem(t, Options{})
	n := s.StartNode("n1", map[string]string{
		"CACHE_MAX_MEMORY_MB": strconv.Itoa(budgetMiB),
		"BUFFER_MAX_BYTES":    strconv.Itoa(bufferMiB << 20),
		"LOG_LEVEL":           "info",
	})
	s.StartManager(nil)
	s.EnterMaintenance("memory test", n)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	version := (time.Now().UnixMilli() - time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()) << 12
	var msgs, writes, bytes int
	next := int64(1)
	for full := false; !full; {
		data, k := maxMsgWrites(t, next, version, msgs%2 == 1)
		msg := &nats.Msg{Subject: s.subject(events.SubjectBufferWrites), Data: data, Header: nats.Header{}}
		msg.Header.Set(events.HeaderWrites, strconv.Itoa(k))
		_, err := s.JS.PublishMsg(ctx, msg)
		var apiErr *jetstream.APIError
		switch {
		case err == nil:
			msgs, writes, bytes = msgs+1, writes+k, bytes+len(data)
			next += int64(k)
		case errors.As(err, &apiErr) && strings.Contains(apiErr.Description, "maximum bytes"):
			full = true // DiscardNew: the stream refuses a message past BUFFER_MAX_BYTES
		default:
			t.Fatalf("publish message %d: %v", msgs+1, err)
		}
		if msgs > 2*bufferMiB {
			t.Fatalf("%d messages of about 1 MiB accepted by a %d MiB buffer", msgs, bufferMiB)
		}
	}
	if bytes < (bufferMiB-2)<<20 {
		t.Fatalf("the buffer refused at %d bytes, want it full (%d MiB)", bytes, bufferMiB)
	}
	before, hwmBefore := procKiB(t, n.Pid(), "VmRSS"), procKiB(t, n.Pid(), "VmHWM")
	cpuBefore := procCPU(t, n.Pid())

	start := time.Now()
	if err := s.Request(events.SubjectCacheOnlyExit, map[string]any{}, nil); err != nil {
		t.Fatal(err)
	}
	s.Events.Wait(t, events.SubjectModeNormal, start, 5*time.Minute, nil)
	took := time.Since(start)
	hwm, rss := procKiB(t, n.Pid(), "VmHWM"), procKiB(t, n.Pid(), "VmRSS")
	cpu := procCPU(t, n.Pid()) - cpuBefore
	got, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("buffer full at %d messages, %d writes, %.1f MiB; replayed in %v (%.0f writes/s, %.1f MiB/s; the node's CPU %v); node RSS %.1f MiB before the replay (peak so far %.1f MiB), peak during the replay (VmHWM) %.1f MiB, %.1f MiB after; budget %d MiB",
		msgs, writes, float64(bytes)/(1<<20), took.Round(time.Millisecond), float64(writes)/took.Seconds(), float64(bytes)/(1<<20)/took.Seconds(), cpu,
		float64(before)/1024, float64(hwmBefore)/1024, float64(hwm)/1024, float64(rss)/1024, budgetMiB)
	if len(got) != writes {
		t.Fatalf("the table holds %d rows after the replay, want the %d buffered writes", len(got), writes)
	}
	for id, v := range got {
		if v.Version != version || v.Deleted {
			t.Fatalf("row %d: %+v, want version %d", id, v, version)
		}
	}
	if hwm >= budgetMiB<<10 {
		t.Errorf("the node's peak RSS reached %.1f MiB replaying a full buffer of maximum-size messages: over its %d MiB budget", float64(hwm)/1024, budgetMiB)
	}
	// The cache may hold three quarters of the budget: a node whose cache is
	// full must still fit the replay in the last quarter.
	if grew := hwm - before; grew > budgetMiB<<10/4 {
		t.Errorf("the replay raised the node's RSS by %.1f MiB (%.1f to a peak of %.1f): more than the quarter of its %d MiB budget the cache leaves",
			float64(grew)/1024, float64(before)/1024, float64(hwm)/1024, budgetMiB)
	}
}
