package resilience

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/sony/gobreaker/v2"
)

// ErrUnavailable is wrapped by errors returned when a Breaker rejects a call
// without running it (open, or half-open with its probe budget used), so
// callers can fail fast with errors.Is(err, ErrUnavailable) instead of
// matching gobreaker's errors.
var ErrUnavailable = errors.New("resilience: dependency unavailable")

// transientErrnos are socket-level failures that a new connection or a later
// attempt can cure.
var transientErrnos = [...]syscall.Errno{
	syscall.ECONNREFUSED,
	syscall.ECONNRESET,
	syscall.EPIPE,
	syscall.ECONNABORTED,
	syscall.EHOSTUNREACH,
	syscall.ENETUNREACH,
}

// fielder matches github.com/uptrace/bun/driver/pgdriver.Error (whose
// fields cannot be set from outside that package) and any other PostgreSQL
// error exposing protocol fields; field 'C' is the SQLSTATE.
type fielder interface {
	error
	Field(k byte) string
}

// sqlStater matches errors that expose the SQLSTATE directly, as pgx's
// *pgconn.PgError does.
type sqlStater interface {
	error
	SQLState() string
}

// IsTransient reports whether err is worth retrying because the same call
// may succeed later: timeouts, refused/reset/broken connections, bad pooled
// connections and PostgreSQL connection, shutdown, overload, serialization
// and deadlock errors. It returns false for nil, for context.Canceled (the
// caller gave up; retrying would be wrong) and for everything else,
// including constraint violations, data and syntax errors: those fail the
// same way every time.
//
// If err carries a PostgreSQL SQLSTATE, the SQLSTATE alone decides.
func IsTransient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if code, ok := sqlState(err); ok {
		return transientSQLState(code)
	}
	if errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, driver.ErrBadConn) ||
		errors.Is(err, sql.ErrConnDone) {
		return true
	}
	for _, errno := range transientErrnos {
		if errors.Is(err, errno) {
			return true
		}
	}
	if _, ok := errors.AsType[*net.OpError](err); ok {
		return true
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return true
	}
	return false
}

// IsUnavailable reports whether err means the dependency is (probably)
// unavailable right now: a transient error or a Breaker rejection. Callers
// use it to choose "try again later" responses (HTTP 503, delayed NAK) over
// "your request is wrong".
func IsUnavailable(err error) bool {
	return IsTransient(err) ||
		errors.Is(err, ErrUnavailable) ||
		errors.Is(err, gobreaker.ErrOpenState) ||
		errors.Is(err, gobreaker.ErrTooManyRequests)
}

// sqlState extracts a non-empty SQLSTATE from the first PostgreSQL error in
// err's chain.
func sqlState(err error) (string, bool) {
	if fe, ok := errors.AsType[fielder](err); ok {
		if code := fe.Field('C'); code != "" {
			return code, true
		}
	}
	if se, ok := errors.AsType[sqlStater](err); ok {
		if code := se.SQLState(); code != "" {
			return code, true
		}
	}
	return "", false
}

// transientSQLState reports whether a SQLSTATE describes a condition that a
// retry (usually on a new connection, a new transaction or another server)
// can cure: what a failover, a restart, an overloaded or a full server
// answers, as opposed to what is wrong with the statement.
func transientSQLState(code string) bool {
	if len(code) != 5 {
		return false
	}
	switch code[:2] {
	case "08", // connection_exception
		"53", // insufficient_resources: disk_full, out_of_memory, too_many_connections, configuration_limit_exceeded
		"58": // system_error: io_error, undefined_file (a failing disk)
		return true
	}
	switch code {
	case "25006", // read_only_sql_transaction: a demoted primary or a hot standby
		"57P01", // admin_shutdown
		"57P02", // crash_shutdown
		"57P03", // cannot_connect_now: starting up, shutting down, in recovery
		"57P05", // idle_session_timeout
		"55006", // object_in_use
		"55P03", // lock_not_available
		"40001", // serialization_failure
		"40P01": // deadlock_detected
		return true
	}
	return false
}
