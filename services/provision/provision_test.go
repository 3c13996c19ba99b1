package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/anivault/anivault/pkg/testutil/natstest"
	"github.com/anivault/anivault/pkg/topology"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// provision makes everything the services check for with NATS_PROVISION=false,
// with the configured limits, under a subject prefix too; a second run
// changes nothing.
func TestProvisionMakesEverythingTheServicesNeed(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, prefix := range []string{"", "tenant1"} {
		cfg, err := loadConfig(envconfig.FromMap(map[string]string{
			"NATS_URL": srv.URL(), "SUBJECT_PREFIX": prefix, "BUFFER_MAX_MSGS": "5000", "BUFFER_MAX_BYTES": "67108864",
		}))
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(srv.URL())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		subj := events.NewSubjects(prefix)
		check, _ := topology.New(js, subj)
		check.CheckOnly = true
		if err := check.EnsureAll(ctx, cfg.Buffer); !errors.Is(err, topology.ErrNotProvisioned) {
			t.Fatalf("prefix %q: a check before provision: %v, want ErrNotProvisioned", prefix, err)
		}
		if err := run(ctx, cfg, discard()); err != nil {
			t.Fatalf("prefix %q: provision: %v", prefix, err)
		}
		if err := check.EnsureAll(ctx, cfg.Buffer); err != nil {
			t.Fatalf("prefix %q: a check after provision: %v", prefix, err)
		}
		st, err := js.Stream(ctx, subj.Name(events.StreamBuffer))
		if err != nil {
			t.Fatal(err)
		}
		if c := st.CachedInfo().Config; c.MaxMsgs != 5000 || c.MaxBytes != 64<<20 {
			t.Fatalf("prefix %q: buffer limits %d msgs %d bytes, want BUFFER_MAX_MSGS and BUFFER_MAX_BYTES", prefix, c.MaxMsgs, c.MaxBytes)
		}
		if _, err := js.KeyValue(ctx, subj.Name(events.BucketName)); err != nil {
			t.Fatalf("prefix %q: mode bucket: %v", prefix, err)
		}

		// Idempotent: a second run sends no create or update.
		sub, err := nc.SubscribeSync("$JS.API.>")
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := run(ctx, cfg, discard()); err != nil {
			t.Fatalf("prefix %q: second provision: %v", prefix, err)
		}
		// Every request of the run reached this subscription before the
		// server answered it, so it is queued here once Flush returns.
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		writes, seen := 0, 0
		for {
			m, err := sub.NextMsg(20 * time.Millisecond)
			if err != nil {
				break
			}
			seen++
			if strings.Contains(m.Subject, ".CREATE.") || strings.Contains(m.Subject, ".UPDATE.") || strings.Contains(m.Subject, ".DELETE.") {
				writes++
			}
		}
		_ = sub.Unsubscribe()
		if seen == 0 {
			t.Fatalf("prefix %q: the second provision sent no JetStream request at all: the check saw nothing", prefix)
		}
		if writes != 0 {
			t.Fatalf("prefix %q: a second provision sent %d create, update or delete requests", prefix, writes)
		}
	}
}

// A bad setting stops it before it connects, naming the variable.
func TestProvisionRefusesBadSettings(t *testing.T) {
	t.Parallel()
	_, err := loadConfig(envconfig.FromMap(map[string]string{"BUFFER_REPLICAS": "9", "NATS_INBOX_PREFIX": "_INBOX.>"}))
	if err == nil || !strings.Contains(err.Error(), "BUFFER_REPLICAS") || !strings.Contains(err.Error(), "NATS_INBOX_PREFIX") {
		t.Fatalf("bad BUFFER_REPLICAS and NATS_INBOX_PREFIX: %v, want errors naming both", err)
	}
}

// NATS that never answers: provision gives up at PROVISION_TIMEOUT.
func TestProvisionGivesUpAtItsTimeout(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(envconfig.FromMap(map[string]string{"NATS_URL": "nats://127.0.0.1:1", "PROVISION_TIMEOUT": "1s"}))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := run(context.Background(), cfg, discard()); err == nil {
		t.Fatal("provision succeeded without NATS")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("provision took %v to give up, want about PROVISION_TIMEOUT=1s", d)
	}
}
