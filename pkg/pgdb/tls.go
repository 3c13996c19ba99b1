package pgdb

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/anivault/anivault/pkg/envconfig"
)

// ErrServerNoTLS is returned (wrapped) when the DSN's sslmode requires TLS
// (require, verify-ca, verify-full) and the server does not offer it.
var ErrServerNoTLS = errors.New("the server does not accept TLS connections")

// The DSN parameters this file handles, as libpq spells them. They are taken
// out of the DSN handed to pgdriver; any other parameter starting with "ssl"
// is refused rather than sent to the server as a session setting.
const (
	paramSSLMode     = "sslmode"
	paramSSLRootCert = "sslrootcert"
	paramSSLCert     = "sslcert"
	paramSSLKey      = "sslkey"
)

// rootCertSystem as sslrootcert selects the system's trusted roots (libpq 16).
const rootCertSystem = "system"

// tlsPolicy is how connections negotiate TLS, from the DSN's ssl parameters
// with libpq's meaning:
//
//	disable      plain connections only
//	allow,
//	prefer       TLS when the server offers it, else plain; no verification
//	             (the default when sslmode is absent, as in libpq)
//	require      TLS or nothing; no verification, unless sslrootcert is
//	             given, when it acts as verify-ca (libpq does the same)
//	verify-ca    TLS, and the server's chain must lead to sslrootcert
//	verify-full  verify-ca, and the certificate must name the host dialed
type tlsPolicy struct {
	mode string
	// config is nil for disable; otherwise the template every connection
	// clones.
	config *tls.Config
	// required refuses a server that does not offer TLS.
	required bool
}

// parseTLS reads the ssl parameters of q, loads the files they name, and
// removes them from q. Its errors name the parameter and never the DSN.
func parseTLS(q url.Values) (tlsPolicy, error) {
	var p tlsPolicy
	for k, vs := range q {
		lk := strings.ToLower(k)
		switch k {
		case paramSSLMode, paramSSLRootCert, paramSSLCert, paramSSLKey:
			if len(vs) > 1 {
				return p, fmt.Errorf("%s is given %d times", k, len(vs))
			}
			continue
		}
		if strings.HasPrefix(lk, "ssl") {
			return p, fmt.Errorf("parameter %s is not supported (supported: sslmode, sslrootcert, sslcert, sslkey)", k)
		}
	}
	p.mode = q.Get(paramSSLMode)
	rootCert, certFile, keyFile := q.Get(paramSSLRootCert), q.Get(paramSSLCert), q.Get(paramSSLKey)
	for _, k := range []string{paramSSLMode, paramSSLRootCert, paramSSLCert, paramSSLKey} {
		q.Del(k)
	}
	if p.mode == "" {
		p.mode = "prefer"
	}
	// verifyName: crypto/tls checks the certificate against the host
	// dialed (negotiate sets ServerName to it).
	verifyChain, verifyName := false, false
	switch p.mode {
	case "disable":
		return p, nil
	case "allow", "prefer":
	case "require":
		p.required = true
		verifyChain = rootCert != ""
		if rootCert == rootCertSystem {
			return p, fmt.Errorf("sslrootcert=system needs sslmode=verify-full, not %s", p.mode)
		}
	case "verify-ca", "verify-full":
		p.required, verifyChain, verifyName = true, true, p.mode == "verify-full"
		if rootCert == "" {
			return p, fmt.Errorf("sslmode=%s needs sslrootcert=<file of PEM CA certificates> (or sslrootcert=system for the system's trusted roots with verify-full)", p.mode)
		}
		if rootCert == rootCertSystem && !verifyName {
			return p, fmt.Errorf("sslrootcert=system needs sslmode=verify-full, not %s", p.mode)
		}
	default:
		return p, fmt.Errorf("unknown sslmode %q (want disable, allow, prefer, require, verify-ca or verify-full)", p.mode)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if verifyChain {
		roots, err := loadRoots(rootCert)
		if err != nil {
			return p, err
		}
		cfg.RootCAs = roots
	}
	if (certFile == "") != (keyFile == "") {
		return p, errors.New("sslcert and sslkey go together: give both files or neither")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return p, fmt.Errorf("client certificate sslcert=%s sslkey=%s: %w", certFile, keyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	switch {
	case verifyName:
		// crypto/tls verifies the chain against RootCAs and the name
		// against ServerName, set per connection.
	case verifyChain:
		// The chain, but not the name: crypto/tls has no such mode, so
		// skip its verification and check the chain here.
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the server sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: cfg.RootCAs, Intermediates: inter}); err != nil {
				return fmt.Errorf("verify the server certificate chain: %w", err)
			}
			return nil
		}
	default:
		cfg.InsecureSkipVerify = true // prefer, allow, require without root: encryption only, as libpq
	}
	p.config = cfg
	return p, nil
}

// loadRoots reads a PEM file of CA certificates, or the system's pool.
func loadRoots(file string) (*x509.CertPool, error) {
	if file == rootCertSystem {
		pool, err := x509.SystemCertPool()
		if err != nil {
			return nil, fmt.Errorf("sslrootcert=system: %w", err)
		}
		return pool, nil
	}
	pemData, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("sslrootcert: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		return nil, fmt.Errorf("sslrootcert %s holds no PEM certificate", file)
	}
	return pool, nil
}

// sslRequestCode is the protocol's SSLRequest code (1234 << 16 | 5679).
const sslRequestCode = 80877103

// negotiate runs PostgreSQL's TLS negotiation on a fresh TCP connection:
// SSLRequest, the server's one-byte answer, then the TLS handshake. It
// returns the connection pgdriver is to speak the protocol over (TLS, or
// the plain one when TLS is optional and the server has none). It is
// bounded by timeout and ctx; on error the caller closes conn.
func (p *tlsPolicy) negotiate(ctx context.Context, conn net.Conn, addr string, timeout time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("postgres TLS negotiation with %s: %w", addr, err)
	}
	// A cancelled context unblocks the exchange at once.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var req [8]byte
	binary.BigEndian.PutUint32(req[0:4], 8)
	binary.BigEndian.PutUint32(req[4:8], sslRequestCode)
	if _, err := conn.Write(req[:]); err != nil {
		return nil, fmt.Errorf("postgres TLS negotiation with %s: send SSLRequest: %w", addr, err)
	}
	// Read exactly one byte: anything the server (or someone in between)
	// sent after it must go through the TLS handshake, not be taken as
	// protocol data.
	var answer [1]byte
	if _, err := io.ReadFull(conn, answer[:]); err != nil {
		return nil, fmt.Errorf("postgres TLS negotiation with %s: read the answer to SSLRequest: %w", addr, err)
	}
	switch answer[0] {
	case 'S':
	case 'N':
		if p.required {
			return nil, fmt.Errorf("postgres at %s with sslmode=%s: %w", addr, p.mode, ErrServerNoTLS)
		}
		if !stop() {
			return nil, fmt.Errorf("postgres TLS negotiation with %s: %w", addr, ctx.Err())
		}
		if err := conn.SetDeadline(time.Time{}); err != nil {
			return nil, fmt.Errorf("postgres TLS negotiation with %s: %w", addr, err)
		}
		return conn, nil
	default:
		return nil, fmt.Errorf("postgres TLS negotiation with %s: unexpected answer %q to SSLRequest (not a PostgreSQL server?)", addr, answer[0])
	}
	cfg := p.config.Clone()
	if host, _, err := net.SplitHostPort(addr); err == nil {
		cfg.ServerName = host
	} else {
		cfg.ServerName = addr
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("postgres TLS handshake with %s (sslmode=%s): %w", addr, p.mode, err)
	}
	if !stop() {
		return nil, fmt.Errorf("postgres TLS negotiation with %s: %w", addr, ctx.Err())
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("postgres TLS negotiation with %s: %w", addr, err)
	}
	return tc, nil
}

// maskDSN is the DSN as errors may show it: the user-info password and any
// password in the query masked.
func maskDSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return envconfig.MaskURLs(dsn)
	}
	q := u.Query()
	changed := false
	for k := range q {
		if lk := strings.ToLower(k); lk == "password" || lk == "sslpassword" {
			q.Set(k, "****")
			changed = true
		}
	}
	if changed {
		u.RawQuery = strings.ReplaceAll(q.Encode(), "%2A%2A%2A%2A", "****")
	}
	return envconfig.MaskURLs(u.String())
}
