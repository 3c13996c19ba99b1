// Package pgdb opens PostgreSQL through bun and pgdriver with pool limits and
// short network deadlines, and runs idempotent migrations under an advisory
// lock so that several processes may start at once.
package pgdb

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/driver/pgdriver"
)

// Config configures a pool.
type Config struct {
	// DSN is a postgres:// URL.
	DSN string
	// DialTimeout bounds connecting (pgdriver's default of 5 s is too long for probes).
	DialTimeout time.Duration
	// ReadTimeout and WriteTimeout bound each network read and write.
	ReadTimeout, WriteTimeout time.Duration
	// MaxOpenConns and MaxIdleConns limit the pool.
	MaxOpenConns, MaxIdleConns int
	// ConnMaxLifetime recycles connections, so a failover is followed promptly.
	ConnMaxLifetime time.Duration
	// AppName is reported to PostgreSQL as application_name.
	AppName string
	// StatementTimeout is set as the connections' statement_timeout, so that a
	// statement the client gave up on (its read timeout or context expired)
	// stops in PostgreSQL too instead of running on and holding locks. Zero
	// means ReadTimeout plus one second (a statement cannot usefully run
	// longer than the client waits for it); negative leaves the server's
	// setting. A statement_timeout in the DSN wins.
	StatementTimeout time.Duration
}

// DefaultDSN is DATABASE_URL's default.
const DefaultDSN = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

func (c *Config) setDefaults() {
	if c.DialTimeout <= 0 {
		c.DialTimeout = 2 * time.Second
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = 5 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 5 * time.Second
	}
	if c.MaxOpenConns <= 0 {
		c.MaxOpenConns = 16
	}
	if c.MaxIdleConns <= 0 {
		c.MaxIdleConns = c.MaxOpenConns
	}
	if c.ConnMaxLifetime <= 0 {
		c.ConnMaxLifetime = 5 * time.Minute
	}
	if c.StatementTimeout == 0 {
		c.StatementTimeout = c.ReadTimeout + time.Second
	}
}

// withStatementTimeout adds statement_timeout to the connection parameters
// unless the DSN set it (pgdriver.WithConnParams would replace the DSN's).
func withStatementTimeout(d time.Duration) pgdriver.Option {
	return func(c *pgdriver.Config) {
		if d <= 0 {
			return
		}
		if c.ConnParams == nil {
			c.ConnParams = map[string]any{}
		}
		if _, ok := c.ConnParams["statement_timeout"]; !ok {
			c.ConnParams["statement_timeout"] = strconv.FormatInt(d.Milliseconds(), 10)
		}
	}
}

// dialSlotKey carries, in the context of one Connect, the network connection
// that pgdriver dialed for it.
type dialSlotKey struct{}

type dialSlot struct {
	mu   sync.Mutex
	conn net.Conn
}

// withTrackedDial dials like pgdriver's default dialer, records the
// connection in the Connect's dialSlot, and negotiates TLS as policy says
// (pgdriver's own TLS is turned off: see parseTLS). Unix sockets never use
// TLS, as in libpq.
func withTrackedDial(timeout time.Duration, policy *tlsPolicy) pgdriver.Option {
	return func(c *pgdriver.Config) {
		d := &net.Dialer{Timeout: timeout, KeepAlive: 5 * time.Minute}
		c.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			if slot, ok := ctx.Value(dialSlotKey{}).(*dialSlot); ok {
				slot.mu.Lock()
				slot.conn = conn
				slot.mu.Unlock()
			}
			if policy.config == nil || network == "unix" {
				return conn, nil
			}
			nc, err := policy.negotiate(ctx, conn, addr, timeout)
			if err != nil {
				_ = conn.Close() // the negotiation error is the one to report
				return nil, err
			}
			return nc, nil
		}
	}
}

// closingConnector closes the network connection of a failed Connect.
// pgdriver returns the error of a connection set-up that failed after the
// dial (the startup and authentication exchange, TLS, or a SET of a
// connection parameter timing out) without closing the socket: it stayed open
// until garbage collection, and PostgreSQL kept a backend for it. Under
// network latency every probe left one behind (found by the chaos runner;
// TestProberHoldsOneConnectionThroughFaults).
type closingConnector struct{ inner *pgdriver.Connector }

func (c closingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	slot := &dialSlot{}
	cn, err := c.inner.Connect(context.WithValue(ctx, dialSlotKey{}, slot))
	if err != nil {
		slot.mu.Lock()
		if slot.conn != nil {
			_ = slot.conn.Close()
		}
		slot.mu.Unlock()
	}
	return cn, err
}

func (c closingConnector) Driver() driver.Driver { return c.inner.Driver() }

// Open returns a bun.DB for cfg. It does not touch the network: a database
// that is down at start is reported by the first query, not here. It does
// read the TLS files the DSN names (sslrootcert, sslcert, sslkey), so that
// a missing or bad one, or an unknown sslmode, stops a service at start.
// Errors name DATABASE_URL (every service's DSN) with the password masked.
func Open(cfg Config) (_ *bun.DB, err error) {
	if cfg.DSN == "" {
		return nil, errors.New("open postgres: empty DSN")
	}
	// pgdriver panics on a DSN it cannot parse, with the DSN (password
	// included) in the message: check it first, and never let its text out.
	u, perr := url.Parse(cfg.DSN)
	if perr != nil {
		return nil, fmt.Errorf("open postgres: DATABASE_URL %s does not parse as a URL", maskDSN(cfg.DSN))
	}
	q := u.Query()
	policy, err := parseTLS(q)
	if err != nil {
		return nil, fmt.Errorf("open postgres: DATABASE_URL %s: %w", maskDSN(cfg.DSN), err)
	}
	// pgdriver would build its own TLS from the ssl parameters (and turns
	// TLS on, unverified, when they are absent): hand it the DSN without
	// them and TLS off; withTrackedDial negotiates TLS instead.
	u.RawQuery = q.Encode()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("open postgres: DATABASE_URL %s is not one pgdriver accepts (a bad port or parameter?)", maskDSN(cfg.DSN))
		}
	}()
	cfg.setDefaults()
	opts := []pgdriver.Option{
		pgdriver.WithDSN(u.String()),
		pgdriver.WithTLSConfig(nil),
		pgdriver.WithDialTimeout(cfg.DialTimeout),
		pgdriver.WithReadTimeout(cfg.ReadTimeout),
		pgdriver.WithWriteTimeout(cfg.WriteTimeout),
		withStatementTimeout(cfg.StatementTimeout),
	}
	if cfg.AppName != "" {
		opts = append(opts, pgdriver.WithApplicationName(cfg.AppName))
	}
	opts = append(opts, withTrackedDial(cfg.DialTimeout, &policy))
	sqldb := sql.OpenDB(closingConnector{pgdriver.NewConnector(opts...)})
	sqldb.SetMaxOpenConns(cfg.MaxOpenConns)
	sqldb.SetMaxIdleConns(cfg.MaxIdleConns)
	sqldb.SetConnMaxLifetime(cfg.ConnMaxLifetime)
	sqldb.SetConnMaxIdleTime(time.Minute)
	return bun.NewDB(sqldb, pgdialect.New()), nil
}

// ErrReadOnly is returned by PingWritable for a server that answers but
// refuses writes: a hot standby, or a primary a failover manager demoted
// (default_transaction_read_only). SELECT 1 succeeds there.
var ErrReadOnly = errors.New("database does not take writes")

// PingWritable checks, with its own deadline, that the server answers and
// would take a write: it is not in recovery and new transactions are not
// read-only.
func PingWritable(ctx context.Context, db bun.IDB, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var (
		inRecovery bool
		readOnly   string
	)
	if err := db.NewRaw("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')").Scan(ctx, &inRecovery, &readOnly); err != nil {
		return fmt.Errorf("health probe: %w", err)
	}
	switch {
	case inRecovery:
		return fmt.Errorf("health probe: %w: the server is a standby (pg_is_in_recovery)", ErrReadOnly)
	case readOnly == "on":
		return fmt.Errorf("health probe: %w: transactions are read-only (default_transaction_read_only)", ErrReadOnly)
	}
	return nil
}

// Migration is one idempotent step.
type Migration struct {
	Name string
	SQL  string
}

// Migrate applies steps in order inside one transaction holding a
// transaction-level advisory lock keyed by lockKey, so that processes starting
// together serialise and each step runs at most once in effect. Every step
// must be idempotent (CREATE ... IF NOT EXISTS and the like).
func Migrate(ctx context.Context, db *bun.DB, lockKey int64, steps []Migration) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(?)", lockKey); err != nil {
		return fmt.Errorf("migrate lock: %w", err)
	}
	for _, s := range steps {
		if _, err := tx.ExecContext(ctx, s.SQL); err != nil {
			return fmt.Errorf("migrate %s: %w", s.Name, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate commit: %w", err)
	}
	return nil
}

// DropIdle closes every idle pooled connection, keeping the idle limit. After
// a connection-class error (the server restarted, a proxy cut the link) the
// idle connections are all dead, and each would fail one more request with
// EOF before database/sql discarded it.
func DropIdle(db *bun.DB, maxIdle int) {
	db.SetMaxIdleConns(0)
	db.SetMaxIdleConns(maxIdle)
}

// Prober runs health probes (PingWritable) over a pool of exactly one connection,
// so that however the network misbehaves (black holes, resets, latency) a
// prober holds at most one server connection. After a failed probe the idle
// connection is dropped, so the next probe dials afresh and a dead pooled
// connection never hides a healthy server.
type Prober struct {
	db      *bun.DB
	timeout time.Duration
}

// NewProber opens the one-connection pool; it does not touch the network.
func NewProber(dsn, appName string, timeout time.Duration) (*Prober, error) {
	db, err := Open(Config{DSN: dsn, AppName: appName, DialTimeout: timeout, ReadTimeout: timeout,
		WriteTimeout: timeout, MaxOpenConns: 1, MaxIdleConns: 1, ConnMaxLifetime: time.Minute})
	if err != nil {
		return nil, err
	}
	return &Prober{db: db, timeout: timeout}, nil
}

// Probe checks that the database answers and takes writes within the
// timeout, and returns its latency. The deadline
// is enforced here even if the driver would wait longer: a server that
// accepts connections and never answers fails within the timeout.
func (p *Prober) Probe(ctx context.Context) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- PingWritable(ctx, p.db, p.timeout) }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		err = fmt.Errorf("health probe: %w", ctx.Err())
	}
	if err != nil {
		DropIdle(p.db, 1)
	}
	return time.Since(start), err
}

// Stats reports the prober's pool (at most one open connection).
func (p *Prober) Stats() sql.DBStats { return p.db.Stats() }

// Close closes the pool.
func (p *Prober) Close() error { return p.db.Close() }
