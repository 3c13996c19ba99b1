package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/anivault/anivault/events"
)

// retryAfterSeconds is the Retry-After sent with 503.
const retryAfterSeconds = "5"

func (n *Node) routes() http.Handler {
	mux := http.NewServeMux()
	route := n.metrics.route
	mux.Handle("GET /v1/anime/{tmdb_id}", route(routeAnime, n.authorize(n.handleHTTPGet, roleRead, roleWrite)))
	mux.Handle("PUT /v1/anime/{tmdb_id}", route(routeAnime, n.authorize(n.handleHTTPPut, roleWrite)))
	mux.Handle("DELETE /v1/anime/{tmdb_id}", route(routeAnime, n.authorize(n.handleHTTPDelete, roleWrite)))
	mux.Handle("GET /v1/status", route(routeStatus, n.authorize(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, n.status())
	}, roleRead, roleWrite)))
	// Probes and scrapes are left out of the HTTP metrics (route "").
	mux.Handle("GET /healthz", route("", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})))
	mux.Handle("GET /readyz", route("", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if n.stopping.Load() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": "shutting down"})
			return
		}
		if !n.ready.Load() || !n.migrateTried.Load() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": "mode or database schema not known yet"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready", "mode": string(n.currentMode())})
	})))
	mux.Handle("GET /metrics", route("", promhttp.HandlerFor(n.metrics.registry, promhttp.HandlerOpts{})))
	return n.metrics.instrument(mux)
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

func (n *Node) fail(w http.ResponseWriter, err error) {
	var ve *events.ValidationError
	switch {
	case errors.Is(err, events.ErrTooLarge):
		n.metrics.invalid.WithLabelValues("http").Inc()
		writeJSON(w, http.StatusRequestEntityTooLarge, httpError{Error: err.Error(), Field: "body"})
	case errors.As(err, &ve):
		n.metrics.invalid.WithLabelValues("http").Inc()
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
		n.log.Error("request failed", "error", err)
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

func (n *Node) requestCtx(r *http.Request) (context.Context, context.CancelFunc) {
	// The database budget plus the buffer's: a request never hangs on a dead dependency.
	return context.WithTimeout(r.Context(), n.cfg.DBTimeout+n.cfg.BufferTimeout)
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

func (n *Node) handleHTTPGet(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	n.hdr.setMode(hdr, n.currentMode())
	id, err := pathID(r)
	if err != nil {
		n.fail(w, err)
		return
	}
	// A cache hit needs no deadline: it waits on nothing.
	body, src, err, hit := n.readCached(id)
	if !hit {
		ctx, cancel := n.requestCtx(r)
		defer cancel()
		body, src, err = n.read(ctx, id)
	}
	n.hdr.setSource(hdr, src)
	if err != nil {
		n.fail(w, err)
		return
	}
	hdr[headerContentType] = n.hdr.json
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// writeSlot takes one of the node's write slots, or answers 503 when all
// are in use; release must be called when it returns true.
func (n *Node) writeSlot(w http.ResponseWriter) (release func(), ok bool) {
	select {
	case n.writeSlots <- struct{}{}:
		return func() { <-n.writeSlots }, true
	default:
		n.metrics.writes.WithLabelValues("refused_busy").Inc()
		// The body is not read: the connection closes after the answer,
		// which is flushed at once rather than after the server gave up
		// discarding a body that may never end.
		w.Header().Set("Connection", "close")
		n.fail(w, fmt.Errorf("%w: %d writes in flight, the node's limit (MAX_CONCURRENT_WRITES)", ErrUnavailable, cap(n.writeSlots)))
		_ = http.NewResponseController(w).Flush()
		return nil, false
	}
}

func (n *Node) handleHTTPPut(w http.ResponseWriter, r *http.Request) {
	n.hdr.setMode(w.Header(), n.currentMode())
	id, err := pathID(r)
	if err != nil {
		n.fail(w, err)
		return
	}
	release, ok := n.writeSlot(w)
	if !ok {
		return
	}
	defer release()
	body, err := readBody(r, events.MaxRecordBytes+1)
	if err != nil {
		n.fail(w, &events.ValidationError{Field: "body", Message: "could not read the request body: " + err.Error()})
		return
	}
	rec, err := events.DecodeRecord(body)
	if err != nil {
		n.fail(w, err)
		return
	}
	if rec.TMDBID != id {
		n.fail(w, &events.ValidationError{Field: "tmdb_id", Message: fmt.Sprintf("%d in the body differs from %d in the path", rec.TMDBID, id)})
		return
	}
	ctx, cancel := n.requestCtx(r)
	defer cancel()
	n.respondWrite(w, ctx, Write{TMDBID: id, Record: rec})
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

func (n *Node) handleHTTPDelete(w http.ResponseWriter, r *http.Request) {
	n.hdr.setMode(w.Header(), n.currentMode())
	id, err := pathID(r)
	if err != nil {
		n.fail(w, err)
		return
	}
	release, ok := n.writeSlot(w)
	if !ok {
		return
	}
	defer release()
	ctx, cancel := n.requestCtx(r)
	defer cancel()
	n.respondWrite(w, ctx, Write{TMDBID: id})
}

func (n *Node) respondWrite(w http.ResponseWriter, ctx context.Context, wr Write) {
	res, err := n.write(ctx, wr)
	if err != nil {
		n.fail(w, err)
		return
	}
	code := http.StatusOK
	if res.Status == "buffered" {
		code = http.StatusAccepted
	}
	writeJSON(w, code, res)
}
