// Package events is the one home of AniVault's public NATS contract: subject
// names, stream, consumer and KV bucket names, and the JSON payloads of every
// event, request and reply. It imports only the standard library so that any
// Go producer or subscriber can depend on it without pulling in the services.
package events
