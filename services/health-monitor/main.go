// Command health-monitor probes PostgreSQL on an interval and publishes
// db.health, db.unhealthy and db.recovered.
package main

import (
	"github.com/anivault/anivault/pkg/svckit"
	"github.com/anivault/anivault/services/health-monitor/internal/monitor"
)

func main() {
	svckit.Main("health-monitor", monitor.Run)
}
