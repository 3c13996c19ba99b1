package pgdb_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/pgdb"
	"github.com/anivault/anivault/pkg/testutil/pgtest"
)

func TestStatementTimeout(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	for _, tc := range []struct {
		name string
		cfg  pgdb.Config
		want string
	}{
		{"read timeout plus a second by default", pgdb.Config{DSN: dsn, ReadTimeout: 2 * time.Second}, "3s"},
		{"explicit", pgdb.Config{DSN: dsn, StatementTimeout: 1500 * time.Millisecond}, "1500ms"},
		{"the DSN wins", pgdb.Config{DSN: dsn + sep + "statement_timeout=1234", StatementTimeout: time.Second}, "1234ms"},
		{"negative keeps the server's", pgdb.Config{DSN: dsn, StatementTimeout: -1}, "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, err := pgdb.Open(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var got string
			if err := db.QueryRowContext(ctx, "SHOW statement_timeout").Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("statement_timeout %q, want %q", got, tc.want)
			}
		})
	}
	// A statement that outlives it is stopped by the server, not left running.
	db, err := pgdb.Open(pgdb.Config{DSN: dsn, ReadTimeout: 5 * time.Second, StatementTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = db.ExecContext(ctx, "SELECT pg_sleep(3)")
	if err == nil || !strings.Contains(err.Error(), "statement timeout") {
		t.Fatalf("pg_sleep(3) under a 200ms statement_timeout: %v", err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the client gave up instead of the server: %v", err)
	}
}

// A malformed DATABASE_URL is an error naming the problem, never a panic,
// and the password never shows.
func TestOpenBadDSN(t *testing.T) {
	for _, dsn := range []string{
		"postgres://u:s3cret@[::1:5432/db",
		"postgres://u:s3cret@host:notaport/db",
		"postgres://u:s3cret@host/db?sslmode=bogus",
	} {
		db, err := pgdb.Open(pgdb.Config{DSN: dsn})
		if err == nil || db != nil {
			t.Errorf("Open(%q) = %v, %v; want an error", dsn, db, err)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Open(%q): the error shows the password: %v", dsn, err)
		}
	}
}
