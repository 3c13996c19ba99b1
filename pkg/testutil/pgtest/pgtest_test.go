//go:build linux

package pgtest

import (
	"context"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

var validName = regexp.MustCompile(`^t_[a-z0-9_]+_[0-9a-f]{8}$`)

func TestDatabaseName(t *testing.T) {
	a := DatabaseName("TestFoo/sub case-1")
	b := DatabaseName("TestFoo/sub case-1")
	if a == b {
		t.Fatalf("names not unique: %s", a)
	}
	if !strings.HasPrefix(a, "t_testfoo_sub_case_1_") || !validName.MatchString(a) {
		t.Fatalf("bad name %q", a)
	}
	long := DatabaseName(strings.Repeat("VeryLongTestName/", 20))
	if len(long) > 63 || !validName.MatchString(long) {
		t.Fatalf("bad long name %q (len %d)", long, len(long))
	}
}

// dbName extracts the database name from a DSN.
func dbName(t *testing.T, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("parse dsn %q: %v", dsn, err)
	}
	return strings.TrimPrefix(u.Path, "/")
}

// checkFresh verifies the DSN opens an empty database that can be written.
func checkFresh(t *testing.T, dsn string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	db := openDB(dsn)
	defer db.Close()
	var current string
	if err := db.QueryRowContext(ctx, "SELECT current_database()").Scan(&current); err != nil {
		t.Fatalf("current_database: %v", err)
	}
	if current != dbName(t, dsn) {
		t.Fatalf("connected to %q, want %q", current, dbName(t, dsn))
	}
	var tables int
	if err := db.QueryRowContext(ctx,
		"SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'").Scan(&tables); err != nil {
		t.Fatalf("count tables: %v", err)
	}
	if tables != 0 {
		t.Fatalf("fresh database has %d tables", tables)
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE x (id int)"); err != nil {
		t.Fatalf("create table: %v", err)
	}
}

// reachable reports whether the database behind dsn accepts SELECT 1.
func reachable(dsn string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	db := openDB(dsn)
	defer db.Close()
	var one int
	return db.QueryRowContext(ctx, "SELECT 1").Scan(&one) == nil
}

func TestNewDatabaseAuto(t *testing.T) {
	mode := Mode(os.Getenv(EnvVar))
	wantSystem := mode != ModePrivate && systemAvailable(t.Context())
	var dsn1, dsn2 string
	t.Run("fresh", func(t *testing.T) {
		dsn1 = NewDatabase(t)
		dsn2 = NewDatabase(t)
		if dsn1 == dsn2 {
			t.Fatalf("two calls returned the same DSN %s", dsn1)
		}
		if got := strings.Contains(dsn1, "127.0.0.1:5432/"); got != wantSystem {
			t.Fatalf("dsn %s: system server used = %v, want %v", dsn1, got, wantSystem)
		}
		checkFresh(t, dsn1)
		checkFresh(t, dsn2) // isolated: dsn1's table is not visible here
	})
	// Cleanup of the subtest dropped the databases (or stopped the instances).
	for _, dsn := range []string{dsn1, dsn2} {
		if reachable(dsn) {
			t.Fatalf("database %s still reachable after cleanup", dsn)
		}
	}
	if wantSystem {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		admin := openDB(SystemDSN)
		defer admin.Close()
		var n int
		if err := admin.QueryRowContext(ctx, "SELECT count(*) FROM pg_database WHERE datname IN ($1, $2)",
			dbName(t, dsn1), dbName(t, dsn2)).Scan(&n); err != nil {
			t.Fatalf("query pg_database: %v", err)
		}
		if n != 0 {
			t.Fatalf("%d test databases left on the system server", n)
		}
	}
}

func TestNewDatabasePrivate(t *testing.T) {
	var dsn string
	t.Run("fresh", func(t *testing.T) {
		dsn = NewDatabaseWith(t, Options{Mode: ModePrivate})
		if strings.Contains(dsn, "127.0.0.1:5432/") {
			t.Fatalf("private mode used the system server: %s", dsn)
		}
		checkFresh(t, dsn)
	})
	if reachable(dsn) {
		t.Fatalf("private instance %s still reachable after cleanup", dsn)
	}
}

func TestNewInstance(t *testing.T) {
	var dataDir string
	t.Run("instance", func(t *testing.T) {
		inst := NewInstance(t)
		dataDir = inst.DataDir()
		if !inst.Running() {
			t.Fatal("instance not running")
		}
		if err := inst.Kill(); err != nil {
			t.Fatalf("kill: %v", err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		defer cancel()
		if err := inst.Start(ctx); err != nil {
			t.Fatalf("restart: %v", err)
		}
		if !reachable(inst.DSN()) {
			t.Fatal("instance unreachable after restart")
		}
	})
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Fatalf("data dir %s after cleanup: %v, want not exist", dataDir, err)
	}
}
