package node

import (
	"context"
	"time"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/modefollow"
)

// modePollInterval bounds how long a missed KV update can go unnoticed: a KV
// watcher does not recover by itself after a lost connection, so the node's
// mode follower also re-reads the key and re-creates its watcher.
const modePollInterval = time.Second

// watchMode follows the mode in the KV bucket until ctx is done. The node is
// ready once it knows a mode (normal at epoch 0 while no manager has written
// one).
func (n *Node) watchMode(ctx context.Context) {
	f := modefollow.New(modefollow.KVBucket(n.js, n.kv), modefollow.Options{
		PollInterval:   modePollInterval,
		RequestTimeout: 2 * time.Second,
		Logger:         n.log,
	})
	f.Run(ctx, func(_ context.Context, mc events.ModeChanged) bool {
		n.applyMode(mc)
		n.ready.Store(true)
		return true
	})
}

// applyMode moves the node to mc when its epoch is newer than the node's.
func (n *Node) applyMode(mc events.ModeChanged) {
	prev, wasKnown, changed := n.mode.set(mc)
	if !changed {
		return
	}
	n.metrics.setMode(mc.Mode, mc.Epoch)
	if !wasKnown || prev.Mode != mc.Mode {
		n.log.Info("mode changed", "from", prev.Mode, "to", mc.Mode, "epoch", mc.Epoch, "reason", mc.Reason)
	}
	if mc.Mode == events.ModeCacheOnly && (!wasKnown || prev.Mode != events.ModeCacheOnly) {
		n.log.Warn("Cache-only mode enabled", "epoch", mc.Epoch, "reason", mc.Reason)
	}
	if wasKnown && prev.Mode == events.ModeCacheOnly && mc.Mode != events.ModeCacheOnly {
		n.log.Info("Cache-only mode disabled", "epoch", mc.Epoch, "mode", mc.Mode)
	}
	// A replay belongs to one recovering epoch; any newer mode ends it.
	n.replayer.stop()
	if mc.Mode == events.ModeRecovering {
		n.replayer.start(mc.Epoch)
	}
	// Tell the manager at once, so that it counts this node as live in the
	// new mode without waiting for the next report.
	n.statusNow()
}
