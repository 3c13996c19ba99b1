package anivault

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
)

var (
	// ErrNotFound matches a 404 reply: the record is unknown or deleted.
	ErrNotFound = errors.New("anivault: not found")
	// ErrUnavailable matches a 503 reply, no responders, a timeout, and a
	// publish that still failed after its retries: the system cannot answer
	// now, and the same call may succeed later.
	ErrUnavailable = errors.New("anivault: unavailable")
	// ErrInvalid matches a 400 (or 413) reply: the service refused the request
	// itself. Such replies also match events.ErrInvalid, as local validation
	// errors (*events.ValidationError) do, so errors.Is(err, events.ErrInvalid)
	// catches invalid input wherever it was detected.
	ErrInvalid = errors.New("anivault: invalid request")
	// ErrClosed is returned by calls made after Close.
	ErrClosed = errors.New("anivault: client closed")
)

// ServiceError is an error reply, {"error": "...", "code": N}, from a service
// answering a request. Services built on NATS micro also send the code in the
// Nats-Service-Error-Code header; either is understood.
type ServiceError struct {
	// Subject is the request's subject without prefix, e.g. metadata.get.
	Subject string
	// Code is the HTTP-like status code: 400, 404, 503, ...
	Code int
	// Message is the service's description of the failure.
	Message string
	// Field names the invalid request field, when the service told it.
	Field string
}

// Error returns the subject, the service's message and the code.
func (e *ServiceError) Error() string {
	msg := e.Message
	// The services' messages usually name the field already.
	if e.Field != "" && !strings.HasPrefix(msg, e.Field+": ") {
		msg = e.Field + ": " + msg
	}
	return fmt.Sprintf("anivault: %s: %s (code %d)", e.Subject, msg, e.Code)
}

// Unwrap maps the code to the package's sentinels so that errors.Is works:
// 404 ErrNotFound, 503 ErrUnavailable, 400 and 413 ErrInvalid and events.ErrInvalid.
func (e *ServiceError) Unwrap() []error {
	switch e.Code {
	case 404:
		return []error{ErrNotFound}
	case 503:
		return []error{ErrUnavailable}
	case 400, 413:
		return []error{ErrInvalid, events.ErrInvalid}
	}
	return nil
}

// transient reports whether err is worth retrying: the same call may succeed
// once a server restart or a reconnect is over.
func (c *Client) transient(err error) bool {
	switch {
	case err == nil, errors.Is(err, context.Canceled):
		return false
	case errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrReconnectBufExceeded),
		errors.Is(err, nats.ErrDisconnected),
		errors.Is(err, jetstream.ErrJetStreamNotEnabled):
		return true
	case errors.Is(err, nats.ErrConnectionClosed),
		errors.Is(err, jetstream.ErrConnectionClosed),
		errors.Is(err, nats.ErrConnectionDraining):
		// Only the owner's Close ends a connection made with MaxReconnects(-1);
		// until then a "closed" error comes from a connection being replaced.
		return !c.nc.IsClosed() && !c.nc.IsDraining()
	}
	// JetStream answers 503 while it is starting or its meta layer is busy.
	if apiErr, ok := errors.AsType[*jetstream.APIError](err); ok && apiErr.Code == 503 {
		return true
	}
	return false
}
