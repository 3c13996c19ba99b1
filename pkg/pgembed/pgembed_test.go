//go:build linux

package pgembed_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/anivault/anivault/pkg/pgembed"
)

func openDB(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db := sql.OpenDB(pgdriver.NewConnector(
		pgdriver.WithDSN(dsn),
		pgdriver.WithDialTimeout(2*time.Second),
	))
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// countRows reads the row count of the probe table in a fresh connection.
func countRows(ctx context.Context, t *testing.T, dsn string) int {
	t.Helper()
	db := openDB(t, dsn)
	defer db.Close()
	var n int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM probe WHERE note = 'committed'").Scan(&n); err != nil {
		t.Fatalf("count rows: %v", err)
	}
	return n
}

func TestLifecycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	inst, err := pgembed.Start(ctx, pgembed.Options{})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	baseDir := filepath.Dir(inst.DataDir())
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		if err := inst.Close(cctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	if !inst.Running() {
		t.Fatal("Running() = false after Start")
	}
	if inst.Port() == 0 {
		t.Fatal("Port() = 0")
	}
	port := inst.Port()

	if err := inst.CreateDatabase(ctx, "appdb"); err != nil {
		t.Fatalf("create database: %v", err)
	}
	dsn := inst.DSNFor("appdb")
	db := openDB(t, dsn)
	if _, err := db.ExecContext(ctx, "CREATE TABLE probe (id serial PRIMARY KEY, note text NOT NULL)"); err != nil {
		t.Fatalf("create table: %v", err)
	}
	if _, err := db.ExecContext(ctx, "INSERT INTO probe (note) VALUES ('committed')"); err != nil {
		t.Fatalf("insert: %v", err)
	}
	// Leave an open uncommitted transaction and an idle backend so that Kill
	// has children to deal with.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO probe (note) VALUES ('uncommitted')"); err != nil {
		t.Fatalf("insert uncommitted: %v", err)
	}

	// Crash.
	if err := inst.Kill(); err != nil {
		t.Fatalf("kill: %v", err)
	}
	if inst.Running() {
		t.Fatal("Running() = true after Kill")
	}
	_ = tx.Rollback() // the connection is gone; the error is expected
	func() {
		pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
		defer pcancel()
		probe := openDB(t, inst.DSN())
		if err := probe.PingContext(pctx); err == nil {
			t.Fatal("ping succeeded after Kill")
		}
	}()
	if _, err := os.Stat(filepath.Join(inst.DataDir(), "postmaster.pid")); err != nil {
		t.Fatalf("a crash should leave postmaster.pid behind: %v", err)
	}

	// Crash recovery.
	if err := inst.Start(ctx); err != nil {
		t.Fatalf("start after kill: %v", err)
	}
	if inst.Port() != port {
		t.Fatalf("port changed: %d -> %d", port, inst.Port())
	}
	if n := countRows(ctx, t, dsn); n != 1 {
		t.Fatalf("after kill+start: %d committed rows, want 1", n)
	}
	var total int
	if err := openDB(t, dsn).QueryRowContext(ctx, "SELECT count(*) FROM probe").Scan(&total); err != nil {
		t.Fatalf("count all: %v", err)
	}
	if total != 1 {
		t.Fatalf("after crash recovery: %d rows in total, want 1 (uncommitted row must be gone)", total)
	}

	// Fast stop.
	if err := inst.Stop(ctx, "fast"); err != nil {
		t.Fatalf("stop fast: %v", err)
	}
	if inst.Running() {
		t.Fatal("Running() = true after Stop fast")
	}
	if _, err := os.Stat(filepath.Join(inst.DataDir(), "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("postmaster.pid after clean stop: %v, want not exist", err)
	}
	if err := inst.Start(ctx); err != nil {
		t.Fatalf("start after stop fast: %v", err)
	}
	if n := countRows(ctx, t, dsn); n != 1 {
		t.Fatalf("after stop fast+start: %d rows, want 1", n)
	}

	// Immediate stop.
	if err := inst.Stop(ctx, "immediate"); err != nil {
		t.Fatalf("stop immediate: %v", err)
	}
	if inst.Running() {
		t.Fatal("Running() = true after Stop immediate")
	}
	if err := inst.Start(ctx); err != nil {
		t.Fatalf("start after stop immediate: %v", err)
	}
	if n := countRows(ctx, t, dsn); n != 1 {
		t.Fatalf("after stop immediate+start: %d rows, want 1", n)
	}

	if err := inst.Stop(ctx, "bogus"); err == nil {
		t.Fatal("Stop with unknown mode succeeded")
	}

	// Close removes everything.
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	defer ccancel()
	if err := inst.Close(cctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	if _, err := os.Stat(baseDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("base dir after Close: %v, want not exist", err)
	}
	if inst.Running() {
		t.Fatal("Running() = true after Close")
	}
}

func TestKillWhenStopped(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	// t.TempDir() is not reachable by the postgres user under root.
	base, err := os.MkdirTemp("", "pgembed-caller-")
	if err != nil {
		t.Fatalf("mkdir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	inst, err := pgembed.Start(ctx, pgembed.Options{BaseDir: base})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	if got := filepath.Dir(inst.DataDir()); got != base {
		t.Fatalf("data dir %s not under base %s", inst.DataDir(), base)
	}
	if err := inst.Stop(ctx, "fast"); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if err := inst.Kill(); !errors.Is(err, pgembed.ErrNotRunning) {
		t.Fatalf("Kill on stopped instance: %v, want ErrNotRunning", err)
	}
	if err := inst.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	// A caller-provided base dir is kept, its contents are removed.
	if _, err := os.Stat(base); err != nil {
		t.Fatalf("caller base dir removed: %v", err)
	}
	if _, err := os.Stat(inst.DataDir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("data dir after Close: %v, want not exist", err)
	}
}

func TestNoBinaries(t *testing.T) {
	_, err := pgembed.Start(t.Context(), pgembed.Options{BinDir: t.TempDir()})
	if !errors.Is(err, pgembed.ErrNoBinaries) {
		t.Fatalf("Start with empty BinDir: %v, want ErrNoBinaries", err)
	}
	if err == nil || !strings.Contains(err.Error(), `"postgresql"`) {
		t.Fatalf("error should name the Debian package: %v", err)
	}
}

// The TLS options are checked before anything is created: a certificate
// needs its key, and a client CA needs a server certificate.
func TestTLSOptionsChecked(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	pemData := []byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
	for _, tc := range []struct {
		name string
		opts pgembed.Options
		want string
	}{
		{"certificate without key", pgembed.Options{ServerCertPEM: pemData}, "go together"},
		{"key without certificate", pgembed.Options{ServerKeyPEM: pemData}, "go together"},
		{"client CA without server certificate", pgembed.Options{ClientCAPEM: pemData}, "needs ServerCertPEM"},
	} {
		base := t.TempDir()
		tc.opts.BaseDir = base
		inst, err := pgembed.Start(ctx, tc.opts)
		if err == nil {
			_ = inst.Close(ctx)
			t.Fatalf("%s: Start succeeded", tc.name)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%s: %v, want %q", tc.name, err, tc.want)
		}
		if entries, _ := os.ReadDir(base); len(entries) != 0 {
			t.Fatalf("%s: Start left %d entries in the base directory", tc.name, len(entries))
		}
	}
}
