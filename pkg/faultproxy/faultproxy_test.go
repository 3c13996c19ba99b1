package faultproxy_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/faultproxy"
)

// startEcho starts a line echo server and returns its address.
func startEcho(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return l.Addr().String()
}

func startProxy(t *testing.T) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.Start(startEcho(t))
	if err != nil {
		t.Fatalf("start proxy: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// roundTrip dials addr, writes a line and reads it back within timeout.
func roundTrip(addr string, timeout time.Duration) (time.Duration, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return roundTripOn(c, timeout)
}

func roundTripOn(c net.Conn, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	if err := c.SetDeadline(start.Add(timeout)); err != nil {
		return 0, err
	}
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, err
	}
	if line != "ping\n" {
		return 0, errors.New("unexpected echo " + line)
	}
	return time.Since(start), nil
}

// eventually polls f until it returns nil or the deadline passes.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval under a deadline
	}
}

func TestPassThroughAndDisable(t *testing.T) {
	p := startProxy(t)
	if p.Port() == 0 || p.Addr() == "" {
		t.Fatalf("bad address %q port %d", p.Addr(), p.Port())
	}
	if _, err := roundTrip(p.Addr(), 2*time.Second); err != nil {
		t.Fatalf("pass-through: %v", err)
	}

	// An open connection is cut by Disable.
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	if _, err := roundTripOn(c, 2*time.Second); err != nil {
		t.Fatalf("round trip before disable: %v", err)
	}
	p.Disable()
	if _, err := roundTripOn(c, 2*time.Second); err == nil {
		t.Fatal("existing connection still works after Disable")
	}
	if _, err := roundTrip(p.Addr(), 500*time.Millisecond); err == nil {
		t.Fatal("new connection works after Disable")
	}

	if err := p.Heal(); err != nil {
		t.Fatalf("heal: %v", err)
	}
	if _, err := roundTrip(p.Addr(), 2*time.Second); err != nil {
		t.Fatalf("after heal: %v", err)
	}

	p.Disable()
	if err := p.Enable(); err != nil {
		t.Fatalf("enable: %v", err)
	}
	if _, err := roundTrip(p.Addr(), 2*time.Second); err != nil {
		t.Fatalf("after enable: %v", err)
	}
}

func TestBlackHole(t *testing.T) {
	p := startProxy(t)
	if err := p.BlackHole(); err != nil {
		t.Fatalf("black hole: %v", err)
	}
	c, err := net.DialTimeout("tcp", p.Addr(), 2*time.Second)
	if err != nil {
		t.Fatalf("dial should succeed under black hole: %v", err)
	}
	defer c.Close()
	_, err = roundTripOn(c, 300*time.Millisecond)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read under black hole: %v, want deadline exceeded", err)
	}
	if err := p.Heal(); err != nil {
		t.Fatalf("heal: %v", err)
	}
	if _, err := roundTrip(p.Addr(), 2*time.Second); err != nil {
		t.Fatalf("after heal: %v", err)
	}
}

func TestLatency(t *testing.T) {
	p := startProxy(t)
	if err := p.Latency(200 * time.Millisecond); err != nil {
		t.Fatalf("latency: %v", err)
	}
	rtt, err := roundTrip(p.Addr(), 3*time.Second)
	if err != nil {
		t.Fatalf("round trip: %v", err)
	}
	if rtt < 200*time.Millisecond {
		t.Fatalf("round trip %v, want >= 200ms", rtt)
	}
	if err := p.Latency(0); err != nil {
		t.Fatalf("remove latency: %v", err)
	}
	rtt, err = roundTrip(p.Addr(), 3*time.Second)
	if err != nil {
		t.Fatalf("round trip: %v", err)
	}
	if rtt >= 200*time.Millisecond {
		t.Fatalf("round trip %v after removing latency, want < 200ms", rtt)
	}
}

func TestResetPeerAndFlap(t *testing.T) {
	p := startProxy(t)
	if err := p.ResetPeer(); err != nil {
		t.Fatalf("reset peer: %v", err)
	}
	for i := range 3 {
		if _, err := roundTrip(p.Addr(), 2*time.Second); err == nil {
			t.Fatalf("round trip %d succeeded under reset_peer", i)
		}
	}
	if err := p.Heal(); err != nil {
		t.Fatalf("heal: %v", err)
	}
	eventually(t, "round trip after heal", func() error {
		_, err := roundTrip(p.Addr(), 2*time.Second)
		return err
	})

	if err := p.Flap(2); err == nil {
		t.Fatal("Flap(2) accepted")
	}
	// Toxicity 0 applies the toxic to no connection.
	if err := p.Flap(0); err != nil {
		t.Fatalf("flap 0: %v", err)
	}
	for i := range 5 {
		if _, err := roundTrip(p.Addr(), 2*time.Second); err != nil {
			t.Fatalf("round trip %d failed with toxicity 0: %v", i, err)
		}
	}
	// Toxicity 0.5: some connections fail, some work (each direction is
	// reset with probability 0.5, so a connection survives with 0.25).
	if err := p.Flap(0.5); err != nil {
		t.Fatalf("flap 0.5: %v", err)
	}
	var ok, failed int
	for range 60 {
		if _, err := roundTrip(p.Addr(), 2*time.Second); err != nil {
			failed++
		} else {
			ok++
		}
	}
	if ok == 0 || failed == 0 {
		t.Fatalf("flap 0.5: %d ok, %d failed; want both > 0", ok, failed)
	}
}

func TestStartBadUpstream(t *testing.T) {
	if _, err := faultproxy.Start("not-an-address"); err == nil {
		t.Fatal("Start accepted an invalid upstream")
	}
}

func TestDropReplies(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer l.Close()
	got := make(chan string, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					got <- line
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	p, err := faultproxy.Start(l.Addr().String())
	if err != nil {
		t.Fatalf("start proxy: %v", err)
	}
	defer p.Close()
	if err := p.DropReplies(); err != nil {
		t.Fatalf("drop replies: %v", err)
	}
	c, err := net.DialTimeout("tcp", p.Addr(), 2*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	_, err = roundTripOn(c, 300*time.Millisecond)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read with replies dropped: %v, want deadline exceeded", err)
	}
	select {
	case line := <-got:
		if line != "ping\n" {
			t.Fatalf("server received %q, want the request", line)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the request did not reach the server while replies were dropped")
	}
	if err := p.Heal(); err != nil {
		t.Fatalf("heal: %v", err)
	}
	if _, err := roundTrip(p.Addr(), 2*time.Second); err != nil {
		t.Fatalf("after heal: %v", err)
	}
}
