package resilience_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"
	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/anivault/anivault/pkg/resilience"
)

// fakePGError mimics pgdriver.Error for SQLSTATEs we cannot easily get a
// real server to send.
type fakePGError struct{ code string }

func (e fakePGError) Error() string       { return "pg error SQLSTATE=" + e.code }
func (e fakePGError) Field(k byte) string { return map[byte]string{'C': e.code, 'S': "ERROR"}[k] }

// pgxStyleError mimics pgconn.PgError's SQLState method.
type pgxStyleError struct{ code string }

func (e *pgxStyleError) Error() string    { return "pgx error " + e.code }
func (e *pgxStyleError) SQLState() string { return e.code }

// timeoutError is a net.Error that reports a timeout.
type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// notTimeoutNetError is a net.Error that is not a timeout.
type notTimeoutNetError struct{}

func (notTimeoutNetError) Error() string   { return "permanent" }
func (notTimeoutNetError) Timeout() bool   { return false }
func (notTimeoutNetError) Temporary() bool { return false }

// realPGError makes pgdriver produce a genuine pgdriver.Error by answering
// its startup message with an ErrorResponse over an in-memory connection;
// pgdriver.Error's fields cannot be set from outside its package.
func realPGError(t *testing.T, severity, code string) error {
	t.Helper()
	client, server := net.Pipe()
	done := make(chan error, 1)
	go func() {
		defer server.Close()
		var hdr [4]byte
		if _, err := io.ReadFull(server, hdr[:]); err != nil {
			done <- fmt.Errorf("read startup length: %w", err)
			return
		}
		body := make([]byte, binary.BigEndian.Uint32(hdr[:])-4)
		if _, err := io.ReadFull(server, body); err != nil {
			done <- fmt.Errorf("read startup body: %w", err)
			return
		}
		var fields []byte
		for _, f := range []struct {
			k byte
			v string
		}{{'S', severity}, {'V', severity}, {'C', code}, {'M', "fake server says " + code}} {
			fields = append(fields, f.k)
			fields = append(fields, f.v...)
			fields = append(fields, 0)
		}
		fields = append(fields, 0)
		msg := []byte{'E', 0, 0, 0, 0}
		binary.BigEndian.PutUint32(msg[1:], uint32(len(fields)+4))
		msg = append(msg, fields...)
		_, err := server.Write(msg)
		done <- err
	}()
	conn := pgdriver.NewConnector(
		pgdriver.WithInsecure(true),
		pgdriver.WithUser("u"),
		pgdriver.WithDatabase("d"),
		pgdriver.WithTimeout(5*time.Second),
	)
	conn.Config().Dialer = func(context.Context, string, string) (net.Conn, error) { return client, nil }
	c, err := conn.Connect(t.Context())
	if err == nil {
		_ = c.Close()
		t.Fatal("Connect succeeded against a server that only sends errors")
	}
	if serr := <-done; serr != nil {
		t.Fatalf("fake postgres server: %v", serr)
	}
	var pgErr pgdriver.Error
	if !errors.As(err, &pgErr) {
		t.Fatalf("Connect error %v (%T) is not a pgdriver.Error", err, err)
	}
	if got := pgErr.Field('C'); got != code {
		t.Fatalf("SQLSTATE = %q, want %q", got, code)
	}
	return err
}

func refusedDialError(t *testing.T) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatalf("close listener: %v", err)
	}
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err == nil {
		_ = conn.Close()
		t.Fatalf("dial to closed port %s succeeded", addr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial error %v is not ECONNREFUSED", err)
	}
	return err
}

func pipeDeadlineError(t *testing.T) error {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if err := a.SetReadDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatalf("set deadline: %v", err)
	}
	_, err := a.Read(make([]byte, 1))
	if err == nil {
		t.Fatal("read past deadline succeeded")
	}
	return err
}

func TestIsTransient(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{name: "nil", err: nil, want: false},
		{name: "plain error", err: errors.New("boom"), want: false},
		{name: "context canceled", err: context.Canceled, want: false},
		{name: "wrapped context canceled", err: fmt.Errorf("query: %w", context.Canceled), want: false},
		{name: "canceled joined with EOF", err: errors.Join(context.Canceled, io.EOF), want: false},
		{name: "deadline exceeded", err: context.DeadlineExceeded, want: true},
		{name: "wrapped deadline exceeded", err: fmt.Errorf("save: %w", context.DeadlineExceeded), want: true},
		{name: "os deadline exceeded", err: os.ErrDeadlineExceeded, want: true},
		{name: "real pipe read past deadline", err: pipeDeadlineError(t), want: true},
		{name: "net.Error timeout", err: fmt.Errorf("x: %w", timeoutError{}), want: true},
		{name: "net.Error not timeout", err: notTimeoutNetError{}, want: false},
		{name: "real refused dial", err: refusedDialError(t), want: true},
		{name: "net.OpError read", err: &net.OpError{Op: "read", Net: "tcp", Err: errors.New("weird")}, want: true},
		{name: "net.OpError wrapped", err: fmt.Errorf("nats: %w", &net.OpError{Op: "write", Net: "tcp", Err: syscall.EPIPE}), want: true},
		{name: "ECONNREFUSED", err: syscall.ECONNREFUSED, want: true},
		{name: "ECONNRESET in SyscallError", err: os.NewSyscallError("read", syscall.ECONNRESET), want: true},
		{name: "EPIPE", err: fmt.Errorf("write: %w", syscall.EPIPE), want: true},
		{name: "ECONNABORTED", err: syscall.ECONNABORTED, want: true},
		{name: "EHOSTUNREACH", err: syscall.EHOSTUNREACH, want: true},
		{name: "ENETUNREACH", err: syscall.ENETUNREACH, want: true},
		{name: "other errno", err: syscall.ENOENT, want: false},
		{name: "EOF", err: io.EOF, want: true},
		{name: "unexpected EOF", err: fmt.Errorf("read row: %w", io.ErrUnexpectedEOF), want: true},
		{name: "driver bad conn", err: driver.ErrBadConn, want: true},
		{name: "sql conn done", err: fmt.Errorf("tx: %w", sql.ErrConnDone), want: true},
		{name: "sql no rows", err: sql.ErrNoRows, want: false},
		{name: "real pg admin_shutdown", err: realPGError(t, "FATAL", "57P01"), want: true},
		{name: "real pg too_many_connections wrapped", err: fmt.Errorf("connect: %w", realPGError(t, "FATAL", "53300")), want: true},
		{name: "real pg read_only_sql_transaction (demoted primary)", err: realPGError(t, "ERROR", "25006"), want: true},
		{name: "real pg disk_full", err: realPGError(t, "ERROR", "53100"), want: true},
		{name: "real pg io_error", err: realPGError(t, "ERROR", "58030"), want: true},
		{name: "real pg crash_shutdown", err: realPGError(t, "FATAL", "57P02"), want: true},
		{name: "real pg cannot_connect_now", err: realPGError(t, "FATAL", "57P03"), want: true},
		{name: "real pg not_null_violation", err: realPGError(t, "ERROR", "23502"), want: false},
		{name: "real pg invalid_text_representation", err: realPGError(t, "ERROR", "22P02"), want: false},
		{name: "real pg insufficient_privilege", err: realPGError(t, "ERROR", "42501"), want: false},
		{name: "real pg unique_violation", err: realPGError(t, "ERROR", "23505"), want: false},
		{name: "real pg syntax error", err: realPGError(t, "ERROR", "42601"), want: false},
		{name: "zero pgdriver.Error", err: pgdriver.Error{}, want: false},
		{name: "pg 08000 connection_exception", err: fakePGError{"08000"}, want: true},
		{name: "pg 08006 connection_failure", err: fakePGError{"08006"}, want: true},
		{name: "pg 08P01 protocol_violation", err: fmt.Errorf("x: %w", fakePGError{"08P01"}), want: true},
		{name: "pg 57P02 crash_shutdown", err: fakePGError{"57P02"}, want: true},
		{name: "pg 57P03 cannot_connect_now", err: fakePGError{"57P03"}, want: true},
		{name: "pg 40001 serialization_failure", err: fakePGError{"40001"}, want: true},
		{name: "pg 40P01 deadlock_detected", err: fakePGError{"40P01"}, want: true},
		{name: "pg 57014 query_canceled", err: fakePGError{"57014"}, want: false},
		{name: "pg 23503 foreign_key_violation", err: fakePGError{"23503"}, want: false},
		{name: "pg 22001 string_data_right_truncation", err: fakePGError{"22001"}, want: false},
		{name: "pg 22P02 invalid_text_representation", err: fakePGError{"22P02"}, want: false},
		{name: "pg 42P01 undefined_table", err: fakePGError{"42P01"}, want: false},
		{name: "pg SQLSTATE decides over EOF", err: errors.Join(fakePGError{"23505"}, io.EOF), want: false},
		{name: "pgx-style 40001", err: &pgxStyleError{"40001"}, want: true},
		{name: "pgx-style 23505", err: &pgxStyleError{"23505"}, want: false},
		{name: "breaker open is not transient", err: gobreaker.ErrOpenState, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := resilience.IsTransient(tt.err); got != tt.want {
				t.Fatalf("IsTransient(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestIsUnavailable(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{name: "nil", err: nil, want: false},
		{name: "transient", err: io.EOF, want: true},
		{name: "ErrUnavailable wrapped", err: fmt.Errorf("save: %w", resilience.ErrUnavailable), want: true},
		{name: "gobreaker open", err: gobreaker.ErrOpenState, want: true},
		{name: "gobreaker too many", err: gobreaker.ErrTooManyRequests, want: true},
		{name: "constraint violation", err: fakePGError{"23505"}, want: false},
		{name: "canceled", err: context.Canceled, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := resilience.IsUnavailable(tt.err); got != tt.want {
				t.Fatalf("IsUnavailable(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}
