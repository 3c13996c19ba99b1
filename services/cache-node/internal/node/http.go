package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/anivault/anivault/events"
)

// retryAfterSeconds is the Retry-After sent with 503.
const retryAfterSeconds = "5"

// httpAPI is the HTTP transport: the contract's routes, their
// authorization, the bound on writes in flight, the mapping of errors to
// status codes and the read path's headers, over the node's read and write
// paths (httpDeps).
type httpAPI struct {
	cfg        httpConfig
	deps       httpDeps
	log        *slog.Logger
	metrics    *metrics
	tokens     *tokens
	hdr        headerValues // the read responses' header values
	writeSlots chan struct{}
}

// httpConfig is the HTTP transport's part of the node's configuration.
type httpConfig struct {
	// RequestTimeout bounds a request's work: the database budget plus the
	// buffer's (DB_TIMEOUT + BUFFER_TIMEOUT), so that a request never hangs
	// on a dead dependency.
	RequestTimeout time.Duration
	// MaxConcurrentWrites bounds the writes in flight (MAX_CONCURRENT_WRITES).
	MaxConcurrentWrites int
	// AuthTokensFile holds the bearer tokens (HTTP_AUTH_TOKENS_FILE; "" for none).
	AuthTokensFile string
}

// httpDeps is what the HTTP transport uses of the rest of the node.
type httpDeps struct {
	Mode func() events.Mode
	// ReadCached answers from the cache alone when it can (hit).
	ReadCached func(id int64) (body []byte, src Source, err error, hit bool)
	Read       func(ctx context.Context, id int64) ([]byte, Source, error)
	Write      func(ctx context.Context, w Write) (WriteResult, error)
	Status     func() events.SystemStatus
	// Readiness tells whether the node takes traffic, and why not.
	Readiness func() (ready bool, reason string)
}

func newHTTPAPI(cfg httpConfig, deps httpDeps, log *slog.Logger, m *metrics) (*httpAPI, error) {
	if cfg.RequestTimeout <= 0 || cfg.MaxConcurrentWrites < 1 || log == nil || m == nil || deps.Mode == nil ||
		deps.ReadCached == nil || deps.Read == nil || deps.Write == nil || deps.Status == nil || deps.Readiness == nil {
		return nil, errors.New("http: invalid configuration or a missing dependency")
	}
	tokens, err := loadTokens(cfg.AuthTokensFile)
	if err != nil {
		return nil, err
	}
	return &httpAPI{cfg: cfg, deps: deps, log: log, metrics: m, tokens: tokens, hdr: newHeaderValues(),
		writeSlots: make(chan struct{}, cfg.MaxConcurrentWrites)}, nil
}

// newHTTPAPI makes the node's HTTP transport over its read and write paths.
func (n *Node) newHTTPAPI() (*httpAPI, error) {
	return newHTTPAPI(httpConfig{RequestTimeout: n.cfg.DBTimeout + n.cfg.BufferTimeout,
		MaxConcurrentWrites: n.cfg.MaxConcurrentWrites, AuthTokensFile: n.cfg.AuthTokensFile}, httpDeps{
		Mode: n.currentMode, ReadCached: n.readCached, Read: n.read, Write: n.write, Status: n.status,
		Readiness: func() (bool, string) {
			switch {
			case n.stopping.Load():
				return false, "shutting down"
			case !n.ready.Load() || !n.migrateTried.Load():
				return false, "mode or database schema not known yet"
			}
			return true, ""
		},
	}, n.log, n.metrics)
}

// handler routes the contract's HTTP API, the probes and /metrics.
func (a *httpAPI) handler() http.Handler {
	mux := http.NewServeMux()
	route := a.metrics.route
	mux.Handle("GET /v1/anime/{tmdb_id}", route(routeAnime, a.authorize(a.handleGet, roleRead, roleWrite)))
	mux.Handle("PUT /v1/anime/{tmdb_id}", route(routeAnime, a.authorize(a.handlePut, roleWrite)))
	mux.Handle("DELETE /v1/anime/{tmdb_id}", route(routeAnime, a.authorize(a.handleDelete, roleWrite)))
	mux.Handle("GET /v1/status", route(routeStatus, a.authorize(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, a.deps.Status())
	}, roleRead, roleWrite)))
	// Probes and scrapes are left out of the HTTP metrics (route "").
	mux.Handle("GET /healthz", route("", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})))
	mux.Handle("GET /readyz", route("", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if ready, reason := a.deps.Readiness(); !ready {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": reason})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready", "mode": string(a.deps.Mode())})
	})))
	mux.Handle("GET /metrics", route("", promhttp.HandlerFor(a.metrics.registry, promhttp.HandlerOpts{})))
	return a.metrics.instrument(mux)
}

type httpError struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// statusClientClosedRequest is the status a request is counted under when
// its client went away before the answer (nginx's 499): nothing reaches the
// client, and the error its cancelled work met is not the node's.
const statusClientClosedRequest = 499

// fail answers r with the status err maps to.
func (a *httpAPI) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ve *events.ValidationError
	switch {
	case r.Context().Err() != nil:
		// The client closed the connection (net/http cancels a request's
		// context then, and not when the server shuts down): a read waiting on
		// the database or the change log ended with "context canceled". As a
		// 503 or a 500 it would count as the node failing: wrk's stop made 40
		// to 60 such 503s a benchmark run.
		a.log.Debug("request abandoned by its client", "method", r.Method, "path", r.URL.Path, "error", err)
		writeJSON(w, statusClientClosedRequest, httpError{Error: "client closed the request: " + err.Error()})
	case errors.Is(err, events.ErrTooLarge):
		a.metrics.invalid.WithLabelValues("http").Inc()
		writeJSON(w, http.StatusRequestEntityTooLarge, httpError{Error: err.Error(), Field: "body"})
	case errors.As(err, &ve):
		a.metrics.invalid.WithLabelValues("http").Inc()
		field := ve.Field
		if field == "" {
			field = "body"
		}
		writeJSON(w, http.StatusBadRequest, httpError{Error: ve.Error(), Field: field})
	case errors.Is(err, ErrNotFound):
		writeJSON(w, http.StatusNotFound, httpError{Error: err.Error()})
	case errors.Is(err, ErrUnavailable):
		w.Header().Set("Retry-After", retryAfterSeconds)
		writeJSON(w, http.StatusServiceUnavailable, httpError{Error: err.Error()})
	default:
		a.log.Error("request failed", "error", err)
		writeJSON(w, http.StatusInternalServerError, httpError{Error: err.Error()})
	}
}

func pathID(r *http.Request) (int64, error) {
	raw := r.PathValue("tmdb_id")
	// Digits only, no leading zero, no sign: the id as it is written.
	canonical := raw != "" && raw[0] >= '1' && raw[0] <= '9'
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id <= 0 || !canonical {
		return 0, &events.ValidationError{Field: "tmdb_id", Message: fmt.Sprintf("must be an integer greater than 0, got %q", raw)}
	}
	return id, nil
}

func (a *httpAPI) requestCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), a.cfg.RequestTimeout)
}

// The response headers of a read, by their canonical names: set straight
// into the header map, skipping Header.Set's canonicalisation, which was a
// tenth of a cache hit's CPU.
const (
	headerMode        = "X-Anivault-Mode"   // X-AniVault-Mode
	headerSource      = "X-Anivault-Source" // X-AniVault-Source
	headerContentType = "Content-Type"
)

// headerValues are the values of those headers, made once per node and
// never changed: a header map may share them.
type headerValues struct {
	json   []string
	mode   map[events.Mode][]string
	source map[Source][]string
}

func newHeaderValues() headerValues {
	h := headerValues{json: []string{"application/json"}, mode: map[events.Mode][]string{}, source: map[Source][]string{}}
	for _, m := range []events.Mode{events.ModeNormal, events.ModeCacheOnly, events.ModeRecovering} {
		h.mode[m] = []string{string(m)}
	}
	for _, s := range []Source{SourceCache, SourceDatabase, SourceReplica} {
		h.source[s] = []string{string(s)}
	}
	return h
}

func (h headerValues) setMode(hdr http.Header, m events.Mode) {
	if v, ok := h.mode[m]; ok {
		hdr[headerMode] = v
		return
	}
	hdr.Set(headerMode, string(m))
}

func (h headerValues) setSource(hdr http.Header, s Source) {
	if v, ok := h.source[s]; ok {
		hdr[headerSource] = v
		return
	}
	hdr.Set(headerSource, string(s))
}

func (a *httpAPI) handleGet(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	a.hdr.setMode(hdr, a.deps.Mode())
	id, err := pathID(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	// A cache hit needs no deadline: it waits on nothing.
	body, src, err, hit := a.deps.ReadCached(id)
	if !hit {
		ctx, cancel := a.requestCtx(r)
		defer cancel()
		body, src, err = a.deps.Read(ctx, id)
	}
	a.hdr.setSource(hdr, src)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	hdr[headerContentType] = a.hdr.json
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// writeSlot takes one of the node's write slots, or answers 503 when all
// are in use; release must be called when it returns true.
func (a *httpAPI) writeSlot(w http.ResponseWriter, r *http.Request) (release func(), ok bool) {
	select {
	case a.writeSlots <- struct{}{}:
		return func() { <-a.writeSlots }, true
	default:
		a.metrics.writes.WithLabelValues("refused_busy").Inc()
		// The body is not read: the connection closes after the answer,
		// which is flushed at once rather than after the server gave up
		// discarding a body that may never end.
		w.Header().Set("Connection", "close")
		a.fail(w, r, fmt.Errorf("%w: %d writes in flight, the node's limit (MAX_CONCURRENT_WRITES)", ErrUnavailable, cap(a.writeSlots)))
		_ = http.NewResponseController(w).Flush()
		return nil, false
	}
}

func (a *httpAPI) handlePut(w http.ResponseWriter, r *http.Request) {
	a.hdr.setMode(w.Header(), a.deps.Mode())
	id, err := pathID(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	release, ok := a.writeSlot(w, r)
	if !ok {
		return
	}
	defer release()
	body, err := readBody(r, events.MaxRecordBytes+1)
	if err != nil {
		a.fail(w, r, &events.ValidationError{Field: "body", Message: "could not read the request body: " + err.Error()})
		return
	}
	rec, err := events.DecodeRecord(body)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if rec.TMDBID != id {
		a.fail(w, r, &events.ValidationError{Field: "tmdb_id", Message: fmt.Sprintf("%d in the body differs from %d in the path", rec.TMDBID, id)})
		return
	}
	ctx, cancel := a.requestCtx(r)
	defer cancel()
	a.respondWrite(w, r, ctx, Write{TMDBID: id, Record: rec})
}

// readBody reads at most limit bytes of r's body, into a buffer sized by its
// Content-Length when it has one (io.ReadAll starts from 512 bytes and grows,
// copying, to fit a 1 KB record).
func readBody(r *http.Request, limit int64) ([]byte, error) {
	size := int64(512)
	if r.ContentLength > 0 {
		size = min(r.ContentLength+1, limit) // +1: the read that sees EOF needs room
	}
	lr := io.LimitReader(r.Body, limit)
	buf := make([]byte, 0, size)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := lr.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

func (a *httpAPI) handleDelete(w http.ResponseWriter, r *http.Request) {
	a.hdr.setMode(w.Header(), a.deps.Mode())
	id, err := pathID(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	release, ok := a.writeSlot(w, r)
	if !ok {
		return
	}
	defer release()
	ctx, cancel := a.requestCtx(r)
	defer cancel()
	a.respondWrite(w, r, ctx, Write{TMDBID: id})
}

func (a *httpAPI) respondWrite(w http.ResponseWriter, r *http.Request, ctx context.Context, wr Write) {
	res, err := a.deps.Write(ctx, wr)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	code := http.StatusOK
	if res.Status == "buffered" {
		code = http.StatusAccepted
	}
	writeJSON(w, code, res)
}
