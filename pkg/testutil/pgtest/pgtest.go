//go:build linux

// Package pgtest gives each test its own empty PostgreSQL database.
//
// NewDatabase prefers the local server at 127.0.0.1:5432 (user postgres,
// trust authentication) and creates a uniquely named database there, dropped
// when the test ends. When that server does not answer within two seconds,
// it starts a private pgembed instance for the test instead, so tests also
// run on machines without a system PostgreSQL.
//
// The environment variable ANIVAULT_TEST_PG selects the path:
//
//	""/"auto"  use 127.0.0.1:5432 if it answers, else a private instance
//	"private"  always start a private instance (exercises the path taken
//	           when the system services are stopped)
//	"system"   always use 127.0.0.1:5432 and fail the test if it is down
package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/anivault/anivault/pkg/pgembed"
)

// EnvVar names the environment variable that selects the server; see the
// package documentation.
const EnvVar = "ANIVAULT_TEST_PG"

// SystemDSN is the admin DSN of the system PostgreSQL server.
const SystemDSN = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

const (
	probeTimeout   = 2 * time.Second
	setupTimeout   = 90 * time.Second
	cleanupTimeout = 30 * time.Second
	maxIdentLen    = 63
)

// Mode selects where NewDatabaseWith creates the database.
type Mode string

// Modes accepted by Options.Mode and the ANIVAULT_TEST_PG variable.
const (
	ModeAuto    Mode = "auto"
	ModePrivate Mode = "private"
	ModeSystem  Mode = "system"
)

// Options tunes NewDatabaseWith.
type Options struct {
	// Mode selects the server; "" reads ANIVAULT_TEST_PG (default auto).
	Mode Mode
}

// NewDatabase returns the DSN of a fresh, empty database for this test; see
// the package documentation for how the server is chosen.
func NewDatabase(t testing.TB) string {
	t.Helper()
	return NewDatabaseWith(t, Options{})
}

// NewDatabaseWith is NewDatabase with explicit options.
func NewDatabaseWith(t testing.TB, opts Options) string {
	t.Helper()
	mode := opts.Mode
	if mode == "" {
		mode = Mode(os.Getenv(EnvVar))
	}
	switch mode {
	case "", ModeAuto:
		if systemAvailable(context.Background()) {
			return systemDatabase(t)
		}
		return privateDatabase(t)
	case ModePrivate:
		return privateDatabase(t)
	case ModeSystem:
		if !systemAvailable(context.Background()) {
			t.Fatalf("pgtest: %s=system but no server answers at 127.0.0.1:5432", EnvVar)
		}
		return systemDatabase(t)
	default:
		t.Fatalf("pgtest: unknown %s mode %q (want auto, private or system)", EnvVar, mode)
		return ""
	}
}

// NewInstance starts a private PostgreSQL instance that the test may stop,
// kill and restart. It is closed (and its files removed) in t.Cleanup.
func NewInstance(t testing.TB) *pgembed.Instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	inst, err := pgembed.Start(ctx, pgembed.Options{})
	if err != nil {
		t.Fatalf("pgtest: start private postgres: %v", err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer ccancel()
		if err := inst.Close(cctx); err != nil {
			t.Errorf("pgtest: close private postgres: %v", err)
		}
	})
	return inst
}

// systemAvailable reports whether the system server answers SELECT 1 within
// probeTimeout.
func systemAvailable(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	db := openDB(SystemDSN)
	defer db.Close()
	var one int
	return db.QueryRowContext(ctx, "SELECT 1").Scan(&one) == nil && one == 1
}

func openDB(dsn string) *sql.DB {
	return sql.OpenDB(pgdriver.NewConnector(
		pgdriver.WithDSN(dsn),
		pgdriver.WithDialTimeout(probeTimeout),
	))
}

func systemDatabase(t testing.TB) string {
	t.Helper()
	name := DatabaseName(t.Name())
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	admin := openDB(SystemDSN)
	defer admin.Close()
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+pgembed.QuoteIdent(name)); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer ccancel()
		db := openDB(SystemDSN)
		defer db.Close()
		if _, err := db.ExecContext(cctx, "DROP DATABASE IF EXISTS "+pgembed.QuoteIdent(name)+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	return "postgres://postgres@127.0.0.1:5432/" + name + "?sslmode=disable"
}

func privateDatabase(t testing.TB) string {
	t.Helper()
	inst := NewInstance(t)
	name := DatabaseName(t.Name())
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if err := inst.CreateDatabase(ctx, name); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return inst.DSNFor(name)
}

// DatabaseName builds a unique, valid database name from a test name:
// "t_" + the lowercased test name with every character other than [a-z0-9]
// replaced by "_", truncated, + "_" + 8 random hex digits; at most 63 bytes.
func DatabaseName(testName string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(testName) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:]) // crypto/rand.Read never fails on Linux
	suffix := "_" + hex.EncodeToString(rnd[:])
	body := b.String()
	if room := maxIdentLen - len("t_") - len(suffix); len(body) > room {
		body = body[:room]
	}
	return fmt.Sprintf("t_%s%s", body, suffix)
}
