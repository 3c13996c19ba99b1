package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/hlc"
	"github.com/anivault/anivault/pkg/natsconn"
	"github.com/anivault/anivault/pkg/topology"
	"github.com/anivault/anivault/pkg/wmnats"
)

// producerWritesInFlight is how many producers' writes a node applies at
// once (they share group commits); the node pulls no more than that. With
// group commit on (DB_GROUP_COMMIT_MAX above it) a node applies up to a
// statement's worth at once, at most maxProducerWritesInFlight: a write
// pulled is being applied, not waiting in the node's memory while its ack
// wait runs out (TestProducerBacklogDrainsThroughWriterLeaderLoss holds three
// nodes to 200 unacknowledged writes through a leader loss).
const (
	producerWritesInFlight    = 16
	maxProducerWritesInFlight = 48
)

func (c Config) producerInFlight() int {
	return min(max(producerWritesInFlight, c.DBGroupCommitMax), maxProducerWritesInFlight)
}

// producerWriteTimeout bounds the handling of one producer's write (the
// router's retries included); a write not applied by then is given back to
// the consumer and delivered again.
const producerWriteTimeout = 30 * time.Second

// newRouter wires the watermill router: producers' writes from the shared
// durable consumer, metadata.changed from every other node (on changedConn,
// the no-echo connection n.changedPub publishes on), and db.health.
func (n *Node) newRouter(ctx context.Context, changedConn *nats.Conn) (*message.Router, error) {
	router, err := wmnats.NewRouter(wmnats.RouterConfig{
		PoisonPublisher: n.jsPub, PoisonTopic: n.subj.Of(events.SubjectPoison),
		Retry: 3, RetryInitial: 200 * time.Millisecond, RetryMaxTimeout: 10 * time.Second,
	}, n.wmLog)
	if err != nil {
		return nil, err
	}
	// Subscribers drain their connection on close, so each gets its own.
	writerConn, err := natsconn.Connect(ctx, n.cfg.NATS, "anivault-cache-node-writes-"+n.cfg.NodeID, n.log)
	if err != nil {
		return nil, err
	}
	// Producers' writes are applied concurrently (their versions are their
	// stream timestamps, so the order of application does not matter), and
	// the node pulls only as many as it applies at once: a write never waits
	// in the node's memory while JetStream, its ack wait over, delivers it to
	// another node (chaos seeds 45 and 46).
	writes, err := wmnats.NewDurable(writerConn, wmnats.DurableConfig{
		Stream: n.subj.Name(events.StreamMetadata), Consumer: n.subj.Name(events.ConsumerMetadataWriter),
		MaxInFlight: n.cfg.producerInFlight(), NakDelay: time.Second, HandleTimeout: producerWriteTimeout,
		Logger: n.log.With("component", "producer-writes"),
	})
	if err != nil {
		return nil, err
	}
	// A durable subscriber reads its consumer whatever the topic: the topic
	// names the consumer, not a subject.
	router.AddConsumerHandler("metadata_writes", n.subj.Name(events.ConsumerMetadataWriter), writes, n.handleProducerWrite)

	changed, err := wmnats.NewCoreSubscriber(changedConn, n.wmLog)
	if err != nil {
		return nil, err
	}
	router.AddConsumerHandler("metadata_changed", n.subj.Of(events.SubjectMetadataChanged), changed, n.handleChanged)

	healthConn, err := natsconn.Connect(ctx, n.cfg.NATS, "anivault-cache-node-health-"+n.cfg.NodeID, n.log)
	if err != nil {
		return nil, err
	}
	health, err := wmnats.NewCoreSubscriber(healthConn, n.wmLog)
	if err != nil {
		return nil, err
	}
	router.AddConsumerHandler("db_health", n.subj.Of(events.SubjectDBHealth), health, func(msg *message.Message) error {
		var ev events.DBHealth
		if json.Unmarshal(msg.Payload, &ev) == nil && ev.Status != "" {
			n.health.Store(&healthReport{report: ev, at: time.Now()})
		}
		return nil
	})
	return router, nil
}

// handleProducerWrite applies one metadata.upsert or metadata.delete. Its
// version comes from the message's stream timestamp, so whichever node applies
// it, and however often it is redelivered, writes keep their publish order per key.
func (n *Node) handleProducerWrite(msg *message.Message) error {
	subject := n.subj.Base(msg.Metadata.Get(wmnats.MetaSubject))
	tsNanos, err := strconv.ParseInt(msg.Metadata.Get(wmnats.MetaTimestamp), 10, 64)
	if err != nil {
		return &wmnats.Permanent{Err: fmt.Errorf("message without stream timestamp: %w", err)}
	}
	version := hlc.FromStream(time.Unix(0, tsNanos))
	var w Write
	switch subject {
	case events.SubjectMetadataUpsert:
		rec, err := events.DecodeRecord(msg.Payload)
		if err != nil {
			n.metrics.invalid.WithLabelValues("nats").Inc()
			n.log.Warn("invalid metadata.upsert sent to the poison queue", "error", err)
			return &wmnats.Permanent{Err: err}
		}
		w = Write{TMDBID: rec.TMDBID, Record: rec, Version: version}
	case events.SubjectMetadataDelete:
		d, err := events.DecodeDelete(msg.Payload)
		if err != nil {
			n.metrics.invalid.WithLabelValues("nats").Inc()
			n.log.Warn("invalid metadata.delete sent to the poison queue", "error", err)
			return &wmnats.Permanent{Err: err}
		}
		w = Write{TMDBID: d.TMDBID, Version: version}
	default:
		return &wmnats.Permanent{Err: fmt.Errorf("unexpected subject %q", subject)}
	}
	_, err = n.write(msg.Context(), w)
	return err // an unavailable write is retried, then nacked and redelivered: never lost
}

// sweepWriteOrphans applies and removes producers' writes that a NATS restart
// left in the write stream after the writer consumer saw them acknowledged
// (see topology.SweepOrphans). Each is handled as if delivered again: its
// version is its stream timestamp, so a repeat is stale.
func (n *Node) sweepWriteOrphans(ctx context.Context) {
	if n.currentMode() != events.ModeNormal || !n.sweepMu.TryLock() {
		return
	}
	defer n.sweepMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	removed, err := topology.SweepOrphans(ctx, n.js, n.subj.Name(events.StreamMetadata), n.subj.Name(events.ConsumerMetadataWriter), 500,
		func(ctx context.Context, msgs []*jetstream.RawStreamMsg) error {
			for _, m := range msgs {
				wm := message.NewMessage(fmt.Sprintf("%s-%d", events.StreamMetadata, m.Sequence), m.Data)
				wm.Metadata.Set(wmnats.MetaSubject, m.Subject)
				wm.Metadata.Set(wmnats.MetaTimestamp, strconv.FormatInt(m.Time.UnixNano(), 10))
				wm.SetContext(ctx)
				if err := n.handleProducerWrite(wm); err != nil && !wmnats.IsPermanent(err) {
					return err
				}
			}
			return nil
		})
	if err != nil {
		if ctx.Err() == nil {
			n.log.Warn("orphan sweep of the producers' write stream failed", "error", err)
		}
		return
	}
	if removed > 0 {
		n.log.Warn("the producers' write stream held acknowledged messages after a NATS restart: applied them again (versions make repeats stale) and removed them", "messages", removed)
	}
}

// handleChanged refreshes the cache from another node's committed or buffered write.
func (n *Node) handleChanged(msg *message.Message) error {
	// A node hears its own events too: skip them before decoding. An event
	// without the header is told by its payload's source.
	if msg.Metadata.Get(events.HeaderSource) == n.cfg.NodeID {
		return nil
	}
	var ev struct {
		Source  string          `json:"source"`
		TMDBID  int64           `json:"tmdb_id"`
		Version int64           `json:"version"`
		Deleted bool            `json:"deleted"`
		Record  json.RawMessage `json:"record"`
	}
	if err := json.Unmarshal(msg.Payload, &ev); err != nil {
		n.log.Warn("ignoring undecodable metadata.changed", "error", err)
		return nil
	}
	if ev.Source == n.cfg.NodeID || ev.TMDBID <= 0 || ev.Version <= 0 {
		return nil
	}
	switch {
	case n.changes.latest(ev.TMDBID) > ev.Version:
		// The change log already holds a newer write.
	case ev.Deleted:
		if !n.clock.Observe(ev.Version) {
			n.log.Warn("ignoring metadata.changed with a version beyond the clock's drift bound", "tmdb_id", ev.TMDBID, "version", ev.Version)
			return nil
		}
		n.cacheSet(ev.TMDBID, entry{version: ev.Version, deleted: true})
	case len(ev.Record) > 0 && string(ev.Record) != "null":
		body, err := n.storedRecord(ev.TMDBID, ev.Version, ev.Record)
		if err != nil {
			n.log.Warn("ignoring metadata.changed with an invalid record", "tmdb_id", ev.TMDBID, "source", ev.Source, "error", err)
			n.metrics.invalid.WithLabelValues("event").Inc()
			return nil
		}
		n.applyLocal(ev.TMDBID, ev.Version, body)
	default:
		// No record to serve: drop the stale copy so the next read goes to the database.
		if e, ok := n.cache.Peek(ev.TMDBID); ok && e.version < ev.Version {
			n.cache.Remove(ev.TMDBID)
		}
	}
	return nil
}

// storedRecord checks a record that another node encoded (in
// metadata.changed or the change log) before it is cached or served, and
// returns its canonical encoding: it passes the contract's validation, is
// the record of id at version, has an updated_at, and its version is one
// the node's clock accepts (not beyond hlc.MaxDrift ahead).
func (n *Node) storedRecord(id, version int64, raw []byte) ([]byte, error) {
	rec, err := events.DecodeRecord(raw)
	if err != nil {
		return nil, err
	}
	var meta struct {
		Version   int64      `json:"version"`
		UpdatedAt *time.Time `json:"updated_at"`
	}
	if err := json.Unmarshal(raw, &meta); err != nil {
		return nil, fmt.Errorf("record of tmdb:%d: %w", id, err)
	}
	switch {
	case rec.TMDBID != id:
		return nil, fmt.Errorf("record of tmdb:%d carries tmdb_id %d", id, rec.TMDBID)
	case meta.Version != version:
		return nil, fmt.Errorf("record of tmdb:%d carries version %d, the event %d", id, meta.Version, version)
	case meta.UpdatedAt == nil:
		return nil, fmt.Errorf("record of tmdb:%d has no updated_at", id)
	case !n.clock.Observe(version):
		return nil, fmt.Errorf("record of tmdb:%d: version %d is beyond the clock's drift bound", id, version)
	}
	at := meta.UpdatedAt.UTC()
	rec.Version, rec.UpdatedAt = version, &at
	return events.Marshal(rec)
}

// publishEvent publishes a JetStream-backed event and waits, within ctx,
// for the stream's acknowledgement.
func (n *Node) publishEvent(ctx context.Context, subject string, v any) error {
	b, err := events.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", subject, err)
	}
	return wmnats.PublishJetStream(ctx, n.js, subject, message.NewMessage(watermill.NewUUID(), b))
}

// addMicroService answers metadata.get in the cache-nodes' queue group and
// makes the node visible to `nats micro ls`.
func (n *Node) addMicroService() (micro.Service, error) {
	svc, err := micro.AddService(n.nc, micro.Config{
		Name:        events.ServiceCacheNode,
		Version:     "1.0.0",
		Description: "AniVault cache-node: anime metadata reads",
		QueueGroup:  events.QueueMetadataGet,
		Metadata:    map[string]string{"node_id": n.cfg.NodeID},
	})
	if err != nil {
		return nil, fmt.Errorf("micro service: %w", err)
	}
	err = svc.AddEndpoint("get", micro.HandlerFunc(n.handleGet),
		micro.WithEndpointSubject(n.subj.Of(events.SubjectMetadataGet)),
		micro.WithEndpointQueueGroup(events.QueueMetadataGet))
	if err != nil {
		return nil, fmt.Errorf("micro endpoint: %w", err)
	}
	// AddService does not flush: make the subscription known to the server
	// before the node reports ready.
	if err := n.nc.FlushTimeout(5 * time.Second); err != nil {
		return nil, fmt.Errorf("micro flush: %w", err)
	}
	return svc, nil
}

func (n *Node) handleGet(req micro.Request) {
	g, err := events.DecodeGet(req.Data())
	if err != nil {
		n.metrics.invalid.WithLabelValues("nats").Inc()
		respondError(req, 400, err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.DBTimeout+time.Second)
	defer cancel()
	body, _, err := n.read(ctx, g.TMDBID)
	switch {
	case errors.Is(err, ErrNotFound):
		respondError(req, 404, err)
	case errors.Is(err, ErrUnavailable):
		respondError(req, 503, err)
	case err != nil:
		respondError(req, 500, err)
	default:
		_ = req.Respond(body)
	}
}

func respondError(req micro.Request, code int, err error) {
	rep := events.ErrorReply{Error: err.Error(), Code: code}
	var ve *events.ValidationError
	if errors.As(err, &ve) {
		rep.Field = ve.Field
	}
	b, _ := events.Marshal(rep)
	_ = req.Error(strconv.Itoa(code), err.Error(), b)
}
