// Package anivault is the Go client of AniVault for producer services, mode
// subscribers and operator tools. It speaks the public NATS contract (subjects,
// payloads and names all come from package events) and depends on nothing
// else of the system.
//
// # Producers
//
// Upsert and Delete validate a write locally with the server's own rules
// before any network I/O: an invalid record returns the *events.ValidationError
// that names the field, and nothing is sent. A valid write is published to
// metadata.upsert or metadata.delete through JetStream and the call returns
// once the stream has stored it (Ack). Transient failures (timeouts, no
// responders while a server restarts, a connection that is reconnecting) are
// retried with exponential backoff. Every attempt of one call carries the same
// JetStream message id, so the stream's duplicate window drops a retry of a
// write that was stored but whose acknowledgement was lost: a write is applied
// once however often it had to be sent.
//
//	c, err := anivault.Connect(natsURL, anivault.Options{})
//	...
//	ack, err := c.Upsert(ctx, &events.Record{TMDBID: 1429, Title: "Attack on Titan"})
//
// # Mode subscribers
//
// Mode reads the system's current mode from the KV bucket (normal at epoch 0
// before any mode was ever recorded). WatchMode delivers the current mode and
// then every change, in epoch order and never an older epoch after a newer
// one, across NATS disconnects and server restarts. A crawler pauses on
// events.ModeCacheOnly and resumes on events.ModeNormal:
//
//	modes, err := c.WatchMode(ctx)
//	...
//	for m := range modes {
//		crawler.SetPaused(m.Mode != events.ModeNormal)
//	}
//
// # Reads and operator calls
//
// Get reads a record through the cache-nodes (metadata.get). Status,
// ForceRecovery, EnterCacheOnly and ExitCacheOnly are the recovery-manager's
// operator requests. Error replies come back as *ServiceError, which matches
// ErrNotFound (code 404), ErrUnavailable (503) or ErrInvalid (400) with
// errors.Is; no responders and timeouts match ErrUnavailable too.
//
// # Connections
//
// New takes a connection the caller owns; create it with nats.MaxReconnects(-1)
// so that it never gives up reconnecting, or the client stops working for good
// after the first long outage. Connect dials one with suitable options and
// closes it in Close.
//
// # Without Go
//
// The same contract from the nats CLI, for services not written in Go:
//
//	nats req metadata.upsert '{"tmdb_id":1429,"title":"Attack on Titan"}' -H Nats-Msg-Id:<unique id>
//	nats req metadata.delete '{"tmdb_id":1429}' -H Nats-Msg-Id:<unique id>
//	nats req metadata.get '{"tmdb_id":1429}'
//	nats kv get anivault mode
//	nats kv watch anivault mode
//	nats req status.get '{}'
//	nats req recovery.force '{}'
//	nats req recovery.cache_only.enter '{"reason":"planned maintenance"}'
//	nats req recovery.cache_only.exit '{}'
package anivault
