package load

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"

	"github.com/anivault/anivault/events"
)

// WriteAnswer is what a cache-node answered to one PUT or DELETE.
type WriteAnswer struct {
	Method, URL string
	// Status is the HTTP status (0: the request failed, see Err).
	Status int
	// Version is the version a 200 or 202 acknowledged (0 otherwise).
	Version int64
	// Superseded: a 200 "superseded": not written at a version of its own.
	Superseded bool
	// Body is the answer's body, trimmed.
	Body string
	// Err is the transport error (nil when the node answered).
	Err error
}

// Acked reports whether the write was acknowledged: 200 or 202 with a version.
func (a WriteAnswer) Acked() bool {
	return (a.Status == http.StatusOK || a.Status == http.StatusAccepted) && a.Version > 0
}

// String describes the answer for an error line.
func (a WriteAnswer) String() string {
	if a.Err != nil {
		return a.Err.Error()
	}
	return fmt.Sprintf("%s %s: %d %s", a.Method, a.URL, a.Status, a.Body)
}

// Write sends PUT /v1/anime/<id> with body to the node at base URL node, or
// DELETE when body is nil, and reads the answer.
func Write(ctx context.Context, c *http.Client, node string, id int64, body []byte) WriteAnswer {
	a := WriteAnswer{Method: http.MethodPut, URL: fmt.Sprintf("%s/v1/anime/%d", node, id)}
	var rd io.Reader = bytes.NewReader(body)
	if body == nil {
		a.Method, rd = http.MethodDelete, nil
	}
	req, err := http.NewRequestWithContext(ctx, a.Method, a.URL, rd)
	if err != nil {
		a.Err = fmt.Errorf("load: %w", err)
		return a
	}
	status, b, err := Do(c, req)
	if err != nil && status == 0 {
		a.Err = err
		return a
	}
	a.Status, a.Body = status, string(bytes.TrimSpace(b))
	var wr struct {
		Status  string `json:"status"`
		Version int64  `json:"version"`
	}
	if (status == http.StatusOK || status == http.StatusAccepted) && json.Unmarshal(b, &wr) == nil {
		a.Version, a.Superseded = wr.Version, wr.Status == "superseded"
	}
	return a
}

// ReadAnswer is what a cache-node answered to one GET.
type ReadAnswer struct {
	// Status is the HTTP status (0: the request or the body's read failed, see Err).
	Status int
	Body   []byte
	// Source and Mode are the X-AniVault-Source and X-AniVault-Mode headers.
	Source, Mode string
	Err          error
}

// Read sends GET /v1/anime/<id> to the node at base URL node.
func Read(ctx context.Context, c *http.Client, node string, id int64) ReadAnswer {
	var a ReadAnswer
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/v1/anime/%d", node, id), nil)
	if err != nil {
		a.Err = fmt.Errorf("load: %w", err)
		return a
	}
	resp, err := c.Do(req)
	if err != nil {
		a.Err = err
		return a
	}
	defer resp.Body.Close()
	a.Source, a.Mode = resp.Header.Get("X-AniVault-Source"), resp.Header.Get("X-AniVault-Mode")
	a.Body, err = io.ReadAll(resp.Body)
	if err != nil {
		a.Err = fmt.Errorf("read body: %w", err)
		return a
	}
	a.Status = resp.StatusCode
	return a
}

// Do sends req with c and reads the whole body, so that the connection is
// reused. The status is 0 when no answer came.
func Do(c *http.Client, req *http.Request) (int, []byte, error) {
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// Vary returns rec as JSON with random vote_count (below votes) and
// popularity (below pop, two decimals): every write of a key differs.
func Vary(rng *rand.Rand, rec events.Record, votes, pop int) []byte {
	v := int64(rng.IntN(votes))
	p := float64(rng.IntN(pop*100)) / 100
	rec.VoteCount, rec.Popularity = &v, &p
	b, _ := events.Marshal(&rec)
	return b
}
