package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/metastore"
	"github.com/anivault/anivault/pkg/procs"
)

// httpErrorBody is the contract's 400/413 body.
type httpErrorBody struct {
	Error string `json:"error"`
	Field string `json:"field"`
}

// jsonBody marshals v, failing the test on error (json.Marshal never fails for these maps).
func jsonBody(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// with returns a copy of rec with the given fields set (a nil value deletes the field).
func with(rec map[string]any, kv ...any) map[string]any {
	out := maps.Clone(rec)
	for i := 0; i+1 < len(kv); i += 2 {
		k := kv[i].(string)
		if kv[i+1] == nil {
			delete(out, k)
		} else {
			out[k] = kv[i+1]
		}
	}
	return out
}

// metricValue sums the samples of a Prometheus counter whose line starts with prefix.
func metricValue(t *testing.T, n *Node, prefix string) float64 {
	t.Helper()
	r, err := do("GET", n.URL()+"/metrics", nil)
	if err != nil || r.Code != 200 {
		t.Fatalf("metrics: %v %d", err, r.Code)
	}
	var sum float64
	sc := bufio.NewScanner(bytes.NewReader(r.Body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// waitSchema waits until the cache-nodes' background migration has created
// the table. A node reports ready before that (see the report on readiness):
// without this wait, the first write after StartNode may answer 500.
func waitSchema(t *testing.T, s *System) {
	t.Helper()
	start := time.Now()
	if err := procs.Eventually(30*time.Second, 20*time.Millisecond, func() error {
		_, err := s.Versions()
		return err
	}); err != nil {
		t.Fatalf("table never created: %v", err)
	}
	t.Logf("table created %v after the nodes were ready", time.Since(start).Round(time.Millisecond))
}

// modeSnapshot reads the mode key; a missing key (no transition yet) is "none/0".
func modeSnapshot(t *testing.T, s *System) string {
	t.Helper()
	mc, err := s.ModeKV()
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "none/0"
	}
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s/%d", mc.Mode, mc.Epoch)
}

// badHTTPCase is one bad HTTP request and the status and field its error names.
type badHTTPCase struct {
	name, method, path string
	body               []byte
	code               int
	field              string
}

// The key of TestBadInputHTTP's valid record.
const badInputValidID = 4242

// Bad HTTP input answers 400 (or 413) naming the failing field, and changes nothing.
func TestBadInputHTTP(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{})
	n := s.StartNode("n1", nil)
	waitSchema(t, s)

	// One valid record first, with a title at the limit (255 characters, 765 bytes of UTF-8).
	validTitle := strings.Repeat("進", 255)
	before, w := writeValidRecord(t, s, n, validTitle)
	invalidBefore := metricValue(t, n, `anivault_invalid_requests_total{transport="http"}`)

	cases := badHTTPCases(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { checkBadHTTPRequest(t, n, tc) })
	}

	checkNothingChangedByBadHTTP(t, s, n, before, w, validTitle, len(cases), invalidBefore)
}

// writeValidRecord writes the valid record with title and returns the
// table with it and its write result.
func writeValidRecord(t *testing.T, s *System, n *Node, title string) (map[int64]metastore.Version, WriteResult) {
	t.Helper()
	r, err := n.Put(anime(badInputValidID, title))
	if err != nil || r.Code != 200 {
		t.Fatalf("valid put: %v %d %s", err, r.Code, r.Body)
	}
	var w WriteResult
	r.JSON(t, &w)
	before, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	if got := before[badInputValidID]; got.Version != w.Version || got.Deleted {
		t.Fatalf("table has %+v for the valid write, acknowledged v%d", got, w.Version)
	}
	return before, w
}

// badHTTPCases lists the bad requests of TestBadInputHTTP.
func badHTTPCases(t *testing.T) []badHTTPCase {
	t.Helper()
	base := anime(5000, "Cowboy Bebop")
	big := with(base, "overview", strings.Repeat("x", 300<<10))
	return []badHTTPCase{
		{"malformed JSON", "PUT", "/v1/anime/5000", []byte(`{"tmdb_id": 5000, "title": "Cowboy`), 400, "body"},
		{"not an object", "PUT", "/v1/anime/5000", []byte(`["tmdb_id", 5000]`), 400, "body"},
		{"empty body", "PUT", "/v1/anime/5000", nil, 400, "body"},
		{"trailing data", "PUT", "/v1/anime/5000", append(jsonBody(t, base), []byte(` {"tmdb_id": 1}`)...), 400, "body"},
		{"title as number", "PUT", "/v1/anime/5000", jsonBody(t, with(base, "title", 42)), 400, "title"},
		{"genres as string", "PUT", "/v1/anime/5000", jsonBody(t, with(base, "genres", "Animation")), 400, "genres"},
		{"tmdb_id as string", "PUT", "/v1/anime/5000", jsonBody(t, with(base, "tmdb_id", "5000")), 400, "tmdb_id"},
		{"unknown field", "PUT", "/v1/anime/5000", jsonBody(t, with(base, "studio", "Sunrise")), 400, "studio"},
		{"field name in another case", "PUT", "/v1/anime/5000", []byte(`{"tmdb_id": 5000, "Title": "Cowboy Bebop"}`), 400, "Title"},
		{"duplicate key", "PUT", "/v1/anime/5000", []byte(`{"tmdb_id": 5000, "title": "Cowboy Bebop", "tmdb_id": 5001}`), 400, "tmdb_id"},
		{"tmdb_id 0 in path and body", "PUT", "/v1/anime/0", jsonBody(t, with(base, "tmdb_id", 0)), 400, "tmdb_id"},
		{"tmdb_id 0 in body only", "PUT", "/v1/anime/5000", jsonBody(t, with(base, "tmdb_id", 0)), 400, "tmdb_id"},
		{"negative id in path", "PUT", "/v1/anime/-5", jsonBody(t, with(base, "tmdb_id", -5)), 400, "tmdb_id"},
		{"non-numeric path id", "PUT", "/v1/anime/abc", jsonBody(t, base), 400, "tmdb_id"},
		{"path id overflows int64", "PUT", "/v1/anime/99999999999999999999", jsonBody(t, base), 400, "tmdb_id"},
		{"body id differs from path", "PUT", "/v1/anime/5001", jsonBody(t, base), 400, "tmdb_id"},
		{"300 KiB body", "PUT", "/v1/anime/5000", jsonBody(t, big), 413, "body"},
		{"NUL byte in title", "PUT", "/v1/anime/5000", []byte(`{"tmdb_id": 5000, "title": "Cowboy\u0000Bebop"}`), 400, "title"},
		{"NUL byte in overview", "PUT", "/v1/anime/5000", jsonBody(t, with(base, "overview", "a\x00b")), 400, "overview"},
		{"256-character title", "PUT", "/v1/anime/5000", jsonBody(t, with(base, "title", strings.Repeat("進", 256))), 400, "title"},
		{"empty title", "PUT", "/v1/anime/5000", jsonBody(t, with(base, "title", "  ")), 400, "title"},
		{"missing title", "PUT", "/v1/anime/5000", jsonBody(t, with(base, "title", nil)), 400, "title"},
		{"bad date", "PUT", "/v1/anime/5000", jsonBody(t, with(base, "first_air_date", "2013-13-45")), 400, "first_air_date"},
		{"date in another layout", "PUT", "/v1/anime/5000", jsonBody(t, with(base, "first_air_date", "07/04/2013")), 400, "first_air_date"},
		{"raw_data not an object", "PUT", "/v1/anime/5000", jsonBody(t, with(base, "raw_data", []int{1, 2})), 400, "raw_data"},
		{"delete with non-numeric id", "DELETE", "/v1/anime/abc", nil, 400, "tmdb_id"},
		{"delete with id 0", "DELETE", "/v1/anime/0", nil, 400, "tmdb_id"},
		{"delete with negative id", "DELETE", "/v1/anime/-" + strconv.Itoa(badInputValidID), nil, 400, "tmdb_id"},
		{"get with non-numeric id", "GET", "/v1/anime/abc", nil, 400, "tmdb_id"},
		{"get with id 0", "GET", "/v1/anime/0", nil, 400, "tmdb_id"},
		{"get with negative id", "GET", "/v1/anime/-5", nil, 400, "tmdb_id"},
	}
}

// checkBadHTTPRequest sends tc and checks the JSON error answer.
func checkBadHTTPRequest(t *testing.T, n *Node, tc badHTTPCase) {
	t.Helper()
	r, err := do(tc.method, n.URL()+tc.path, tc.body)
	if err != nil {
		t.Fatal(err)
	}
	if r.Code != tc.code {
		t.Fatalf("%s %s: %d %s, want %d", tc.method, tc.path, r.Code, r.Body, tc.code)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q", ct)
	}
	var e httpErrorBody
	if err := json.Unmarshal(r.Body, &e); err != nil {
		t.Fatalf("body %q is not the JSON error object: %v", r.Body, err)
	}
	if e.Error == "" || e.Field != tc.field {
		t.Errorf("error body %s: want a message and field %q", r.Body, tc.field)
	}
}

// checkNothingChangedByBadHTTP checks the table, what the node serves for
// the valid key, and that the nCases bad requests were counted as invalid
// input, not server errors.
func checkNothingChangedByBadHTTP(t *testing.T, s *System, n *Node, before map[int64]metastore.Version, w WriteResult, validTitle string, nCases int, invalidBefore float64) {
	t.Helper()
	// Nothing changed: the table, and what the node serves for the valid key.
	after, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(before, after) {
		t.Errorf("table changed by bad requests:\nbefore %v\nafter  %v", before, after)
	}
	r, err := n.Get(badInputValidID)
	if err != nil || r.Code != 200 {
		t.Fatalf("get valid: %v %d %s", err, r.Code, r.Body)
	}
	var rec events.Record
	r.JSON(t, &rec)
	if rec.Version != w.Version || rec.Title != validTitle {
		t.Errorf("valid record now v%d %q, want v%d and the 255-character title", rec.Version, rec.Title, w.Version)
	}
	for _, id := range []int64{5000, 5001} {
		if r, _ := n.Get(id); r.Code != 404 {
			t.Errorf("tmdb:%d answers %d after only bad writes, want 404", id, r.Code)
		}
	}
	// Every bad request was counted as invalid input (and not as a server error).
	if got := metricValue(t, n, `anivault_invalid_requests_total{transport="http"}`) - invalidBefore; got != float64(nCases) {
		t.Errorf("anivault_invalid_requests_total{transport=\"http\"} grew by %v, want %d", got, nCases)
	}
	if got := metricValue(t, n, `anivault_http_requests_total{code="500"`); got != 0 {
		t.Errorf("%v requests answered 500", got)
	}
	if !n.Running() {
		t.Fatalf("node exited: %v", n.ExitErr())
	}
}

// natsErrorReply sends raw on subject and returns the decoded error reply; it
// fails the test when the reply is not an error.
func natsErrorReply(t *testing.T, s *System, subject string, raw []byte) (events.ErrorReply, *nats.Msg) {
	t.Helper()
	msg, err := s.NC.Request(s.subject(subject), raw, 10*time.Second)
	if err != nil {
		t.Fatalf("%s %q: %v", subject, raw, err)
	}
	var e events.ErrorReply
	if err := json.Unmarshal(msg.Data, &e); err != nil {
		t.Fatalf("%s %q: reply %q is not JSON: %v", subject, raw, msg.Data, err)
	}
	if e.Error == "" {
		t.Fatalf("%s %q: reply %s is not an error", subject, raw, msg.Data)
	}
	return e, msg
}

// publishRaw publishes raw bytes to a JetStream subject and returns the error.
func publishRaw(s *System, subject string, raw []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := s.JS.Publish(ctx, s.subject(subject), raw)
	return err
}

// badNATSRequest is one bad request and the field its error reply names.
type badNATSRequest struct {
	name, subject string
	raw           []byte
	field         string // "" when the reply need not name one
}

// badProducerWrite is one bad message a producer publishes.
type badProducerWrite struct {
	name, subject string
	raw           []byte
}

// Bad NATS requests get a 400 error reply; producers' bad writes go to the
// poison stream without blocking the consumer or changing the table.
func TestBadInputNATS(t *testing.T) {
	t.Parallel()
	s := NewSystem(t, Options{AutoRecovery: true})
	n := s.StartNode("n1", nil)
	s.StartManager(nil)
	waitSchema(t, s)

	r, err := n.Put(anime(20, "Naruto"))
	if err != nil || r.Code != 200 {
		t.Fatalf("valid put: %v %d %s", err, r.Code, r.Body)
	}
	before, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	modeBefore := modeSnapshot(t, s)

	t.Run("requests", func(t *testing.T) {
		for _, tc := range badNATSRequests() {
			t.Run(tc.name, func(t *testing.T) { checkBadNATSRequest(t, s, tc) })
		}
		checkValidRequestAndModeUnchanged(t, s, modeBefore)
	})

	t.Run("producer writes", func(t *testing.T) {
		bad := badProducerWrites(t)
		want := publishBadThenValidWrite(t, s, bad, before)
		if !n.Running() {
			t.Fatalf("node exited: %v", n.ExitErr())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		checkBadWritesArePoisoned(t, ctx, s, bad)
		checkWriteStreamEmpty(t, s)
		checkOversizePublishRefused(t, s, n, want)
	})
}

// badNATSRequests lists the bad requests of TestBadInputNATS.
func badNATSRequests() []badNATSRequest {
	return []badNATSRequest{
		{"get malformed JSON", events.SubjectMetadataGet, []byte(`{"tmdb_id": `), ""},
		{"get not JSON", events.SubjectMetadataGet, []byte(`tmdb:20`), ""},
		{"get tmdb_id 0", events.SubjectMetadataGet, []byte(`{"tmdb_id": 0}`), "tmdb_id"},
		{"get negative tmdb_id", events.SubjectMetadataGet, []byte(`{"tmdb_id": -20}`), "tmdb_id"},
		{"get tmdb_id string", events.SubjectMetadataGet, []byte(`{"tmdb_id": "x"}`), "tmdb_id"},
		{"get tmdb_id fraction", events.SubjectMetadataGet, []byte(`{"tmdb_id": 20.5}`), "tmdb_id"},
		{"get unknown field", events.SubjectMetadataGet, []byte(`{"tmdb_id": 20, "id": 20}`), "id"},
		{"force malformed JSON", events.SubjectRecoveryForce, []byte(`{"now": tru`), ""},
		{"force unknown field", events.SubjectRecoveryForce, []byte(`{"now": true}`), "now"},
		{"enter reason number", events.SubjectCacheOnlyEnter, []byte(`{"reason": 5}`), "reason"},
		{"enter malformed JSON", events.SubjectCacheOnlyEnter, []byte(`{"reason": "maint`), ""},
		{"exit unknown field", events.SubjectCacheOnlyExit, []byte(`{"force": true}`), "force"},
	}
}

// checkBadNATSRequest sends tc and checks its 400 error reply.
func checkBadNATSRequest(t *testing.T, s *System, tc badNATSRequest) {
	t.Helper()
	e, msg := natsErrorReply(t, s, tc.subject, tc.raw)
	if e.Code != 400 {
		t.Errorf("reply %s: code %d, want 400", msg.Data, e.Code)
	}
	if tc.field != "" && e.Field != tc.field {
		t.Errorf("reply %s: field %q, want %q", msg.Data, e.Field, tc.field)
	}
	// The micro framework's error headers agree with the body.
	if h := msg.Header.Get("Nats-Service-Error-Code"); h != "400" {
		t.Errorf("Nats-Service-Error-Code header %q", h)
	}
	// The harness helper turns the same reply into an error naming the code
	// (only for valid JSON: it cannot send malformed JSON).
	if json.Valid(tc.raw) {
		if err := s.Request(tc.subject, json.RawMessage(tc.raw), nil); err == nil || !strings.Contains(err.Error(), "400") {
			t.Errorf("s.Request: %v, want an error naming 400", err)
		}
	}
}

// checkValidRequestAndModeUnchanged checks the valid request still works,
// and the bad operator commands changed no mode.
func checkValidRequestAndModeUnchanged(t *testing.T, s *System, modeBefore string) {
	t.Helper()
	// The valid request still works, and the bad operator commands changed no mode.
	var rec events.Record
	if err := s.Request(events.SubjectMetadataGet, events.GetRequest{TMDBID: 20}, &rec); err != nil || rec.Title != "Naruto" {
		t.Errorf("metadata.get 20: %+v %v", rec, err)
	}
	if modeAfter := modeSnapshot(t, s); modeAfter != modeBefore {
		t.Errorf("mode moved from %s to %s", modeBefore, modeAfter)
	}
	if st, err := s.Status(); err != nil || st.Mode != events.ModeNormal || st.CacheOnlyMode {
		t.Errorf("status after bad commands: mode %s cache_only %v (%v)", st.Mode, st.CacheOnlyMode, err)
	}
}

// badProducerWrites lists the bad messages of TestBadInputNATS.
func badProducerWrites(t *testing.T) []badProducerWrite {
	t.Helper()
	return []badProducerWrite{
		{"malformed JSON", events.SubjectMetadataUpsert, []byte(`{"tmdb_id": 7000, "title": "Trig`)},
		{"unknown field", events.SubjectMetadataUpsert, jsonBody(t, with(anime(7001, "Trigun"), "studio", "Madhouse"))},
		{"tmdb_id 0", events.SubjectMetadataUpsert, jsonBody(t, anime(0, "Trigun"))},
		{"NUL title", events.SubjectMetadataUpsert, jsonBody(t, anime(7002, "Tri\x00gun"))},
		{"delete tmdb_id -1", events.SubjectMetadataDelete, []byte(`{"tmdb_id": -1}`)},
		{"delete of nothing", events.SubjectMetadataDelete, []byte(`{}`)},
	}
}

// publishBadThenValidWrite publishes the bad writes, then a valid one,
// waits until the valid one is applied and checks the table is before
// plus it; it returns that table.
func publishBadThenValidWrite(t *testing.T, s *System, bad []badProducerWrite, before map[int64]metastore.Version) map[int64]metastore.Version {
	t.Helper()
	for _, b := range bad {
		if err := publishRaw(s, b.subject, b.raw); err != nil {
			t.Fatalf("publish %s: %v", b.name, err)
		}
	}
	// A valid write after the bad ones is applied: they do not block the consumer.
	publishJS(t, s, events.SubjectMetadataUpsert, anime(7100, "Monster"))
	var applied metastore.Version
	if err := procs.Eventually(20*time.Second, 50*time.Millisecond, func() error {
		v, err := s.Versions()
		if err != nil {
			return err
		}
		got, ok := v[7100]
		if !ok || got.Deleted {
			return fmt.Errorf("valid upsert not applied yet: %+v", got)
		}
		applied = got
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	after, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	want := maps.Clone(before)
	want[7100] = applied
	if !maps.Equal(want, after) {
		t.Errorf("table after producers' writes:\n got %v\nwant %v", after, want)
	}
	return want
}

// checkBadWritesArePoisoned checks every bad message lands in the poison
// stream, with the reason in a header.
func checkBadWritesArePoisoned(t *testing.T, ctx context.Context, s *System, bad []badProducerWrite) {
	t.Helper()
	poison := events.NewSubjects(s.opts.Prefix).Name(events.StreamPoison)
	stream, err := s.JS.Stream(ctx, poison)
	if err != nil {
		t.Fatal(err)
	}
	var info *jetstream.StreamInfo
	if err := procs.Eventually(20*time.Second, 50*time.Millisecond, func() error {
		info, err = stream.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.Msgs < uint64(len(bad)) {
			return fmt.Errorf("%s holds %d messages, want %d", poison, info.State.Msgs, len(bad))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("poison message %d: %v", seq, err)
		}
		if m.Header.Get(middleware.ReasonForPoisonedKey) == "" {
			t.Errorf("poison message %d %q has no %s header: %v", seq, m.Data, middleware.ReasonForPoisonedKey, m.Header)
		}
		seen[string(m.Data)] = true
	}
	for _, b := range bad {
		if !seen[string(b.raw)] {
			t.Errorf("bad write %q (%s) not in %s", b.name, b.raw, poison)
		}
	}
}

// checkWriteStreamEmpty checks the producers' write stream comes to hold
// nothing: no bad message waits for redelivery, and the nodes trimmed every
// message the writer consumer saw acknowledged or terminated.
func checkWriteStreamEmpty(t *testing.T, s *System) {
	t.Helper()
	if err := procs.Eventually(10*time.Second, 50*time.Millisecond, func() error {
		_, err := s.streamEmpty(s.streamName(events.StreamMetadata))
		return err
	}); err != nil {
		t.Error(err)
	}
}

// checkOversizePublishRefused checks a 300 KiB message is refused by the
// stream itself, and the table (want) and the node are unchanged after it.
func checkOversizePublishRefused(t *testing.T, s *System, n *Node, want map[int64]metastore.Version) {
	t.Helper()
	// A 300 KiB message is refused by the stream itself.
	huge := jsonBody(t, with(anime(7200, "Akira"), "overview", strings.Repeat("x", 300<<10)))
	err := publishRaw(s, events.SubjectMetadataUpsert, huge)
	if err == nil {
		t.Fatalf("publish of %d bytes to %s accepted", len(huge), events.SubjectMetadataUpsert)
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		t.Logf("300 KiB publish refused: %v (code %d)", apiErr, apiErr.ErrorCode)
	} else {
		t.Logf("300 KiB publish refused: %v", err)
	}
	// Nothing changed after it either, and the node is still up.
	final, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(want, final) {
		t.Errorf("table changed after the oversize publish: %v", final)
	}
	if !n.Running() {
		t.Fatalf("node exited: %v", n.ExitErr())
	}
	if r, err := do("GET", n.URL()+"/healthz", nil); err != nil || r.Code != 200 {
		t.Errorf("healthz: %v %d", err, r.Code)
	}
}
