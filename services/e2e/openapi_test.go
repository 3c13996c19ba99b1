package e2e_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/pb33f/libopenapi-validator/config"
	verrors "github.com/pb33f/libopenapi-validator/errors"

	"github.com/anivault/anivault/api"
	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/procs"
)

// apiCheck sends requests to running nodes, validates every request and
// response against api/openapi.yaml, and keeps which documented
// (method, path, status) triples were seen.
type apiCheck struct {
	t          *testing.T
	v          validator.Validator
	documented map[string]bool // "GET /v1/anime/{tmdb_id} 200"
	mu         sync.Mutex
	seen       map[string]bool
}

func newAPICheck(t *testing.T) *apiCheck {
	t.Helper()
	doc, err := libopenapi.NewDocument(api.OpenAPI())
	if err != nil {
		t.Fatal(err)
	}
	m, err := doc.BuildV3Model()
	if err != nil {
		t.Fatal(err)
	}
	v, errs := validator.NewValidator(doc, config.WithFormatAssertions())
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	c := &apiCheck{t: t, v: v, documented: map[string]bool{}, seen: map[string]bool{}}
	for path, item := range m.Model.Paths.PathItems.FromOldest() {
		for method, op := range item.GetOperations().FromOldest() {
			for code := range op.Responses.Codes.KeysFromOldest() {
				c.documented[fmt.Sprintf("%s %s %s", strings.ToUpper(method), path, code)] = true
			}
		}
	}
	if len(c.documented) < 20 {
		t.Fatalf("the document lists only %d responses", len(c.documented))
	}
	return c
}

// template returns the document's path for a request path.
func template(path string) string {
	if strings.HasPrefix(path, "/v1/anime/") {
		return "/v1/anime/{tmdb_id}"
	}
	return path
}

// exchange is one request and what must come of it.
type exchange struct {
	name   string
	method string
	base   string // the node's URL
	path   string
	body   []byte
	token  string
	accept string
	want   int
	// docRejects is set for a request the document itself calls invalid
	// (a bad path id, a body its schema refuses). A request the document
	// accepts but the node refuses is one of the rules it states in words.
	docRejects bool
}

func (c *apiCheck) request(e exchange) *http.Request {
	c.t.Helper()
	var body io.Reader = http.NoBody
	if e.body != nil {
		body = bytes.NewReader(e.body)
	}
	req, err := http.NewRequest(e.method, e.base+e.path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	if e.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if e.token != "" {
		req.Header.Set("Authorization", "Bearer "+e.token)
	}
	if e.accept != "" {
		req.Header.Set("Accept", e.accept)
	}
	return req
}

// do sends e, checks its status, validates the request and the response,
// and returns the response.
func (c *apiCheck) do(e exchange) Resp {
	c.t.Helper()
	ok, verrs := c.v.ValidateHttpRequestSync(c.request(e))
	switch {
	case e.docRejects && ok:
		c.t.Errorf("%s: the document accepts the request %s %s, but it is one the node refuses", e.name, e.method, e.path)
	case !e.docRejects && !ok:
		c.t.Errorf("%s: the request %s %s does not validate: %s", e.name, e.method, e.path, validationErrors(verrs))
	}
	req := c.request(e)
	resp, err := client.Do(req)
	if err != nil {
		c.t.Fatalf("%s: %s %s: %v", e.name, e.method, e.path, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		c.t.Fatalf("%s: read the answer: %v", e.name, err)
	}
	r := Resp{Code: resp.StatusCode, Body: b, Header: resp.Header}
	if r.Code != e.want {
		c.t.Errorf("%s: %s %s answered %d %s, want %d", e.name, e.method, e.path, r.Code, b, e.want)
		return r
	}
	c.validateResponse(e.name, c.request(e), resp, b)
	return r
}

func (c *apiCheck) validateResponse(name string, req *http.Request, resp *http.Response, body []byte) {
	c.t.Helper()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if ok, verrs := c.v.ValidateHttpResponse(req, resp); !ok {
		c.t.Errorf("%s: the answer %d to %s %s does not validate: %s\nheaders %v\nbody %.2000s",
			name, resp.StatusCode, req.Method, req.URL.Path, validationErrors(verrs), resp.Header, body)
		return
	}
	c.mu.Lock()
	c.seen[fmt.Sprintf("%s %s %d", req.Method, template(req.URL.Path), resp.StatusCode)] = true
	c.mu.Unlock()
}

func validationErrors(errs []*verrors.ValidationError) string {
	var b strings.Builder
	for _, e := range errs {
		fmt.Fprintf(&b, "\n  %s: %s", e.Message, e.Reason)
		for _, se := range e.SchemaValidationErrors {
			fmt.Fprintf(&b, "\n    at %s: %s", se.FieldPath, se.Reason)
		}
	}
	return b.String()
}

// coverage fails the test for every documented response never produced.
func (c *apiCheck) coverage() {
	c.t.Helper()
	var missing []string
	for k := range c.documented {
		if !c.seen[k] {
			missing = append(missing, k)
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		c.t.Errorf("documented responses never produced by the node (%d of %d):\n  %s",
			len(missing), len(c.documented), strings.Join(missing, "\n  "))
	}
	c.t.Logf("the node produced %d documented (method, path, status) responses, every one valid", len(c.seen))
}

// The tokens of the secured node.
const openAPIReader, openAPIWriter = "read-token-openapi-0123456789", "write-token-openapi-0123456789"

// Every route and status code of api/openapi.yaml, produced by real nodes
// (normal mode, cache-only mode, bearer tokens, a full write slot, a
// shutdown): every request and response validates against the document,
// and every documented response is produced at least once.
func TestOpenAPIDocumentDescribesTheNode(t *testing.T) {
	t.Parallel()
	c := newAPICheck(t)
	s := NewSystem(t, Options{})
	open, secured := startOpenAndSecuredNodes(t, s)
	o, sec := open.URL(), secured.URL()

	written := checkNormalModeResponses(t, c, o)
	checkBadInputResponses(t, c, s, o)
	checkUnservedMethods(t, c, o)
	checkBearerTokens(t, c, s, sec, written)
	checkFullWriteSlot(t, c, secured)
	checkCacheOnlyResponses(t, c, s, open)
	checkShutdownResponses(t, c, secured)

	c.coverage()
}

// startOpenAndSecuredNodes starts a node without tokens and a secured one
// (bearer tokens, one write slot, a long SHUTDOWN_DELAY), then a manager.
func startOpenAndSecuredNodes(t *testing.T, s *System) (open, secured *Node) {
	t.Helper()
	file := t.TempDir() + "/tokens"
	if err := os.WriteFile(file, []byte("read "+openAPIReader+"\nwrite "+openAPIWriter+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	open = s.StartNode("open", nil)
	// The secured node has one write slot, and serves for a while after SIGTERM with /readyz failing.
	secured = s.StartNode("secured", map[string]string{
		"HTTP_AUTH_TOKENS_FILE": file, "MAX_CONCURRENT_WRITES": "1", "SHUTDOWN_DELAY": "20s", "HTTP_READ_TIMEOUT": "60s",
	})
	waitSchema(t, s)
	s.StartManager(nil)
	return open, secured
}

// checkNormalModeResponses produces the normal-mode responses of node o
// and returns the version the write of tmdb:1429 committed.
func checkNormalModeResponses(t *testing.T, c *apiCheck, o string) int64 {
	t.Helper()
	// Normal mode: probes, metrics, committed writes, reads, 404, status.
	c.do(exchange{name: "liveness", method: "GET", base: o, path: "/healthz", want: 200})
	c.do(exchange{name: "readiness", method: "GET", base: o, path: "/readyz", want: 200})
	m := c.do(exchange{name: "metrics", method: "GET", base: o, path: "/metrics", want: 200})
	if !strings.Contains(string(m.Body), "anivault_mode_epoch") {
		t.Errorf("/metrics lacks anivault_mode_epoch")
	}
	c.do(exchange{name: "metrics as OpenMetrics", method: "GET", base: o, path: "/metrics",
		accept: "application/openmetrics-text;version=1.0.0", want: 200})
	var wr WriteResult
	r := c.do(exchange{name: "put commits", method: "PUT", base: o, path: "/v1/anime/1429", body: jsonBody(t, anime(1429, "Attack on Titan")), want: 200})
	if r.Code == 200 {
		r.JSON(t, &wr)
		if wr.Status != "committed" || wr.Version <= 0 {
			t.Errorf("put: %s", r.Body)
		}
		if r.Header.Get("X-AniVault-Mode") != "normal" {
			t.Errorf("put: X-AniVault-Mode %q", r.Header.Get("X-AniVault-Mode"))
		}
	}
	r = c.do(exchange{name: "get", method: "GET", base: o, path: "/v1/anime/1429", want: 200})
	var got events.Record
	if r.Code == 200 {
		r.JSON(t, &got)
		if got.Title != "Attack on Titan" || got.Version != wr.Version || got.UpdatedAt == nil {
			t.Errorf("get: %s, want version %d", r.Body, wr.Version)
		}
	}
	c.do(exchange{name: "put with nulls", method: "PUT", base: o, path: "/v1/anime/1430", want: 200,
		body: []byte(`{"tmdb_id":1430,"title":"Sparse","overview":null,"first_air_date":null,"vote_count":null,"genres":null,"raw_data":null}`)})
	c.do(exchange{name: "get a sparse record", method: "GET", base: o, path: "/v1/anime/1430", want: 200})
	c.do(exchange{name: "delete commits", method: "DELETE", base: o, path: "/v1/anime/1430", want: 200})
	c.do(exchange{name: "get a deleted record", method: "GET", base: o, path: "/v1/anime/1430", want: 404})
	c.do(exchange{name: "get an unknown record", method: "GET", base: o, path: "/v1/anime/987654", want: 404})
	c.do(exchange{name: "delete an unknown record", method: "DELETE", base: o, path: "/v1/anime/987655", want: 200})
	r = c.do(exchange{name: "status in normal mode", method: "GET", base: o, path: "/v1/status", want: 200})
	var st events.SystemStatus
	if r.Code == 200 {
		r.JSON(t, &st)
		if st.Mode != events.ModeNormal || !st.IsOperational || st.NodeID != "open" {
			t.Errorf("status: %s", r.Body)
		}
	}
	return wr.Version
}

// checkBadInputResponses produces every 400 and the 413 on node o and
// checks the table is unchanged.
func checkBadInputResponses(t *testing.T, c *apiCheck, s *System, o string) {
	t.Helper()
	// Bad input: 400 and 413, the table unchanged.
	before, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	base := anime(1500, "valid")
	for _, bad := range []struct {
		name, method, path string
		body               []byte
		field              string
		docRejects         bool
	}{
		{"id not a number", "GET", "/v1/anime/abc", nil, "tmdb_id", true},
		{"id zero", "GET", "/v1/anime/0", nil, "tmdb_id", true},
		{"id with a leading zero", "GET", "/v1/anime/01500", nil, "tmdb_id", false},
		{"put to a bad id", "PUT", "/v1/anime/x1", jsonBody(t, base), "tmdb_id", true},
		{"delete a negative id", "DELETE", "/v1/anime/-5", nil, "tmdb_id", true},
		{"delete an id beyond int64", "DELETE", "/v1/anime/9223372036854775808", nil, "tmdb_id", true},
		{"ids differ", "PUT", "/v1/anime/1500", jsonBody(t, with(base, "tmdb_id", 1501)), "tmdb_id", false},
		{"no title", "PUT", "/v1/anime/1500", jsonBody(t, with(base, "title", nil)), "title", true},
		{"blank title", "PUT", "/v1/anime/1500", jsonBody(t, with(base, "title", "   ")), "title", true},
		{"title too long", "PUT", "/v1/anime/1500", jsonBody(t, with(base, "title", strings.Repeat("t", 256))), "title", true},
		{"title with NUL", "PUT", "/v1/anime/1500", jsonBody(t, with(base, "title", "a\x00b")), "title", true},
		{"unknown field", "PUT", "/v1/anime/1500", jsonBody(t, with(base, "rating", 5)), "rating", true},
		{"bad date", "PUT", "/v1/anime/1500", jsonBody(t, with(base, "first_air_date", "2023-02-30")), "first_air_date", true},
		{"negative count", "PUT", "/v1/anime/1500", jsonBody(t, with(base, "vote_count", -1)), "vote_count", true},
		{"genre not a string", "PUT", "/v1/anime/1500", jsonBody(t, with(base, "genres", []any{1})), "genres", true},
		{"raw_data an array", "PUT", "/v1/anime/1500", jsonBody(t, with(base, "raw_data", []any{1})), "raw_data", true},
		{"raw_data with NUL", "PUT", "/v1/anime/1500", []byte(`{"tmdb_id":1500,"title":"x","raw_data":{"a":"\u0000"}}`), "raw_data", false},
		{"duplicate key", "PUT", "/v1/anime/1500", []byte(`{"tmdb_id":1500,"title":"x","title":"y"}`), "title", false},
		{"not JSON", "PUT", "/v1/anime/1500", []byte(`title=x`), "body", true},
		{"empty body", "PUT", "/v1/anime/1500", []byte{}, "body", true},
	} {
		r := c.do(exchange{name: bad.name, method: bad.method, base: o, path: bad.path, body: bad.body, want: 400, docRejects: bad.docRejects})
		var e httpErrorBody
		if r.Code == 400 {
			r.JSON(t, &e)
			if !strings.HasPrefix(e.Field, bad.field) || e.Error == "" {
				t.Errorf("%s: %s, want field %q", bad.name, r.Body, bad.field)
			}
		}
	}
	huge := jsonBody(t, with(base, "overview", strings.Repeat("o", events.MaxRecordBytes)))
	r := c.do(exchange{name: "too large", method: "PUT", base: o, path: "/v1/anime/1500", body: huge, want: 413})
	if r.Code == 413 && !strings.Contains(string(r.Body), `"field":"body"`) {
		t.Errorf("413: %s", r.Body)
	}
	after, err := s.Versions()
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Errorf("refused writes changed the table: %d rows, then %d", len(before), len(after))
	}
}

// checkUnservedMethods produces the 405 of every path on node o.
func checkUnservedMethods(t *testing.T, c *apiCheck, o string) {
	t.Helper()
	// Methods a path does not serve.
	for _, p := range []struct {
		path    string
		methods []string
	}{
		{"/v1/anime/1429", []string{"POST", "PATCH"}},
		{"/v1/status", []string{"PUT", "POST", "DELETE"}},
		{"/healthz", []string{"PUT", "POST", "DELETE"}},
		{"/readyz", []string{"PUT", "POST", "DELETE"}},
		{"/metrics", []string{"PUT", "POST", "DELETE"}},
	} {
		for _, method := range p.methods {
			r := c.do(exchange{name: method + " " + p.path, method: method, base: o, path: p.path, want: 405})
			if r.Code == 405 && r.Header.Get("Allow") == "" {
				t.Errorf("%s %s: 405 without Allow", method, p.path)
			}
		}
	}
}

// checkBearerTokens produces the 401 and 403 of the secured node sec and
// checks tmdb:1429 still has the version written.
func checkBearerTokens(t *testing.T, c *apiCheck, s *System, sec string, written int64) {
	t.Helper()
	// Bearer tokens: 401 without a valid one, 403 for a read token on a write.
	for _, e := range []exchange{
		{name: "get without a token", method: "GET", path: "/v1/anime/1429", want: 401},
		{name: "get with an unknown token", method: "GET", path: "/v1/anime/1429", token: "not-a-configured-token-0123", want: 401},
		{name: "put without a token", method: "PUT", path: "/v1/anime/1429", body: jsonBody(t, anime(1429, "x")), want: 401},
		{name: "delete without a token", method: "DELETE", path: "/v1/anime/1429", want: 401},
		{name: "status without a token", method: "GET", path: "/v1/status", want: 401},
		{name: "put with a read token", method: "PUT", path: "/v1/anime/1429", body: jsonBody(t, anime(1429, "x")), token: openAPIReader, want: 403},
		{name: "delete with a read token", method: "DELETE", path: "/v1/anime/1429", token: openAPIReader, want: 403},
		{name: "get with a read token", method: "GET", path: "/v1/anime/1429", token: openAPIReader, want: 200},
		{name: "status with a read token", method: "GET", path: "/v1/status", token: openAPIReader, want: 200},
		{name: "probes stay open", method: "GET", path: "/readyz", want: 200},
	} {
		e.base = sec
		r := c.do(e)
		if r.Code == 401 && r.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: 401 without WWW-Authenticate", e.name)
		}
	}
	if v, err := s.Versions(); err != nil || v[1429].Version != written {
		t.Errorf("refused writes changed tmdb:1429: %+v %v", v[1429], err)
	}
}

// checkFullWriteSlot produces the 503 of a write while the secured
// node's only write slot is taken.
func checkFullWriteSlot(t *testing.T, c *apiCheck, secured *Node) {
	t.Helper()
	// MAX_CONCURRENT_WRITES=1: a write whose body never finishes holds the
	// only slot; other writes are refused at once with 503 and Retry-After.
	// A probe may win the slot before the slow write's headers are read
	// (the slow write is then the one refused): start another slow write.
	sec := secured.URL()
	var hold *slowWrite
	defer func() {
		if hold != nil {
			hold.close()
		}
	}()
	slow := jsonBody(t, anime(1600, "slow"))
	for _, e := range []exchange{
		{name: "put while the write slot is taken", method: "PUT", path: "/v1/anime/1601", body: jsonBody(t, anime(1601, "busy")), token: openAPIWriter, want: 503},
		{name: "delete while the write slot is taken", method: "DELETE", path: "/v1/anime/1601", token: openAPIWriter, want: 503},
	} {
		e.base = sec
		if ok, verrs := c.v.ValidateHttpRequestSync(c.request(e)); !ok {
			t.Errorf("%s: the request does not validate: %s", e.name, validationErrors(verrs))
		}
		if err := procs.Eventually(30*time.Second, 20*time.Millisecond, func() error {
			if hold == nil || hold.answered() {
				if hold != nil {
					hold.close()
				}
				var err error
				if hold, err = startSlowWrite(secured.Addr, "/v1/anime/1600", openAPIWriter, slow); err != nil {
					return err
				}
			}
			resp, err := client.Do(c.request(e))
			if err != nil {
				return err
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 503 {
				return fmt.Errorf("%s: %d %s", e.name, resp.StatusCode, b)
			}
			if resp.Header.Get("Retry-After") == "" {
				t.Errorf("%s: 503 without Retry-After", e.name)
			}
			c.validateResponse(e.name, c.request(e), resp, b)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	hold.close() // the slow write fails and frees the slot
	hold = nil
}

// checkCacheOnlyResponses puts the node open into cache-only mode and
// produces its buffered writes, reads and status.
func checkCacheOnlyResponses(t *testing.T, c *apiCheck, s *System, open *Node) {
	t.Helper()
	// Cache-only mode: writes are buffered (202); a record the change log
	// never held cannot be read (503).
	s.EnterMaintenance("openapi reference", open)
	o := open.URL()
	r := c.do(exchange{name: "put buffers", method: "PUT", base: o, path: "/v1/anime/1700", body: jsonBody(t, anime(1700, "buffered")), want: 202})
	if r.Code == 202 && (!strings.Contains(string(r.Body), `"status":"buffered"`) || r.Header.Get("X-AniVault-Mode") != "cache_only") {
		t.Errorf("buffered put: %s %v", r.Body, r.Header)
	}
	c.do(exchange{name: "delete buffers", method: "DELETE", base: o, path: "/v1/anime/1429", want: 202})
	c.do(exchange{name: "get a buffered record", method: "GET", base: o, path: "/v1/anime/1700", want: 200})
	c.do(exchange{name: "get a record deleted in cache-only mode", method: "GET", base: o, path: "/v1/anime/1429", want: 404})
	r = c.do(exchange{name: "get a record no layer holds", method: "GET", base: o, path: "/v1/anime/424242", want: 503})
	if r.Code == 503 && (r.Header.Get("Retry-After") == "" || r.Header.Get("X-AniVault-Source") != "replica") {
		t.Errorf("503 read: headers %v", r.Header)
	}
	// The buffer figures are refreshed every NODE_STATUS_INTERVAL.
	if err := procs.Eventually(10*time.Second, 50*time.Millisecond, func() error {
		r := c.do(exchange{name: "status in cache-only mode", method: "GET", base: o, path: "/v1/status", want: 200})
		st := events.SystemStatus{}
		if err := json.Unmarshal(r.Body, &st); err != nil {
			return err
		}
		if !st.CacheOnlyMode || st.CacheOnlyReason != "openapi reference" || st.Buffer.AcceptedTotal < 2 {
			return fmt.Errorf("status in cache-only mode: %s", r.Body)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

// checkShutdownResponses sends SIGTERM to the secured node and produces
// its responses while it shuts down.
func checkShutdownResponses(t *testing.T, c *apiCheck, secured *Node) {
	t.Helper()
	// Shutdown: /readyz fails at once while the node still serves.
	if err := syscall.Kill(secured.Pid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sec := secured.URL()
	e := exchange{name: "readiness while shutting down", method: "GET", base: sec, path: "/readyz", want: 503}
	if err := procs.Eventually(15*time.Second, 20*time.Millisecond, func() error {
		resp, err := client.Do(c.request(e))
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 503 {
			return fmt.Errorf("readyz %d %s", resp.StatusCode, b)
		}
		c.validateResponse(e.name, c.request(e), resp, b)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	r := c.do(exchange{name: "status while shutting down", method: "GET", base: sec, path: "/v1/status", token: openAPIReader, want: 200})
	if r.Code == 200 {
		st := events.SystemStatus{}
		r.JSON(t, &st)
		if st.IsOperational {
			t.Errorf("a node shutting down says it is operational: %s", r.Body)
		}
	}
	var body map[string]any
	if err := json.Unmarshal(c.do(exchange{name: "liveness while shutting down", method: "GET", base: sec, path: "/healthz", want: 200}).Body, &body); err != nil {
		t.Error(err)
	}
}

// slowWrite is a PUT whose body stops half-way, holding a write slot of the
// node until it is closed (or HTTP_READ_TIMEOUT passes).
type slowWrite struct {
	conn net.Conn
	done chan struct{} // closed once the node answered it
}

func startSlowWrite(addr, path, token string, body []byte) (*slowWrite, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if _, err := fmt.Fprintf(conn, "PUT %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		path, token, len(body), body[:len(body)/2]); err != nil {
		conn.Close()
		return nil, err
	}
	w := &slowWrite{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
		if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err == nil {
			resp.Body.Close()
		}
	}()
	return w, nil
}

// answered tells whether the node has answered (or dropped) the slow write.
func (w *slowWrite) answered() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

func (w *slowWrite) close() {
	_ = w.conn.Close()
	<-w.done
}
