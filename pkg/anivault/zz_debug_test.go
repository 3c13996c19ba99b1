package anivault_test

import (
	"log/slog"
	"testing"
	"time"
)

type tlogWriter struct {
	t     *testing.T
	start time.Time
}

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Logf("%6dms %s", time.Since(w.start).Milliseconds(), p)
	return len(p), nil
}

func debugLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t, time.Now()}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
