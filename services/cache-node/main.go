// Command cache-node serves anime metadata over HTTP and NATS, buffers writes
// durably while the database is unavailable, and replays them on recovery.
package main

import (
	"github.com/anivault/anivault/pkg/svckit"
	"github.com/anivault/anivault/services/cache-node/internal/node"
)

func main() {
	svckit.Main("cache-node", node.Run)
}
