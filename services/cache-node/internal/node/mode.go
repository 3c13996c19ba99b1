package node

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
)

// modePollInterval bounds how long a missed KV update can go unnoticed: a KV
// watcher does not recover by itself after a lost connection, so the node also
// re-reads the key and re-creates its watcher.
const modePollInterval = time.Second

// watchMode follows the mode in the KV bucket until ctx is done.
func (n *Node) watchMode(ctx context.Context) {
	var lastRev uint64
	for ctx.Err() == nil {
		n.readMode(ctx, &lastRev)
		wctx, cancel := context.WithCancel(ctx)
		w, err := n.kv.Watch(wctx, events.KeyMode, jetstream.UpdatesOnly())
		if err != nil {
			cancel()
			n.log.Debug("mode watch failed, retrying", "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(modePollInterval):
			}
			continue
		}
		n.followWatcher(wctx, w, &lastRev)
		_ = w.Stop()
		cancel()
	}
}

// followWatcher applies watcher updates and polls the key; it returns to have
// the watcher re-created when the poll finds a revision the watcher missed.
func (n *Node) followWatcher(ctx context.Context, w jetstream.KeyWatcher, lastRev *uint64) {
	tick := time.NewTicker(modePollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				continue
			}
			n.applyModeEntry(e, lastRev)
		case <-tick.C:
			before := *lastRev
			n.readMode(ctx, lastRev)
			if *lastRev != before {
				return // the watcher missed an update: start a fresh one
			}
		}
	}
}

func (n *Node) readMode(ctx context.Context, lastRev *uint64) {
	gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	e, err := n.kv.Get(gctx, events.KeyMode)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		// No manager has written a mode yet: the system starts in normal mode at epoch 0.
		if _, known := n.mode.get(); !known {
			n.applyMode(events.ModeChanged{Mode: events.ModeNormal, Epoch: 0})
		}
		n.ready.Store(true)
	case err != nil:
		n.log.Debug("mode read failed", "error", err)
	default:
		n.applyModeEntry(e, lastRev)
	}
}

func (n *Node) applyModeEntry(e jetstream.KeyValueEntry, lastRev *uint64) {
	if e.Operation() != jetstream.KeyValuePut {
		return
	}
	if e.Revision() > *lastRev {
		*lastRev = e.Revision()
	}
	var mc events.ModeChanged
	if err := json.Unmarshal(e.Value(), &mc); err != nil || !mc.Mode.Valid() {
		n.log.Error("ignoring invalid mode in KV", "revision", e.Revision(), "error", err)
		return
	}
	n.applyMode(mc)
	n.ready.Store(true)
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
	n.replay.stop()
	if mc.Mode == events.ModeRecovering {
		n.startReplay(mc.Epoch)
	}
	// Tell the manager at once, so that it counts this node as live in the
	// new mode without waiting for the next report.
	n.statusNow()
}
