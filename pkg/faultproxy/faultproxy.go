// Package faultproxy is an in-process TCP proxy that injects network faults
// between a client and an upstream server, for resilience tests.
//
// It embeds the proxy and toxics of github.com/Shopify/toxiproxy/v2 without
// running toxiproxy's HTTP API: faults are switched with plain method calls.
// A Proxy is safe for concurrent use.
package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// Toxic names used by this package, one per fault and direction.
const (
	blackHoleDown = "blackhole_downstream"
	blackHoleUp   = "blackhole_upstream"
	latencyDown   = "latency_downstream"
	resetDown     = "reset_downstream"
	resetUp       = "reset_upstream"
)

// Proxy forwards TCP connections from a local port to an upstream address
// and can inject faults on them.
type Proxy struct {
	mu    sync.Mutex
	proxy *toxiproxy.Proxy
	addr  string
	port  int
}

// Start starts a proxy for upstream (host:port) listening on a random port
// of 127.0.0.1.
func Start(upstream string) (*Proxy, error) {
	if _, _, err := net.SplitHostPort(upstream); err != nil {
		return nil, fmt.Errorf("faultproxy start: %w", err)
	}
	// toxiproxy needs an ApiServer (for its logger and metrics container)
	// but never starts its HTTP listener unless Listen is called.
	server := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(server, "faultproxy-"+upstream, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		return nil, fmt.Errorf("faultproxy start: %w", err)
	}
	// Start replaced the ":0" listen address with the bound one; Enable
	// after Disable re-listens on the same port.
	addr := p.Listen
	_, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		p.Stop()
		return nil, fmt.Errorf("faultproxy start: %w", err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		p.Stop()
		return nil, fmt.Errorf("faultproxy start: %w", err)
	}
	return &Proxy{proxy: p, addr: addr, port: port}, nil
}

// Addr returns the proxy's listen address (127.0.0.1:port).
func (p *Proxy) Addr() string { return p.addr }

// Port returns the proxy's listen port.
func (p *Proxy) Port() int { return p.port }

// Close stops the proxy and closes all its connections.
func (p *Proxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.proxy.Stop()
}

// Disable refuses new connections (the listener is closed) and cuts all
// existing ones.
func (p *Proxy) Disable() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.proxy.Stop()
}

// Retarget points the proxy at another upstream (host:port), as a
// Kubernetes Service or a DNS name moves to a promoted replica: existing
// connections are cut, new ones reach the new upstream on the same port.
func (p *Proxy) Retarget(upstream string) error {
	if _, _, err := net.SplitHostPort(upstream); err != nil {
		return fmt.Errorf("faultproxy retarget: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.proxy.Stop()
	p.proxy.Upstream = upstream
	return p.enableLocked()
}

// Enable accepts connections again on the same port after Disable.
func (p *Proxy) Enable() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.enableLocked()
}

func (p *Proxy) enableLocked() error {
	if p.proxy.Enabled {
		return nil
	}
	if err := p.proxy.Start(); err != nil {
		return fmt.Errorf("faultproxy enable: %w", err)
	}
	return nil
}

// BlackHole lets connections open but silently drops all data in both
// directions (a timeout toxic with timeout 0): reads never return data.
// Connections that were black-holed are closed when the fault is removed.
func (p *Proxy) BlackHole() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	const attrs = `{"timeout":0}`
	if err := p.setToxic(blackHoleDown, "timeout", "downstream", 1, attrs); err != nil {
		return fmt.Errorf("faultproxy black hole: %w", err)
	}
	if err := p.setToxic(blackHoleUp, "timeout", "upstream", 1, attrs); err != nil {
		return fmt.Errorf("faultproxy black hole: %w", err)
	}
	return nil
}

// DropReplies lets data from the client reach the upstream server but
// silently drops everything the server sends back (a timeout toxic with
// timeout 0, downstream only): a request is carried out and its reply is
// lost, the ambiguous outcome a client sees when a server fails between
// applying a write and answering it. Heal removes the fault and closes the
// connections it held.
func (p *Proxy) DropReplies() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.setToxic(blackHoleDown, "timeout", "downstream", 1, `{"timeout":0}`); err != nil {
		return fmt.Errorf("faultproxy drop replies: %w", err)
	}
	return nil
}

// Latency delays all data from upstream to the client by d, so every
// request/response round trip takes at least d. d <= 0 removes the latency.
func (p *Proxy) Latency(d time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if d <= 0 {
		if err := p.removeToxic(latencyDown); err != nil {
			return fmt.Errorf("faultproxy latency: %w", err)
		}
		return nil
	}
	attrs := fmt.Sprintf(`{"latency":%d,"jitter":0}`, d.Milliseconds())
	if err := p.setToxic(latencyDown, "latency", "downstream", 1, attrs); err != nil {
		return fmt.Errorf("faultproxy latency: %w", err)
	}
	return nil
}

// ResetPeer closes every connection abruptly as soon as data flows through
// it in either direction (reset_peer toxic, toxicity 1).
func (p *Proxy) ResetPeer() error {
	return p.Flap(1)
}

// Flap applies the reset_peer toxic with the given toxicity (0..1): each
// connection direction, when established or when the toxic is set, is reset
// on its first data with that probability, so a share of connections fails
// while the rest work.
func (p *Proxy) Flap(toxicity float32) error {
	if toxicity < 0 || toxicity > 1 {
		return fmt.Errorf("faultproxy flap: toxicity %v out of range [0,1]", toxicity)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	const attrs = `{"timeout":0}`
	if err := p.setToxic(resetDown, "reset_peer", "downstream", toxicity, attrs); err != nil {
		return fmt.Errorf("faultproxy flap: %w", err)
	}
	if err := p.setToxic(resetUp, "reset_peer", "upstream", toxicity, attrs); err != nil {
		return fmt.Errorf("faultproxy flap: %w", err)
	}
	return nil
}

// Heal removes all faults and enables the proxy.
func (p *Proxy) Heal() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.proxy.Toxics.ResetToxics(context.Background())
	return p.enableLocked()
}

// setToxic adds or replaces the named toxic; p.mu must be held.
func (p *Proxy) setToxic(name, typ, stream string, toxicity float32, attrs string) error {
	// Replace rather than update so that the toxicity and attributes are
	// applied afresh on every existing link.
	if err := p.removeToxic(name); err != nil {
		return err
	}
	body := fmt.Sprintf(`{"name":%q,"type":%q,"stream":%q,"toxicity":%v,"attributes":%s}`,
		name, typ, stream, toxicity, attrs)
	if _, err := p.proxy.Toxics.AddToxicJson(strings.NewReader(body)); err != nil {
		return fmt.Errorf("add toxic %s: %w", name, err)
	}
	return nil
}

// removeToxic removes the named toxic if present; p.mu must be held.
func (p *Proxy) removeToxic(name string) error {
	err := p.proxy.Toxics.RemoveToxic(context.Background(), name)
	if err != nil && !errors.Is(err, toxiproxy.ErrToxicNotFound) {
		return fmt.Errorf("remove toxic %s: %w", name, err)
	}
	return nil
}
