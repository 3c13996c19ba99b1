package manager

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// peers is what the manager's /metrics shows of the health-monitors and the
// cache-nodes it hears from: a copy of the loop's view, taken on every
// evaluation tick (the loop owns the maps), and aged when scraped, so a
// monitor that went silent shows at once.
type peers struct {
	mu          sync.Mutex
	monitors    map[string]monitorSeen
	nodesSeen   []time.Time
	nodeTimeout time.Duration
}

var (
	monitorsLiveDesc = prometheus.NewDesc("anivault_monitors_live",
		"Health-monitors this manager heard from within three of their check intervals: the monitors a majority is counted over.", nil, nil)
	monitorAgeDesc = prometheus.NewDesc("anivault_monitor_last_report_age_seconds",
		"Seconds since this manager last heard from each health-monitor it knows (a monitor is forgotten 100 of its lives after its last report).",
		[]string{"monitor"}, nil)
	nodesLiveDesc = prometheus.NewDesc("anivault_nodes_live",
		"Cache-nodes whose node.status this manager received within NODE_TIMEOUT.", nil, nil)
)

// observe copies the loop's view; it runs on the loop goroutine.
func (p *peers) observe(monitors monitorVotes, nodes map[string]nodeSeen) {
	mons := make(map[string]monitorSeen, len(monitors))
	for id, m := range monitors {
		mons[id] = m
	}
	seen := make([]time.Time, 0, len(nodes))
	for _, n := range nodes {
		seen = append(seen, n.seen)
	}
	p.mu.Lock()
	p.monitors, p.nodesSeen = mons, seen
	p.mu.Unlock()
}

func (p *peers) Describe(ch chan<- *prometheus.Desc) {
	ch <- monitorsLiveDesc
	ch <- monitorAgeDesc
	ch <- nodesLiveDesc
}

func (p *peers) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	live := monitorVotes(p.monitors).live(now)
	ch <- prometheus.MustNewConstMetric(monitorsLiveDesc, prometheus.GaugeValue, float64(len(live)))
	for id, m := range p.monitors {
		ch <- prometheus.MustNewConstMetric(monitorAgeDesc, prometheus.GaugeValue, now.Sub(m.last).Seconds(), id)
	}
	nodes := 0
	for _, s := range p.nodesSeen {
		if now.Sub(s) <= p.nodeTimeout {
			nodes++
		}
	}
	ch <- prometheus.MustNewConstMetric(nodesLiveDesc, prometheus.GaugeValue, float64(nodes))
}
