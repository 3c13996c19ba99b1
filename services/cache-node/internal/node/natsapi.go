package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
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
// nodes to 3 × 256 unacknowledged writes through a leader loss). At 48 the
// statements stayed small and a node applied 1,200 writes/s; at 256, 2,700
// (the bench's ingest phase).
const (
	producerWritesInFlight    = 16
	maxProducerWritesInFlight = 256
)

func (c Config) producerInFlight() int {
	return min(max(producerWritesInFlight, c.DBGroupCommitMax), maxProducerWritesInFlight)
}

// producerWriteTimeout bounds the handling of one producer's write (the
// router's retries included); a write not applied by then is given back to
// the consumer and delivered again.
const producerWriteTimeout = 30 * time.Second

// natsAPI is the NATS transport: producers' writes from the shared durable
// consumer, metadata.changed from the other nodes and db.health from the
// monitors (a watermill router), the orphan sweep of the producers' write
// stream, and metadata.get (a micro endpoint). It decodes and checks what
// arrives and hands it to the node (natsDeps).
type natsAPI struct {
	cfg     natsConfig
	deps    natsDeps
	subj    events.Subjects
	log     *slog.Logger
	metrics *metrics
	// sweepMu lets one orphan sweep of the producers' write stream run at a time.
	sweepMu sync.Mutex

	// Set by attach once connected.
	nc     *nats.Conn
	js     jetstream.JetStream
	poison message.Publisher
	wmLog  watermill.LoggerAdapter
}

// natsConfig is the NATS transport's part of the node's configuration.
type natsConfig struct {
	NATS   natsconn.Config
	NodeID string
	// InFlight is how many producers' writes the node applies (and pulls) at once.
	InFlight int
	// GetTimeout bounds one metadata.get (DB_TIMEOUT plus a second).
	GetTimeout time.Duration
}

// natsDeps is what the NATS transport uses of the rest of the node.
type natsDeps struct {
	Mode  func() events.Mode
	Write func(ctx context.Context, w Write) (WriteResult, error)
	Read  func(ctx context.Context, id int64) ([]byte, Source, error)
	// Changed applies another node's metadata.changed to the cache.
	Changed func(ev changedEvent)
	// Health keeps the monitors' latest db.health.
	Health func(ev events.DBHealth)
}

// changedEvent is the part of metadata.changed a node acts on.
type changedEvent struct {
	Source  string          `json:"source"`
	TMDBID  int64           `json:"tmdb_id"`
	Version int64           `json:"version"`
	Deleted bool            `json:"deleted"`
	Record  json.RawMessage `json:"record"`
}

func newNATSAPI(cfg natsConfig, deps natsDeps, subj events.Subjects, log *slog.Logger, m *metrics) (*natsAPI, error) {
	if cfg.NodeID == "" || cfg.InFlight < 1 || cfg.GetTimeout <= 0 || log == nil || m == nil ||
		deps.Mode == nil || deps.Write == nil || deps.Read == nil || deps.Changed == nil || deps.Health == nil {
		return nil, errors.New("nats transport: invalid configuration or a missing dependency")
	}
	return &natsAPI{cfg: cfg, deps: deps, subj: subj, log: log, metrics: m}, nil
}

// newNATSAPI makes the node's NATS transport over its read and write paths
// and its cache.
func (n *Node) newNATSAPI() (*natsAPI, error) {
	return newNATSAPI(natsConfig{NATS: n.cfg.NATS, NodeID: n.cfg.NodeID, InFlight: n.cfg.producerInFlight(),
		GetTimeout: n.cfg.DBTimeout + time.Second}, natsDeps{
		Mode: n.currentMode, Write: n.write, Read: n.read, Changed: n.applyChanged,
		Health: func(ev events.DBHealth) { n.health.Store(&healthReport{report: ev, at: time.Now()}) },
	}, n.subj, n.log, n.metrics)
}

// attach gives the transport its connection, JetStream, the publisher of
// the poison queue and watermill's logger.
func (a *natsAPI) attach(nc *nats.Conn, js jetstream.JetStream, poison message.Publisher, wmLog watermill.LoggerAdapter) {
	a.nc, a.js, a.poison, a.wmLog = nc, js, poison, wmLog
}

// newRouter wires the watermill router: producers' writes from the shared
// durable consumer, metadata.changed from every other node (on changedConn,
// the no-echo connection the node's changedPub publishes on), and db.health.
func (a *natsAPI) router(ctx context.Context, changedConn *nats.Conn) (*message.Router, error) {
	router, err := wmnats.NewRouter(wmnats.RouterConfig{
		PoisonPublisher: a.poison, PoisonTopic: a.subj.Of(events.SubjectPoison),
		Retry: 3, RetryInitial: 200 * time.Millisecond, RetryMaxTimeout: 10 * time.Second,
	}, a.wmLog)
	if err != nil {
		return nil, err
	}
	// Subscribers drain their connection on close, so each gets its own.
	writerConn, err := natsconn.Connect(ctx, a.cfg.NATS, "anivault-cache-node-writes-"+a.cfg.NodeID, a.log)
	if err != nil {
		return nil, err
	}
	// Producers' writes are applied concurrently (their versions are their
	// stream timestamps, so the order of application does not matter), and
	// the node pulls only as many as it applies at once: a write never waits
	// in the node's memory while JetStream, its ack wait over, delivers it to
	// another node (chaos seeds 45 and 46).
	writes, err := wmnats.NewDurable(writerConn, wmnats.DurableConfig{
		Stream: a.subj.Name(events.StreamMetadata), Consumer: a.subj.Name(events.ConsumerMetadataWriter),
		MaxInFlight: a.cfg.InFlight, NakDelay: time.Second, HandleTimeout: producerWriteTimeout,
		Logger: a.log.With("component", "producer-writes"),
	})
	if err != nil {
		return nil, err
	}
	// A durable subscriber reads its consumer whatever the topic: the topic
	// names the consumer, not a subject.
	router.AddConsumerHandler("metadata_writes", a.subj.Name(events.ConsumerMetadataWriter), writes, a.handleProducerWrite)

	changed, err := wmnats.NewCoreSubscriber(changedConn, a.wmLog)
	if err != nil {
		return nil, err
	}
	router.AddConsumerHandler("metadata_changed", a.subj.Of(events.SubjectMetadataChanged), changed, a.handleChanged)

	healthConn, err := natsconn.Connect(ctx, a.cfg.NATS, "anivault-cache-node-health-"+a.cfg.NodeID, a.log)
	if err != nil {
		return nil, err
	}
	health, err := wmnats.NewCoreSubscriber(healthConn, a.wmLog)
	if err != nil {
		return nil, err
	}
	router.AddConsumerHandler("db_health", a.subj.Of(events.SubjectDBHealth), health, func(msg *message.Message) error {
		var ev events.DBHealth
		if json.Unmarshal(msg.Payload, &ev) == nil && ev.Status != "" {
			a.deps.Health(ev)
		}
		return nil
	})
	return router, nil
}

// handleProducerWrite applies one metadata.upsert or metadata.delete. Its
// version comes from the message's stream timestamp, so whichever node applies
// it, and however often it is redelivered, writes keep their publish order per key.
func (a *natsAPI) handleProducerWrite(msg *message.Message) error {
	subject := a.subj.Base(msg.Metadata.Get(wmnats.MetaSubject))
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
			a.metrics.invalid.WithLabelValues("nats").Inc()
			a.log.Warn("invalid metadata.upsert sent to the poison queue", "error", err)
			return &wmnats.Permanent{Err: err}
		}
		w = Write{TMDBID: rec.TMDBID, Record: rec, Version: version}
	case events.SubjectMetadataDelete:
		d, err := events.DecodeDelete(msg.Payload)
		if err != nil {
			a.metrics.invalid.WithLabelValues("nats").Inc()
			a.log.Warn("invalid metadata.delete sent to the poison queue", "error", err)
			return &wmnats.Permanent{Err: err}
		}
		w = Write{TMDBID: d.TMDBID, Version: version}
	default:
		return &wmnats.Permanent{Err: fmt.Errorf("unexpected subject %q", subject)}
	}
	_, err = a.deps.Write(msg.Context(), w)
	return err // an unavailable write is retried, then nacked and redelivered: never lost
}

// trimWrites removes from the producers' write stream every write the
// writer consumer acknowledged, in any mode: a write is acknowledged once
// applied, buffered or sent to the poison queue. The stream refuses new
// writes when full, so what was applied must not stay in it.
func (a *natsAPI) trimWrites(ctx context.Context) {
	if !a.sweepMu.TryLock() {
		return
	}
	defer a.sweepMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	removed, err := topology.TrimAcknowledged(ctx, a.js, a.subj.Name(events.StreamMetadata), a.subj.Name(events.ConsumerMetadataWriter))
	switch {
	case errors.Is(err, topology.ErrWorkQueue):
		a.sweepWriteOrphans(ctx)
	case err != nil:
		if ctx.Err() == nil {
			a.log.Warn("trim of the producers' write stream failed", "error", err)
		}
	case removed > 0:
		a.log.Debug("trimmed the producers' write stream", "messages", removed)
	}
}

// sweepWriteOrphans applies and removes producers' writes that a NATS restart
// left in a work-queue write stream (made by an earlier version) after the
// writer consumer saw them acknowledged (see topology.SweepOrphans). Each is
// handled as if delivered again: its version is its stream timestamp, so a
// repeat is stale.
func (a *natsAPI) sweepWriteOrphans(ctx context.Context) {
	if a.deps.Mode() != events.ModeNormal {
		return
	}
	removed, err := topology.SweepOrphans(ctx, a.js, a.subj.Name(events.StreamMetadata), a.subj.Name(events.ConsumerMetadataWriter), 500,
		func(ctx context.Context, msgs []*jetstream.RawStreamMsg) error {
			for _, m := range msgs {
				wm := message.NewMessage(fmt.Sprintf("%s-%d", events.StreamMetadata, m.Sequence), m.Data)
				wm.Metadata.Set(wmnats.MetaSubject, m.Subject)
				wm.Metadata.Set(wmnats.MetaTimestamp, strconv.FormatInt(m.Time.UnixNano(), 10))
				wm.SetContext(ctx)
				if err := a.handleProducerWrite(wm); err != nil && !wmnats.IsPermanent(err) {
					return err
				}
			}
			return nil
		})
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("orphan sweep of the producers' write stream failed", "error", err)
		}
		return
	}
	if removed > 0 {
		a.log.Warn("the producers' write stream held acknowledged messages after a NATS restart: applied them again (versions make repeats stale) and removed them", "messages", removed)
	}
}

// handleChanged refreshes the cache from another node's committed or buffered write.
func (a *natsAPI) handleChanged(msg *message.Message) error {
	// A node hears its own events too: skip them before decoding. An event
	// without the header is told by its payload's source.
	if msg.Metadata.Get(events.HeaderSource) == a.cfg.NodeID {
		return nil
	}
	var ev changedEvent
	if err := json.Unmarshal(msg.Payload, &ev); err != nil {
		a.log.Warn("ignoring undecodable metadata.changed", "error", err)
		return nil
	}
	if ev.Source == a.cfg.NodeID || ev.TMDBID <= 0 || ev.Version <= 0 {
		return nil
	}
	a.deps.Changed(ev)
	return nil
}

// applyChanged refreshes the cache from another node's committed or
// buffered write (metadata.changed, decoded and checked by the transport).
func (n *Node) applyChanged(ev changedEvent) {
	switch {
	case n.changes.latest(ev.TMDBID) > ev.Version:
		// The change log already holds a newer write.
	case ev.Deleted:
		if !n.clock.Observe(ev.Version) {
			n.log.Warn("ignoring metadata.changed with a version beyond the clock's drift bound", "tmdb_id", ev.TMDBID, "version", ev.Version)
			return
		}
		n.cacheSet(ev.TMDBID, entry{version: ev.Version, deleted: true})
	case len(ev.Record) > 0 && string(ev.Record) != "null":
		body, err := n.storedRecord(ev.TMDBID, ev.Version, ev.Record)
		if err != nil {
			n.log.Warn("ignoring metadata.changed with an invalid record", "tmdb_id", ev.TMDBID, "source", ev.Source, "error", err)
			n.metrics.invalid.WithLabelValues("event").Inc()
			return
		}
		n.applyLocal(ev.TMDBID, ev.Version, body)
	default:
		// No record to serve: drop the stale copy so the next read goes to the database.
		if e, ok := n.cache.Peek(ev.TMDBID); ok && e.version < ev.Version {
			n.cache.Remove(ev.TMDBID)
		}
	}
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
func (a *natsAPI) microService() (micro.Service, error) {
	svc, err := micro.AddService(a.nc, micro.Config{
		Name:        events.ServiceCacheNode,
		Version:     "1.0.0",
		Description: "AniVault cache-node: anime metadata reads",
		QueueGroup:  events.QueueMetadataGet,
		Metadata:    map[string]string{"node_id": a.cfg.NodeID},
	})
	if err != nil {
		return nil, fmt.Errorf("micro service: %w", err)
	}
	err = svc.AddEndpoint("get", micro.HandlerFunc(a.handleGet),
		micro.WithEndpointSubject(a.subj.Of(events.SubjectMetadataGet)),
		micro.WithEndpointQueueGroup(events.QueueMetadataGet))
	if err != nil {
		return nil, fmt.Errorf("micro endpoint: %w", err)
	}
	// AddService does not flush: make the subscription known to the server
	// before the node reports ready.
	if err := a.nc.FlushTimeout(5 * time.Second); err != nil {
		return nil, fmt.Errorf("micro flush: %w", err)
	}
	return svc, nil
}

func (a *natsAPI) handleGet(req micro.Request) {
	g, err := events.DecodeGet(req.Data())
	if err != nil {
		a.metrics.invalid.WithLabelValues("nats").Inc()
		respondError(req, 400, err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.GetTimeout)
	defer cancel()
	body, _, err := a.deps.Read(ctx, g.TMDBID)
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
