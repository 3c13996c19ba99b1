package pgdb_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/pgdb"
	"github.com/anivault/anivault/pkg/pgembed"
	"github.com/anivault/anivault/pkg/procs"
	"github.com/anivault/anivault/pkg/testutil/natstest"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
	file    string // the PEM certificate, for sslrootcert
}

// randomSerial is a certificate serial number: random, as a CA's should be.
func randomSerial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
	ca.file = writeFile(t, name+".crt", ca.certPEM)
	return ca
}

// issue signs a leaf certificate: a server certificate for hosts (IP
// addresses or DNS names), or a client certificate for the user cn.
func (ca *testCA) issue(t *testing.T, cn string, client bool, hosts ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(t),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// writeFile writes data into the test's directory and returns the path.
func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// startPostgres starts a private server with opts, closed at the test's end.
func startPostgres(t *testing.T, opts pgembed.Options) *pgembed.Instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	inst, err := pgembed.Start(ctx, opts)
	if err != nil {
		t.Fatalf("start postgres: %v", err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		if err := inst.Close(cctx); err != nil {
			t.Errorf("close postgres: %v", err)
		}
	})
	return inst
}

// tlsDSN is the URL of the instance's postgres database through host, with
// a password (trust authentication ignores it; errors must never show it)
// and the given query parameters.
func tlsDSN(inst *pgembed.Instance, host string, params ...string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword("postgres", "s3cret"),
		Host: net.JoinHostPort(host, strconv.Itoa(inst.Port())), Path: "/postgres"}
	q := url.Values{}
	for i := 0; i+1 < len(params); i += 2 {
		q.Set(params[i], params[i+1])
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// connect opens dsn, runs one query and reports whether the server sees
// the session encrypted (pg_stat_ssl).
func connect(t *testing.T, dsn string) (encrypted bool, err error) {
	t.Helper()
	db, err := pgdb.Open(pgdb.Config{DSN: dsn, DialTimeout: 10 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second})
	if err != nil {
		return false, err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = db.QueryRowContext(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&encrypted)
	return encrypted, err
}

// mustConnect fails the test unless dsn connects with the wanted encryption.
func mustConnect(t *testing.T, dsn string, wantTLS bool) {
	t.Helper()
	enc, err := connect(t, dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	if enc != wantTLS {
		t.Fatalf("connect %s: encrypted = %v, want %v", dsn, enc, wantTLS)
	}
}

// connectFails fails the test unless dsn fails to connect; it returns the
// error, which must not show the password.
func connectFails(t *testing.T, dsn string) error {
	t.Helper()
	enc, err := connect(t, dsn)
	if err == nil {
		t.Fatalf("connect %s succeeded (encrypted %v), want an error", dsn, enc)
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("the error shows the password: %v", err)
	}
	t.Logf("refused as expected: %v", err)
	return err
}

// A TLS server whose certificate names 127.0.0.1 and localhost, signed by
// ca: verify-full connects with the right CA only; weaker modes behave as
// in libpq.
func TestTLSModes(t *testing.T) {
	ca, otherCA := newCA(t, "anivault-test-ca"), newCA(t, "some-other-ca")
	certPEM, keyPEM := ca.issue(t, "postgres-server", false, "127.0.0.1", "localhost")
	inst := startPostgres(t, pgembed.Options{ServerCertPEM: certPEM, ServerKeyPEM: keyPEM})

	t.Run("verify-full with the right CA connects over TLS", func(t *testing.T) {
		mustConnect(t, tlsDSN(inst, "127.0.0.1", "sslmode", "verify-full", "sslrootcert", ca.file), true)
		mustConnect(t, tlsDSN(inst, "localhost", "sslmode", "verify-full", "sslrootcert", ca.file), true)
	})
	t.Run("verify-full with another CA fails on the certificate", func(t *testing.T) {
		err := connectFails(t, tlsDSN(inst, "127.0.0.1", "sslmode", "verify-full", "sslrootcert", otherCA.file))
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			t.Fatalf("want x509.UnknownAuthorityError, got %T: %v", err, err)
		}
	})
	t.Run("verify-ca with another CA fails on the certificate", func(t *testing.T) {
		err := connectFails(t, tlsDSN(inst, "127.0.0.1", "sslmode", "verify-ca", "sslrootcert", otherCA.file))
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			t.Fatalf("want x509.UnknownAuthorityError, got %T: %v", err, err)
		}
	})
	t.Run("verify-ca with the right CA connects", func(t *testing.T) {
		mustConnect(t, tlsDSN(inst, "127.0.0.1", "sslmode", "verify-ca", "sslrootcert", ca.file), true)
	})
	t.Run("require without a root certificate connects unverified", func(t *testing.T) {
		mustConnect(t, tlsDSN(inst, "127.0.0.1", "sslmode", "require"), true)
	})
	t.Run("require with a root certificate verifies the chain, as libpq", func(t *testing.T) {
		mustConnect(t, tlsDSN(inst, "127.0.0.1", "sslmode", "require", "sslrootcert", ca.file), true)
		err := connectFails(t, tlsDSN(inst, "127.0.0.1", "sslmode", "require", "sslrootcert", otherCA.file))
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			t.Fatalf("want x509.UnknownAuthorityError, got %T: %v", err, err)
		}
	})
	t.Run("prefer and no sslmode use TLS when offered", func(t *testing.T) {
		mustConnect(t, tlsDSN(inst, "127.0.0.1", "sslmode", "prefer"), true)
		mustConnect(t, tlsDSN(inst, "127.0.0.1"), true)
	})
	t.Run("disable stays plain", func(t *testing.T) {
		mustConnect(t, tlsDSN(inst, "127.0.0.1", "sslmode", "disable"), false)
	})
	t.Run("the health monitor reports healthy with verify-full", func(t *testing.T) {
		testHealthMonitorTLS(t, inst, ca, otherCA)
	})
}

// A TLS server whose certificate names another host, and which wants client
// certificates signed by clientCA on TLS connections.
func TestTLSHostnameAndClientCertificate(t *testing.T) {
	ca, clientCA, otherCA := newCA(t, "anivault-test-ca"), newCA(t, "anivault-client-ca"), newCA(t, "some-other-ca")
	certPEM, keyPEM := ca.issue(t, "postgres-server", false, "db.anivault.test")
	inst := startPostgres(t, pgembed.Options{ServerCertPEM: certPEM, ServerKeyPEM: keyPEM, ClientCAPEM: clientCA.certPEM})
	clientCert, clientKey := clientCA.issue(t, "postgres", true)
	certFile, keyFile := writeFile(t, "client.crt", clientCert), writeFile(t, "client.key", clientKey)
	strangerCert, strangerKey := otherCA.issue(t, "postgres", true)
	strangerCertFile, strangerKeyFile := writeFile(t, "stranger.crt", strangerCert), writeFile(t, "stranger.key", strangerKey)

	t.Run("verify-full fails on the host name", func(t *testing.T) {
		err := connectFails(t, tlsDSN(inst, "127.0.0.1", "sslmode", "verify-full", "sslrootcert", ca.file,
			"sslcert", certFile, "sslkey", keyFile))
		var mismatch x509.HostnameError
		if !errors.As(err, &mismatch) {
			t.Fatalf("want x509.HostnameError, got %T: %v", err, err)
		}
	})
	t.Run("verify-ca ignores the name and presents the client certificate", func(t *testing.T) {
		mustConnect(t, tlsDSN(inst, "127.0.0.1", "sslmode", "verify-ca", "sslrootcert", ca.file,
			"sslcert", certFile, "sslkey", keyFile), true)
	})
	t.Run("without a client certificate the server refuses", func(t *testing.T) {
		err := connectFails(t, tlsDSN(inst, "127.0.0.1", "sslmode", "verify-ca", "sslrootcert", ca.file))
		if !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("want the server's refusal for a missing client certificate, got %v", err)
		}
	})
	t.Run("a client certificate from another CA is refused", func(t *testing.T) {
		err := connectFails(t, tlsDSN(inst, "127.0.0.1", "sslmode", "verify-ca", "sslrootcert", ca.file,
			"sslcert", strangerCertFile, "sslkey", strangerKeyFile))
		if !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("want a certificate error, got %v", err)
		}
	})
}

// A server without TLS: the modes that require TLS fail with ErrServerNoTLS
// and never fall back to a plain connection; prefer does.
func TestTLSRequiredButServerPlain(t *testing.T) {
	ca := newCA(t, "anivault-test-ca")
	inst := startPostgres(t, pgembed.Options{})
	for _, params := range [][]string{
		{"sslmode", "verify-full", "sslrootcert", ca.file},
		{"sslmode", "verify-ca", "sslrootcert", ca.file},
		{"sslmode", "require"},
	} {
		err := connectFails(t, tlsDSN(inst, "127.0.0.1", params...))
		if !errors.Is(err, pgdb.ErrServerNoTLS) {
			t.Fatalf("%v: want ErrServerNoTLS, got %v", params, err)
		}
	}
	mustConnect(t, tlsDSN(inst, "127.0.0.1", "sslmode", "prefer"), false)
	mustConnect(t, tlsDSN(inst, "127.0.0.1"), false)
}

// Bad TLS settings are refused by Open, before any connection, with an
// error naming DATABASE_URL and the problem and never the password.
func TestOpenBadTLSSettings(t *testing.T) {
	ca := newCA(t, "anivault-test-ca")
	notPEM := writeFile(t, "not.pem", []byte("not a certificate\n"))
	certPEM, keyPEM := ca.issue(t, "postgres", true)
	certFile, keyFile := writeFile(t, "c.crt", certPEM), writeFile(t, "c.key", keyPEM)
	missing := filepath.Join(t.TempDir(), "missing.pem")
	const base = "postgres://u:s3cret@127.0.0.1:1/db?"
	for _, tc := range []struct{ query, want string }{
		{"sslmode=verify-everything", `unknown sslmode "verify-everything"`},
		{"sslmode=verify-full", "needs sslrootcert"},
		{"sslmode=verify-ca", "needs sslrootcert"},
		{"sslmode=verify-full&sslrootcert=" + missing, "no such file"},
		{"sslmode=require&sslrootcert=" + missing, "no such file"},
		{"sslmode=verify-full&sslrootcert=" + notPEM, "holds no PEM certificate"},
		{"sslmode=verify-ca&sslrootcert=system", "sslrootcert=system needs sslmode=verify-full"},
		{"sslmode=require&sslcert=" + certFile, "sslcert and sslkey go together"},
		{"sslmode=require&sslkey=" + keyFile, "sslcert and sslkey go together"},
		{"sslmode=require&sslcert=" + certFile + "&sslkey=" + missing, "client certificate"},
		{"sslmode=require&sslcert=" + keyFile + "&sslkey=" + certFile, "client certificate"},
		{"sslmode=verify-full&sslrootcert=" + ca.file + "&sslcrl=/x", "parameter sslcrl is not supported"},
		{"sslmode=require&sslmode=disable", "sslmode is given 2 times"},
		{"sslmode=bogus&password=s3cret", `unknown sslmode "bogus"`},
	} {
		db, err := pgdb.Open(pgdb.Config{DSN: base + tc.query})
		if err == nil || db != nil {
			t.Errorf("Open(%s) = %v, %v; want an error", tc.query, db, err)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, "DATABASE_URL") || !strings.Contains(msg, tc.want) {
			t.Errorf("Open(%s): %q does not name DATABASE_URL and %q", tc.query, msg, tc.want)
		}
		if strings.Contains(msg, "s3cret") {
			t.Errorf("Open(%s): the error shows the password: %v", tc.query, err)
		}
	}
	// Settings that are fine open without touching the network.
	for _, q := range []string{"", "sslmode=disable", "sslmode=allow", "sslmode=prefer", "sslmode=require",
		"sslmode=verify-full&sslrootcert=system", "sslmode=verify-full&sslrootcert=" + ca.file + "&sslcert=" + certFile + "&sslkey=" + keyFile} {
		db, err := pgdb.Open(pgdb.Config{DSN: base + q})
		if err != nil {
			t.Errorf("Open(%s): %v", q, err)
			continue
		}
		_ = db.Close()
	}
}

// buildHealthMonitor builds the health-monitor binary into the test's
// directory.
func buildHealthMonitor(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	bins, err := procs.Build(ctx, "../..", t.TempDir(), "./services/health-monitor")
	if err != nil {
		t.Fatalf("build health-monitor: %v", err)
	}
	return bins["health-monitor"]
}

// testHealthMonitorTLS runs the real health-monitor against the TLS server:
// with verify-full and the right CA it reports the database healthy, with
// another CA unhealthy for the certificate, and with a missing root
// certificate file it stops at start naming DATABASE_URL.
func testHealthMonitorTLS(t *testing.T, inst *pgembed.Instance, ca, otherCA *testCA) {
	bin := buildHealthMonitor(t)
	srv := natstest.Start(t)
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	reports := make(chan events.DBHealth, 256)
	sub, err := nc.Subscribe(events.SubjectDBHealth, func(m *nats.Msg) {
		var h events.DBHealth
		if json.Unmarshal(m.Data, &h) == nil {
			select {
			case reports <- h:
			default:
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	run := func(name, dsn string) *procs.Proc {
		p := procs.New(name, bin, filepath.Join(t.TempDir(), name+".log"), map[string]string{
			"NATS_URL": srv.URL(), "DATABASE_URL": dsn, "NODE_ID": name, "ADMIN_ADDR": "",
			"HEALTH_CHECK_INTERVAL": "200ms", "HEALTH_CHECK_TIMEOUT": "5s",
			"HEALTH_FAILURE_THRESHOLD": "1", "HEALTH_RECOVERY_THRESHOLD": "1", "LOG_FORMAT": "text",
		})
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.Stop(10 * time.Second) })
		return p
	}
	// awaitReport waits for a db.health from source with the wanted status.
	awaitReport := func(p *procs.Proc, want events.HealthStatus) events.DBHealth {
		t.Helper()
		timeout := time.After(90 * time.Second)
		for {
			select {
			case h := <-reports:
				if h.Source == p.Name && h.Status == want {
					return h
				}
			case <-timeout:
				t.Fatalf("%s reported no %s db.health within 90s; output:\n%s", p.Name, want, p.Output())
			}
		}
	}

	good := run("monitor-verify-full", tlsDSN(inst, "127.0.0.1", "sslmode", "verify-full", "sslrootcert", ca.file))
	if h := awaitReport(good, events.HealthHealthy); h.Error != "" {
		t.Fatalf("healthy report with an error: %+v", h)
	}
	if err := good.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}

	bad := run("monitor-other-ca", tlsDSN(inst, "127.0.0.1", "sslmode", "verify-full", "sslrootcert", otherCA.file))
	h := awaitReport(bad, events.HealthUnhealthy)
	if !strings.Contains(h.Error, "certificate signed by unknown authority") {
		t.Fatalf("unhealthy for the wrong reason: %q", h.Error)
	}
	if err := bad.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}

	missing := filepath.Join(t.TempDir(), "missing-ca.pem")
	broken := run("monitor-missing-ca", tlsDSN(inst, "127.0.0.1", "sslmode", "verify-full", "sslrootcert", missing))
	if err := procs.Eventually(60*time.Second, 50*time.Millisecond, func() error {
		if broken.Running() {
			return errors.New("still running")
		}
		return nil
	}); err != nil {
		t.Fatalf("the monitor with a missing sslrootcert did not stop: %v", err)
	}
	out := broken.Output()
	if broken.ExitErr() == nil {
		t.Fatalf("the monitor with a missing sslrootcert exited 0; output:\n%s", out)
	}
	for _, want := range []string{"DATABASE_URL", "sslrootcert", missing, "no such file"} {
		if !strings.Contains(out, want) {
			t.Errorf("the start error does not name %q; output:\n%s", want, out)
		}
	}
	for _, p := range []*procs.Proc{good, bad, broken} {
		if strings.Contains(p.Output(), "s3cret") {
			t.Errorf("%s logged the password:\n%s", p.Name, p.Output())
		}
	}
}
