// Command recovery-manager owns the system's mode: it moves to cache-only on
// db.unhealthy, through recovering back to normal once every live cache-node
// replayed its buffered writes, and answers operators' requests.
package main

import (
	"github.com/anivault/anivault/pkg/svckit"
	"github.com/anivault/anivault/services/recovery-manager/internal/manager"
)

func main() {
	svckit.Main("recovery-manager", manager.Run)
}
