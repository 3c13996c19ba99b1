package anivault

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/anivault/anivault/events"
)

// Get reads record id through the cache-nodes (metadata.get), with its
// Version and UpdatedAt. It fails with an error matching ErrNotFound when the
// record is unknown or deleted, and ErrUnavailable when no cache-node answers
// in time or the record is neither cached nor readable from the database
// (retry later). An id below 1 returns an *events.ValidationError and sends
// nothing. Get makes one attempt, bounded by RequestTimeout.
func (c *Client) Get(ctx context.Context, id int64) (*events.Record, error) {
	data, err := events.Marshal(events.GetRequest{TMDBID: id})
	if err != nil {
		return nil, fmt.Errorf("anivault: encode get: %w", err)
	}
	if _, err := events.DecodeGet(data); err != nil {
		return nil, err
	}
	var rec events.Record
	if err := c.request(ctx, events.SubjectMetadataGet, data, &rec); err != nil {
		return nil, err
	}
	return &rec, nil
}

// Status asks the recovery-manager for the system status (status.get).
func (c *Client) Status(ctx context.Context) (events.SystemStatus, error) {
	var st events.SystemStatus
	err := c.request(ctx, events.SubjectStatusGet, []byte("{}"), &st)
	return st, err
}

// ForceRecovery asks the recovery-manager to check the database now and start
// recovery if it is healthy (recovery.force), as an operator would with
// `nats req recovery.force '{}'`. The reply tells whether recovery was attempted.
func (c *Client) ForceRecovery(ctx context.Context) (events.ForceRecoveryReply, error) {
	var rep events.ForceRecoveryReply
	err := c.request(ctx, events.SubjectRecoveryForce, []byte("{}"), &rep)
	return rep, err
}

// EnterCacheOnly puts the system into cache-only mode for planned maintenance
// (recovery.cache_only.enter). Such a mode ends only with ExitCacheOnly or
// ForceRecovery, never by automatic recovery. The reason is shown in the
// system status and the mode event.
func (c *Client) EnterCacheOnly(ctx context.Context, reason string) (events.ModeReply, error) {
	data, err := events.Marshal(events.CacheOnlyEnterRequest{Reason: reason})
	if err != nil {
		return events.ModeReply{}, fmt.Errorf("anivault: encode cache-only request: %w", err)
	}
	var rep events.ModeReply
	err = c.request(ctx, events.SubjectCacheOnlyEnter, data, &rep)
	return rep, err
}

// ExitCacheOnly leaves cache-only mode through recovering, which replays the
// buffered writes first (recovery.cache_only.exit).
func (c *Client) ExitCacheOnly(ctx context.Context) (events.ModeReply, error) {
	var rep events.ModeReply
	err := c.request(ctx, events.SubjectCacheOnlyExit, []byte("{}"), &rep)
	return rep, err
}

// request sends data to the subject base and decodes the reply into out, or
// returns the reply's error.
func (c *Client) request(ctx context.Context, base string, data []byte, out any) error {
	if c.isClosed() {
		return ErrClosed
	}
	rctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	defer cancel()
	msg, err := c.nc.RequestWithContext(rctx, c.subj.Of(base), data)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("anivault: %s: %w", base, ctx.Err())
		case c.transient(err):
			return fmt.Errorf("anivault: %s: %w: %w", base, ErrUnavailable, err)
		default:
			return fmt.Errorf("anivault: %s: %w", base, err)
		}
	}
	if err := replyError(base, msg); err != nil {
		return err
	}
	if err := json.Unmarshal(msg.Data, out); err != nil {
		return fmt.Errorf("anivault: %s: decode reply: %w", base, err)
	}
	return nil
}

// replyError returns the *ServiceError a reply carries, or nil for a success.
// NATS micro services flag errors with the Nats-Service-Error-Code header; a
// plain responder sends only the {"error": "...", "code": N} body.
func replyError(base string, msg *nats.Msg) error {
	var body struct {
		Error *string `json:"error"`
		Code  int     `json:"code"`
		Field string  `json:"field"`
	}
	decoded := json.Unmarshal(msg.Data, &body) == nil
	hdrCode := msg.Header.Get(micro.ErrorCodeHeader)
	if hdrCode == "" && (!decoded || body.Error == nil) {
		return nil
	}
	e := &ServiceError{Subject: base, Code: body.Code, Field: body.Field}
	if body.Error != nil {
		e.Message = *body.Error
	} else {
		e.Message = msg.Header.Get(micro.ErrorHeader)
	}
	if e.Code == 0 {
		e.Code, _ = strconv.Atoi(hdrCode)
	}
	return e
}
