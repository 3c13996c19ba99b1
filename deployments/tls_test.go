package deployments_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/anivault/anivault/pkg/natsconn"
)

// tlsConf is the TLS variant of the cluster configuration.
const tlsConf = "nats/tls.conf"

// testPKI is a CA and the certificates tls.conf names, written to a directory.
type testPKI struct {
	dir                       string
	ca, serverCert, serverKey string
	clientCert, clientKey     string
}

// newTestPKI makes a CA, a server certificate (nats-1..3, localhost,
// 127.0.0.1; server and client authentication, as routes need) and a client
// certificate, all signed by the CA.
func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	p := testPKI{dir: dir,
		ca: filepath.Join(dir, "ca.pem"), serverCert: filepath.Join(dir, "server.pem"), serverKey: filepath.Join(dir, "server-key.pem"),
		clientCert: filepath.Join(dir, "client.pem"), clientKey: filepath.Join(dir, "client-key.pem"),
	}
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "anivault test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, p.ca, "CERTIFICATE", caDER)
	issue := func(serial int64, cn string, usage []x509.ExtKeyUsage, dns []string, ips []net.IP, certPath, keyPath string) {
		key := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usage, DNSNames: dns, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		writePEM(t, certPath, "CERTIFICATE", der)
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		writePEM(t, keyPath, "EC PRIVATE KEY", kb)
	}
	issue(2, "nats", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		[]string{"nats", "nats-1", "nats-2", "nats-3", "localhost"}, []net.IP{net.ParseIP("127.0.0.1")}, p.serverCert, p.serverKey)
	issue(3, "anivault-client", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, nil, p.clientCert, p.clientKey)
	return p
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// tlsConfWith copies tls.conf (and the accounts.conf it includes) into the
// PKI's directory with the certificate paths of /etc/nats/tls/ pointed at
// the generated files, as a deployment mounts them there.
func tlsConfWith(t *testing.T, p testPKI) string {
	t.Helper()
	b, err := os.ReadFile(tlsConf)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for _, f := range []string{"ca.pem", "server.pem", "server-key.pem"} {
		if !strings.Contains(text, `"/etc/nats/tls/`+f+`"`) {
			t.Fatalf("%s does not name /etc/nats/tls/%s, the path its header documents", tlsConf, f)
		}
	}
	text = strings.ReplaceAll(text, "/etc/nats/tls/", p.dir+"/")
	conf := filepath.Join(p.dir, "tls.conf")
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	acc, err := os.ReadFile("nats/accounts.conf")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.dir, "accounts.conf"), acc, 0o600); err != nil {
		t.Fatal(err)
	}
	return conf
}

// TestTLSConfig loads tls.conf with certificates made here, starts its
// three-server cluster (routes over TLS with the route user's password),
// provisions through it as the admin with a client certificate, connects a
// service the way natsconn does from NATS_CA, NATS_CERT and NATS_KEY, and
// checks that the servers refuse plain clients, clients without a
// certificate and plain routes.
func TestTLSConfig(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the services over TLS: go tool task test runs it")
	}
	pki := newTestPKI(t)
	conf := tlsConfWith(t, pki)
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("%s: %v", tlsConf, err)
	}
	checkServerOptions(t, tlsConf, opts)
	checkClusterOptions(t, tlsConf, opts)
	if opts.TLSConfig == nil || opts.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Fatalf("%s: clients are not required to use TLS with a verified certificate (tls { verify: true })", tlsConf)
	}
	if opts.Cluster.TLSConfig == nil || opts.Cluster.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Fatalf("%s: routes do not use TLS with verified certificates both ways", tlsConf)
	}
	if opts.HTTPPort != 0 || opts.HTTPSPort == 0 {
		t.Errorf("%s: monitoring on http port %d, https port %d: want HTTPS only", tlsConf, opts.HTTPPort, opts.HTTPSPort)
	}

	srvs, logs := startCluster(t, []string{conf, conf, conf}, func(i int, o *server.Options) {
		o.ServerName = fmt.Sprintf("nats-%d", i+1)
	})
	var urls []string
	for _, s := range srvs {
		urls = append(urls, fmt.Sprintf("tls://127.0.0.1:%d", s.Addr().(*net.TCPAddr).Port))
	}
	users := natsUsers(t)
	tlsOpts := []nats.Option{nats.RootCAs(pki.ca), nats.ClientCert(pki.clientCert, pki.clientKey)}
	// JetStream with three replicas: the routes work over TLS.
	js := provisionOnCluster(t, strings.Join(urls, ","), users, tlsOpts)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if st, err := js.Stream(ctx, "ANIVAULT_BUFFER"); err != nil || st.CachedInfo().Config.Replicas != 3 {
		t.Fatalf("the buffer stream over TLS: %v", err)
	}

	// A service connects with NATS_CA, NATS_CERT, NATS_KEY and its role.
	cfg := natsconn.Config{URL: strings.Join(urls, ","), CA: pki.ca, Cert: pki.clientCert, Key: pki.clientKey,
		User: "cache-node", Password: users["cache-node"], InboxPrefix: inboxPrefix("cache-node")}
	nc, err := natsconn.Connect(ctx, cfg, "tls-test-cache-node", nil)
	if err != nil {
		t.Fatalf("natsconn over TLS: %v", err)
	}
	defer nc.Close()
	if st, err := nc.TLSConnectionState(); err != nil || !st.HandshakeComplete || len(st.PeerCertificates) == 0 {
		t.Fatalf("natsconn's connection is not TLS: %v", err)
	}
	if _, err := nc.Request("$JS.API.STREAM.INFO.ANIVAULT_BUFFER", nil, 5*time.Second); err != nil {
		t.Fatalf("the cache-node's stream info over TLS: %v", err)
	}

	// Refused: a client without TLS. The server announces TLS as required and
	// drops a plain CONNECT without answering it.
	addr := srvs[0].Addr().String()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	info, err := r.ReadString('\n')
	if err != nil || !strings.Contains(info, `"tls_required":true`) {
		t.Fatalf("the server's INFO %q (%v) does not require TLS", info, err)
	}
	fmt.Fprintf(conn, "CONNECT {\"user\":\"admin\",\"pass\":%q,\"verbose\":false}\r\nPING\r\n", users["admin"])
	if line, err := r.ReadString('\n'); err == nil && strings.Contains(line, "PONG") {
		t.Fatalf("the server answered a plain client: %q", line)
	}
	if _, err := nats.Connect("nats://"+addr, nats.UserInfo("admin", users["admin"])); err == nil {
		t.Fatal("a client without TLS connected")
	}
	// Refused: TLS without a client certificate.
	if _, err := nats.Connect(urls[0], nats.RootCAs(pki.ca), nats.UserInfo("admin", users["admin"])); err == nil {
		t.Fatal("a TLS client without a certificate connected")
	}
	// Refused: a route without TLS, even with the route user's password.
	intruder, err := server.NewServer(&server.Options{
		ServerName: "intruder", Host: "127.0.0.1", Port: -1, NoSigs: true, NoSystemAccount: true,
		Cluster: server.ClusterOpts{Name: "anivault", Host: "127.0.0.1", Port: -1},
		Routes: server.RoutesFromStr(fmt.Sprintf("nats-route://%s:%s@127.0.0.1:%d",
			opts.Cluster.Username, opts.Cluster.Password, srvs[0].ClusterAddr().Port)),
	})
	if err != nil {
		t.Fatal(err)
	}
	go intruder.Start()
	defer func() { intruder.Shutdown(); intruder.WaitForShutdown() }()
	eventually(t, "a plain route refused", 20*time.Second, func() error {
		for _, l := range logs[0].filter("") {
			if strings.Contains(strings.ToLower(l), "tls") {
				return nil
			}
		}
		return errors.New("nats-1 logged no TLS error for the plain route")
	})
	if n := intruder.NumRoutes(); n != 0 {
		t.Errorf("a route without TLS joined the cluster (%d routes)", n)
	}
}
