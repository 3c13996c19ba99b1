package anivault

import (
	"regexp"
	"testing"
	"time"
)

func TestMsgIDIsRandomUUID(t *testing.T) {
	t.Parallel()
	re := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := make(map[string]bool)
	for range 1000 {
		id := newMsgID()
		if !re.MatchString(id) {
			t.Fatalf("msg id %q is not a version 4 UUID", id)
		}
		if seen[id] {
			t.Fatalf("msg id %q repeated", id)
		}
		seen[id] = true
	}
}

func TestBackoffDoublesWithinBounds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		base    time.Duration
		attempt int
		ceiling time.Duration // the un-jittered wait
	}{
		{name: "first retry", base: 100 * time.Millisecond, attempt: 1, ceiling: 100 * time.Millisecond},
		{name: "third retry", base: 100 * time.Millisecond, attempt: 3, ceiling: 400 * time.Millisecond},
		{name: "capped", base: 100 * time.Millisecond, attempt: 40, ceiling: MaxRetryBackoff},
		{name: "base above the cap", base: 10 * time.Second, attempt: 5, ceiling: 10 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &Client{opts: Options{RetryBackoff: tc.base}}
			for range 100 {
				d := c.backoff(tc.attempt)
				if d < tc.ceiling/2 || d > tc.ceiling {
					t.Fatalf("backoff(%d) = %s, want within [%s, %s]", tc.attempt, d, tc.ceiling/2, tc.ceiling)
				}
			}
		})
	}
}
