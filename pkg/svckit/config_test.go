package svckit_test

import (
	"context"
	"errors"

	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/anivault/anivault/pkg/natsconn"
	"github.com/anivault/anivault/pkg/pgdb"
	"github.com/anivault/anivault/pkg/svckit"
)

func TestLoadSharedDefaults(t *testing.T) {
	t.Parallel()
	r := envconfig.FromMap(nil)
	s := svckit.LoadShared(r)
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	want := svckit.DefaultShared()
	if s != want {
		t.Fatalf("LoadShared with nothing set = %+v, want the defaults %+v", s, want)
	}
	if s.NATS.URL != natsconn.DefaultURL || s.DatabaseURL != pgdb.DefaultDSN || s.NodeID == "" ||
		s.SubjectPrefix != "" || s.NoProvision {
		t.Fatalf("defaults are not the contract's: %+v", s)
	}
	if err := s.Validate(); err != nil {
		t.Fatalf("the defaults do not validate: %v", err)
	}
}

func TestLoadSharedReadsEveryVariable(t *testing.T) {
	t.Parallel()
	r := envconfig.FromMap(map[string]string{
		"NATS_URL": "nats://a:4222,nats://b:4222", "NATS_USER": "u", "NATS_PASSWORD": "p",
		"NATS_INBOX_PREFIX": "_INBOX.cache-node", "DATABASE_URL": "postgres://db/x",
		"NODE_ID": "n7", "SUBJECT_PREFIX": "stage", "NATS_PROVISION": "false",
	})
	s := svckit.LoadShared(r)
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	want := svckit.Shared{
		NATS:        natsconn.Config{URL: "nats://a:4222,nats://b:4222", User: "u", Password: "p", InboxPrefix: "_INBOX.cache-node"},
		DatabaseURL: "postgres://db/x", NodeID: "n7", SubjectPrefix: "stage", NoProvision: true,
	}
	if s != want {
		t.Fatalf("got %+v, want %+v", s, want)
	}
}

// LoadShared reports what it cannot parse; what parses but is wrong is
// Validate's to report, once.
func TestLoadSharedLeavesValidationToValidate(t *testing.T) {
	t.Parallel()
	r := envconfig.FromMap(map[string]string{"NATS_PROVISION": "maybe", "NATS_CERT": "c.pem"})
	s := svckit.LoadShared(r)
	err := r.Err()
	if err == nil || !strings.Contains(err.Error(), "NATS_PROVISION") || strings.Contains(err.Error(), "NATS_CERT") {
		t.Fatalf("reading: %v, want only the NATS_PROVISION parse error", err)
	}
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "NATS_*: NATS_CERT and NATS_KEY") {
		t.Fatalf("Validate: %v, want the NATS_CERT problem under NATS_*", err)
	}
}

func TestSharedValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		mutate   func(*svckit.Shared)
		variable string
	}{
		{"empty NATS URL", func(s *svckit.Shared) { s.NATS.URL = "" }, "NATS_URL"},
		{"cert without key", func(s *svckit.Shared) { s.NATS.Cert = "c.pem" }, "NATS_CERT"},
		{"password without user", func(s *svckit.Shared) { s.NATS.Password = "p" }, "NATS_PASSWORD"},
		{"inbox prefix with a wildcard", func(s *svckit.Shared) { s.NATS.InboxPrefix = "_INBOX.>" }, "NATS_INBOX_PREFIX"},
		{"empty database URL", func(s *svckit.Shared) { s.DatabaseURL = "" }, "DATABASE_URL"},
		{"empty node id", func(s *svckit.Shared) { s.NodeID = " " }, "NODE_ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := svckit.DefaultShared()
			tt.mutate(&s)
			err := s.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.variable+":") && !strings.Contains(err.Error(), tt.variable+" ") {
				t.Fatalf("Validate() = %v, want an error naming %s", err, tt.variable)
			}
		})
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestRetryUntilSucceeds(t *testing.T) {
	t.Parallel()
	calls := 0
	err := svckit.RetryUntil(t.Context(), discard(), "step", func(ctx context.Context) error {
		calls++
		if _, ok := ctx.Deadline(); !ok {
			t.Error("RetryUntil gave a call no deadline")
		}
		if calls < 2 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || calls != 2 {
		t.Fatalf("got %v after %d calls, want success after 2", err, calls)
	}
}

func TestRetryWithoutDeadlinePerCall(t *testing.T) {
	t.Parallel()
	err := svckit.Retry(t.Context(), discard(), "step", 0, func(ctx context.Context) error {
		if _, ok := ctx.Deadline(); ok {
			t.Error("Retry with perCall 0 set a deadline")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// When ctx ends, Retry returns the last failure (named by what) joined with ctx's error.
func TestRetryStopsWithContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	failure := errors.New("nats not there")
	var logged strings.Builder
	log := slog.New(slog.NewTextHandler(&logged, nil))
	err := svckit.Retry(ctx, log, "provision jetstream", time.Second, func(context.Context) error {
		cancel()
		return failure
	})
	if !errors.Is(err, failure) || !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "provision jetstream: ") {
		t.Fatalf("got %v, want the failure and context.Canceled, named provision jetstream", err)
	}
	if !strings.Contains(logged.String(), "provision jetstream failed, retrying") {
		t.Fatalf("the failure was not logged: %s", logged.String())
	}
}
