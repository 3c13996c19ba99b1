package svckit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a Prometheus registry with the Go and process
// collectors and anivault_build_info{service, version, go_version} = 1.
func NewRegistry(service string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	version := "devel"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		version = bi.Main.Version
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "anivault_build_info",
		Help: "1, labelled with the service, its module version and the Go version it was built with."},
		[]string{"service", "version", "go_version"})
	build.WithLabelValues(service, version, runtime.Version()).Set(1)
	reg.MustRegister(build, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// ModeGauges are anivault_mode{mode} (1 for the current mode, 0 for the
// others) and anivault_mode_epoch, which every service exports.
type ModeGauges struct {
	modes []string
	mode  *prometheus.GaugeVec
	epoch prometheus.Gauge
}

// NewModeGauges registers the mode gauges on reg for the given mode names.
func NewModeGauges(reg prometheus.Registerer, modes ...string) *ModeGauges {
	g := &ModeGauges{
		modes: modes,
		mode:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "anivault_mode", Help: "1 for the system's current mode as this process knows it."}, []string{"mode"}),
		epoch: prometheus.NewGauge(prometheus.GaugeOpts{Name: "anivault_mode_epoch", Help: "Epoch of the current mode as this process knows it."}),
	}
	reg.MustRegister(g.mode, g.epoch)
	return g
}

// Set records the current mode and epoch.
func (g *ModeGauges) Set(mode string, epoch int64) {
	for _, m := range g.modes {
		v := 0.0
		if m == mode {
			v = 1
		}
		g.mode.WithLabelValues(m).Set(v)
	}
	g.epoch.Set(float64(epoch))
}

// ServeAdmin serves GET /metrics (reg), /healthz (200 while the process
// runs) and /readyz (200 when ready reports true, else 503 with the reason)
// on addr until ctx is done, and returns only once the server has shut
// down, so that its caller can wait for it. An empty addr serves nothing
// and returns at once. A port that cannot be bound is logged, not fatal
// (and returns at once): the service works without its admin endpoints.
func ServeAdmin(ctx context.Context, addr string, reg *prometheus.Registry, ready func() (bool, string), log *slog.Logger) {
	if addr == "" {
		return
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeStatus(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ok, why := ready(); !ok {
			writeStatus(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": why})
			return
		}
		writeStatus(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		log.Error("admin endpoints (/metrics, /healthz, /readyz) unavailable: cannot listen", "admin_addr", addr, "error", err)
		return
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second}
	log.Info("admin endpoints listening", "admin_addr", ln.Addr().String())
	shutDown := make(chan struct{})
	go func() {
		defer close(shutDown)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("admin endpoints stopped", "error", fmt.Errorf("admin http: %w", err))
	}
	<-shutDown // Serve returns when Shutdown begins; wait until it ends
}

func writeStatus(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
