package launch

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/anivault/anivault/events"
)

// Tail returns the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Get sends GET url with c and returns the status and the body.
func Get(ctx context.Context, c *http.Client, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, fmt.Errorf("get %s: %w", url, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, b, fmt.Errorf("get %s: %w", url, err)
	}
	return resp.StatusCode, b, nil
}

// NodeStatus reads a cache-node's GET /v1/status with c.
func NodeStatus(ctx context.Context, c *http.Client, n *Node) (events.SystemStatus, error) {
	var st events.SystemStatus
	code, b, err := Get(ctx, c, n.URL()+"/v1/status")
	if err != nil {
		return st, err
	}
	if code != http.StatusOK {
		return st, fmt.Errorf("status %d", code)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("status of %s: %w", n.ID, err)
	}
	return st, nil
}

// Say prints one progress line to w: the seconds since begin, then the message.
func Say(w io.Writer, begin time.Time, format string, a ...any) {
	fmt.Fprintf(w, "%7.1fs  %s\n", time.Since(begin).Seconds(), fmt.Sprintf(format, a...))
}
