// Package topology creates AniVault's JetStream streams, durable consumers and
// KV bucket explicitly, with the contract's names. It is a domain package: it
// knows the events package's names. Every process calls the parts it needs at
// start; creation is idempotent (CreateOrUpdate), so they may race safely.
//
// Where the services' NATS roles may not create streams (the shipped
// deployments: deployments/nats/accounts.conf), the provision command makes
// everything once as the admin role, and the services run with
// NATS_PROVISION=false: their Topology is CheckOnly, and the same calls only
// check that what they need exists.
package topology

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrNotProvisioned is the error (wrapped, naming what is missing) of a
// CheckOnly topology that lacks a stream, bucket or consumer: the provision
// step has not run yet, or something deleted it.
var ErrNotProvisioned = errors.New("JetStream topology not provisioned (run the provision command as the NATS admin role)")

// BufferLimits bound the durable write buffer. The stream refuses new writes
// (DiscardNew) when a limit is reached, so a full buffer is visible to clients
// as 503 rather than a silent loss of old writes.
type BufferLimits struct {
	// MaxMsgs is the most buffer messages (each holds one or more writes).
	MaxMsgs int64
	// MaxBytes is the most bytes the buffer holds.
	MaxBytes int64
	// Replicas is the stream's replication factor (1 for a single server).
	Replicas int
}

// DefaultBufferLimits returns the limits used where a field is zero, and
// the defaults of BUFFER_MAX_MSGS, BUFFER_MAX_BYTES and BUFFER_REPLICAS.
func DefaultBufferLimits() BufferLimits {
	return BufferLimits{MaxMsgs: 1_000_000, MaxBytes: 1 << 30, Replicas: 1}
}

// Validate reports every limit out of its range, naming its variable:
// BUFFER_MAX_MSGS in [1, 2^40], BUFFER_MAX_BYTES in [1 MiB (one largest
// buffer message), 2^50], BUFFER_REPLICAS in [1, 5] (JetStream's most).
func (l BufferLimits) Validate() error {
	return errors.Join(
		envconfig.InRange("BUFFER_MAX_MSGS", l.MaxMsgs, 1, 1<<40),
		envconfig.InRange("BUFFER_MAX_BYTES", l.MaxBytes, MaxBufferMsgBytes, 1<<50),
		envconfig.InRange("BUFFER_REPLICAS", l.Replicas, 1, 5),
	)
}

func (l BufferLimits) withDefaults() BufferLimits {
	def := DefaultBufferLimits()
	if l.MaxMsgs <= 0 {
		l.MaxMsgs = def.MaxMsgs
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = def.MaxBytes
	}
	if l.Replicas <= 0 {
		l.Replicas = 1
	}
	return l
}

// MaxBufferMsgBytes is the largest buffer message (a group-committed batch).
const MaxBufferMsgBytes = 1 << 20

// Topology holds the subject namer and a JetStream handle.
type Topology struct {
	JS       jetstream.JetStream
	Subjects events.Subjects
	// Replicas is the replication factor of the events stream and the mode
	// bucket (0 or 1 on a single server; 3 on a three-server cluster, so that
	// losing a server loses neither the mode nor the events).
	Replicas int
	// CheckOnly makes every Ensure method create and change nothing: it
	// checks that the streams, the bucket and the durable consumers it would
	// make exist, and fails with ErrNotProvisioned when one is missing. For
	// processes whose NATS role may only use the topology (NATS_PROVISION=false).
	CheckOnly bool
}

// New returns a Topology.
func New(js jetstream.JetStream, subj events.Subjects) (*Topology, error) {
	if js == nil {
		return nil, errors.New("topology: nil jetstream")
	}
	return &Topology{JS: js, Subjects: subj}, nil
}

// EnsureEvents creates the events stream (db.*, mode.*, replay.*) and the mode KV bucket.
func (t *Topology) EnsureEvents(ctx context.Context) (jetstream.KeyValue, error) {
	s := t.Subjects
	err := t.ensureStream(ctx, jetstream.StreamConfig{
		Name:              s.Name(events.StreamEvents),
		Description:       "AniVault events: database health, mode changes, replay reports",
		Subjects:          []string{s.Of(events.SubjectsDB), s.Of(events.SubjectsMode), s.Of(events.SubjectsReplay)},
		Storage:           jetstream.FileStorage,
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		MaxAge:            7 * 24 * time.Hour,
		MaxMsgsPerSubject: 10_000,
		MaxBytes:          256 << 20,
		Replicas:          max(t.Replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("ensure stream %s: %w", events.StreamEvents, err)
	}
	kv, err := t.ensureKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      s.Name(events.BucketName),
		Description: "AniVault current mode (key mode)",
		History:     16,
		Storage:     jetstream.FileStorage,
		Replicas:    max(t.Replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("ensure kv %s: %w", events.BucketName, err)
	}
	return kv, nil
}

// CallTimeout bounds one provisioning request. While several processes
// create or update the same streams at once (a fleet started together on a
// fresh cluster), a request can go unanswered; the caller retries within its
// start budget instead of waiting for ever.
const CallTimeout = 5 * time.Second

// ensureStream creates want, or updates the existing stream when its
// configuration differs. It never lowers the replicas of an existing stream
// (a process started with the default BUFFER_REPLICAS=1 must not weaken a
// stream another made with 3), and it sends no update when nothing differs,
// so that many processes provisioning at once are quick and safe.
func (t *Topology) ensureStream(ctx context.Context, want jetstream.StreamConfig) error {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	st, err := t.JS.Stream(ctx, want.Name)
	if t.CheckOnly {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("stream %s is missing: %w", want.Name, ErrNotProvisioned)
		}
		return t.denied(err, "look up stream "+want.Name, "STREAM.INFO."+want.Name)
	}
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if _, err = t.JS.CreateStream(ctx, want); err == nil || !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return t.denied(err, "create stream "+want.Name, "STREAM.CREATE."+want.Name)
		}
		// Another process created it in between: compare with theirs.
		st, err = t.JS.Stream(ctx, want.Name)
	}
	if err != nil {
		return err
	}
	have := st.CachedInfo().Config
	want.Replicas = max(want.Replicas, have.Replicas)
	if have.Retention == jetstream.WorkQueuePolicy && want.Retention != have.Retention {
		// The server cannot change a work queue's retention (an earlier
		// version made the producers' write stream one). It keeps working as
		// it is: each acknowledgement deletes its message. Deleting the stream
		// once it is empty lets the next start create it anew.
		want.Retention = have.Retention
	}
	if sameStream(have, want) {
		return nil
	}
	_, err = t.JS.UpdateStream(ctx, want)
	return t.denied(err, "update stream "+want.Name, "STREAM.UPDATE."+want.Name)
}

// denied explains err when the server refused the JetStream API request
// (api, a subject below $JS.API.) for lack of permission: the server drops
// such a request, so the call only times out, and the connection's last
// error names the refused subject. Any other error is returned as it is.
func (t *Topology) denied(err error, what, api string) error {
	if err == nil {
		return nil
	}
	if last := t.JS.Conn().LastError(); last != nil && errors.Is(last, nats.ErrPermissionViolation) &&
		strings.Contains(last.Error(), jetstream.DefaultAPIPrefix+api+`"`) {
		return fmt.Errorf("%s: this NATS user may not publish to %s%s (%w): create the topology with the provision command as the admin role, and start the services with NATS_PROVISION=false",
			what, jetstream.DefaultAPIPrefix, api, last)
	}
	return err
}

// sameStream tells whether the server's configuration have already is want,
// for the fields AniVault sets (the server fills in defaults for the others).
func sameStream(have, want jetstream.StreamConfig) bool {
	limit := func(v int64) int64 {
		if v <= 0 {
			return -1
		}
		return v
	}
	size := func(v int32) int32 {
		if v <= 0 {
			return -1
		}
		return v
	}
	return have.Description == want.Description && slices.Equal(have.Subjects, want.Subjects) &&
		have.Retention == want.Retention && have.Discard == want.Discard && have.Storage == want.Storage &&
		have.Replicas == want.Replicas && have.MaxAge == want.MaxAge && have.AllowDirect == want.AllowDirect &&
		have.AllowAtomicPublish == want.AllowAtomicPublish &&
		limit(have.MaxMsgs) == limit(want.MaxMsgs) && limit(have.MaxBytes) == limit(want.MaxBytes) &&
		limit(have.MaxMsgsPerSubject) == limit(want.MaxMsgsPerSubject) && size(have.MaxMsgSize) == size(want.MaxMsgSize)
}

// ensureKeyValue creates the bucket, or updates it when its history or
// description differ or its replicas are below want's; it never lowers them.
func (t *Topology) ensureKeyValue(ctx context.Context, want jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	kv, err := t.JS.KeyValue(ctx, want.Bucket)
	if t.CheckOnly {
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, fmt.Errorf("KV bucket %s is missing: %w", want.Bucket, ErrNotProvisioned)
		}
		if err != nil {
			return nil, t.denied(err, "look up KV bucket "+want.Bucket, "STREAM.INFO.KV_"+want.Bucket)
		}
		return kv, nil
	}
	if err == nil {
		st, serr := t.JS.Stream(ctx, "KV_"+want.Bucket)
		if serr != nil {
			return nil, serr
		}
		have := st.CachedInfo().Config
		if have.Replicas >= want.Replicas && have.MaxMsgsPerSubject == int64(want.History) && have.Description == want.Description {
			return kv, nil
		}
		want.Replicas = max(want.Replicas, have.Replicas)
	} else if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, err
	}
	kv, err = t.JS.CreateOrUpdateKeyValue(ctx, want)
	if err != nil {
		return nil, t.denied(err, "create KV bucket "+want.Bucket, "STREAM.CREATE.KV_"+want.Bucket)
	}
	return kv, nil
}

// filters returns a consumer's subject filters sorted: the server may keep
// one filter in FilterSubject or in FilterSubjects.
func filters(c jetstream.ConsumerConfig) []string {
	out := slices.Clone(c.FilterSubjects)
	if c.FilterSubject != "" {
		out = append(out, c.FilterSubject)
	}
	slices.Sort(out)
	return out
}

// ensureConsumer creates or updates a durable consumer, sending no update
// when the fields AniVault sets already match.
func (t *Topology) ensureConsumer(ctx context.Context, stream string, want jetstream.ConsumerConfig) error {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	c, err := t.JS.Consumer(ctx, stream, want.Durable)
	if t.CheckOnly {
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("consumer %s of stream %s is missing: %w", want.Durable, stream, ErrNotProvisioned)
		}
		return t.denied(err, "look up consumer "+want.Durable, "CONSUMER.INFO."+stream+"."+want.Durable)
	}
	if err == nil {
		have := c.CachedInfo().Config
		if have.Description == want.Description && have.AckPolicy == want.AckPolicy && have.AckWait == want.AckWait &&
			have.MaxDeliver == want.MaxDeliver && (want.MaxAckPending == 0 || have.MaxAckPending == want.MaxAckPending) &&
			slices.Equal(filters(have), filters(want)) {
			return nil
		}
	} else if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return err
	}
	_, err = t.JS.CreateOrUpdateConsumer(ctx, stream, want)
	return t.denied(err, "create consumer "+want.Durable, "CONSUMER.CREATE."+stream+"."+want.Durable)
}

// EnsureManagerConsumers creates the recovery-manager's durable consumers.
func (t *Topology) EnsureManagerConsumers(ctx context.Context) error {
	s := t.Subjects
	for _, c := range []jetstream.ConsumerConfig{
		{Durable: s.Name(events.ConsumerManagerDB), FilterSubjects: []string{s.Of(events.SubjectDBUnhealthy), s.Of(events.SubjectDBRecovered)}},
		{Durable: s.Name(events.ConsumerManagerReplay), FilterSubjects: []string{s.Of(events.SubjectReplayCompleted)}},
	} {
		c.AckPolicy = jetstream.AckExplicitPolicy
		c.AckWait = 30 * time.Second
		c.MaxDeliver = -1
		c.DeliverPolicy = jetstream.DeliverAllPolicy
		if err := t.ensureConsumer(ctx, s.Name(events.StreamEvents), c); err != nil {
			return fmt.Errorf("ensure consumer %s: %w", c.Durable, err)
		}
	}
	return nil
}

// EnsureWrites creates the metadata stream, the write buffer, the change log,
// the poison stream and the cache-nodes' shared durable consumers.
func (t *Topology) EnsureWrites(ctx context.Context, limits BufferLimits) error {
	s := t.Subjects
	limits = limits.withDefaults()
	streams := []jetstream.StreamConfig{
		{
			// Not a work queue: a work queue deletes each message as it is
			// acknowledged, and syncing always that is one fsync per
			// producer's write (3,600 acknowledgements/s at most here). The
			// cache-nodes trim what the writer consumer acknowledged
			// instead, in one purge (TrimAcknowledged). DiscardNew: a full
			// stream refuses a producer's write, it never drops an unread one.
			Name:        s.Name(events.StreamMetadata),
			Description: "Producers' metadata.upsert and metadata.delete, applied once by the cache-nodes (trimmed below the writer consumer's ack floor)",
			Subjects:    []string{s.Of(events.SubjectMetadataUpsert), s.Of(events.SubjectMetadataDelete)},
			Retention:   jetstream.LimitsPolicy,
			Discard:     jetstream.DiscardNew,
			MaxMsgs:     1_000_000,
			MaxBytes:    1 << 30,
			MaxMsgSize:  events.MaxRecordBytes + 4<<10,
			Replicas:    limits.Replicas,
		},
		{
			Name:        s.Name(events.StreamBuffer),
			Description: "Durable write buffer: writes accepted while the database is unavailable",
			Subjects:    []string{s.Of(events.SubjectBufferWrites)},
			Retention:   jetstream.WorkQueuePolicy,
			Discard:     jetstream.DiscardNew,
			MaxMsgs:     limits.MaxMsgs,
			MaxBytes:    limits.MaxBytes,
			MaxMsgSize:  MaxBufferMsgBytes,
			Replicas:    limits.Replicas,
		},
		{
			// A compacted table: one subject per record, its last message
			// kept. No global limit, so nothing but a newer write of the same
			// record ever removes an entry. No direct get: a read by subject
			// goes to the stream leader, which holds every acknowledged entry;
			// a follower replica may lag behind (the chaos runner's cluster
			// mode saw one serve a version 5 s older than an acknowledged one).
			Name:              s.Name(events.StreamChanges),
			Description:       "Change log: the last durable write of every record (changes.<tmdb_id>), a compacted replica of the table",
			Subjects:          []string{s.Of(events.SubjectChanges + ".>")},
			Retention:         jetstream.LimitsPolicy,
			Discard:           jetstream.DiscardNew,
			MaxMsgsPerSubject: 1,
			MaxMsgSize:        MaxBufferMsgBytes,
			Replicas:          limits.Replicas,
			// Committed writes are logged in atomic batches (group commit).
			AllowAtomicPublish: true,
		},
		{
			Name:        s.Name(events.StreamPoison),
			Description: "Messages that failed permanently (invalid payloads), for inspection",
			Subjects:    []string{s.Of(events.SubjectsPoison)},
			Retention:   jetstream.LimitsPolicy,
			Discard:     jetstream.DiscardOld,
			MaxAge:      7 * 24 * time.Hour,
			MaxMsgs:     100_000,
			Replicas:    limits.Replicas,
		},
	}
	for _, sc := range streams {
		sc.Storage = jetstream.FileStorage
		if err := t.ensureStream(ctx, sc); err != nil {
			return fmt.Errorf("ensure stream %s: %w", sc.Name, err)
		}
	}
	consumers := []struct {
		stream string
		cfg    jetstream.ConsumerConfig
	}{
		{s.Name(events.StreamMetadata), jetstream.ConsumerConfig{
			Durable: s.Name(events.ConsumerMetadataWriter), Description: "shared by all cache-nodes: each write applied once",
			MaxAckPending: 4096,
		}},
		{s.Name(events.StreamBuffer), jetstream.ConsumerConfig{
			Durable: s.Name(events.ConsumerReplay), Description: "shared by all cache-nodes: replay of buffered writes",
			MaxAckPending: 10_000,
		}},
	}
	for _, c := range consumers {
		c.cfg.AckPolicy = jetstream.AckExplicitPolicy
		c.cfg.AckWait = WriteAckWait
		c.cfg.MaxDeliver = -1
		c.cfg.DeliverPolicy = jetstream.DeliverAllPolicy
		if err := t.ensureConsumer(ctx, c.stream, c.cfg); err != nil {
			return fmt.Errorf("ensure consumer %s: %w", c.cfg.Durable, err)
		}
	}
	return nil
}

// WriteAckWait is how long the shared write consumers wait for an
// acknowledgement before delivering a message again (to another node): it
// bounds how long the writes held by a node that died stay unapplied.
// Replay reports progress (InProgress) after every statement, so a slow but
// live node keeps its batch.
const WriteAckWait = 10 * time.Second

// EnsureWritesIfMissing creates the write streams and consumers only when the
// buffer stream does not exist yet. Processes that do not own the buffer's
// limits (the recovery-manager) use it, so they never reset limits that the
// cache-nodes configured. CheckOnly, it checks that the buffer stream exists.
func (t *Topology) EnsureWritesIfMissing(ctx context.Context, limits BufferLimits) error {
	name := t.Subjects.Name(events.StreamBuffer)
	_, err := t.JS.Stream(ctx, name)
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("look up stream %s: %w", name, t.denied(err, "look up stream "+name, "STREAM.INFO."+name))
	}
	if t.CheckOnly {
		return fmt.Errorf("stream %s is missing: %w", name, ErrNotProvisioned)
	}
	return t.EnsureWrites(ctx, limits)
}

// EnsureEventsIfMissing creates the events stream and mode bucket only when
// the stream does not exist yet, for processes that do not own their
// replication settings (the health-monitor). CheckOnly, it checks that the
// events stream exists.
func (t *Topology) EnsureEventsIfMissing(ctx context.Context) error {
	name := t.Subjects.Name(events.StreamEvents)
	_, err := t.JS.Stream(ctx, name)
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("look up stream %s: %w", name, t.denied(err, "look up stream "+name, "STREAM.INFO."+name))
	}
	if t.CheckOnly {
		return fmt.Errorf("stream %s is missing: %w", name, ErrNotProvisioned)
	}
	_, err = t.EnsureEvents(ctx)
	return err
}

// Step names what the Ensure methods do, for log lines and errors:
// provisioning, or checking a topology the provision command made.
func (t *Topology) Step() string {
	if t.CheckOnly {
		return "check the JetStream topology (NATS_PROVISION=false: the provision command makes it)"
	}
	return "provision jetstream"
}

// EnsureAll makes (or, CheckOnly, checks) everything AniVault needs: the
// events stream and mode bucket, the write streams with limits, and every
// durable consumer. The provision command runs it as the admin role.
func (t *Topology) EnsureAll(ctx context.Context, limits BufferLimits) error {
	if _, err := t.EnsureEvents(ctx); err != nil {
		return err
	}
	if err := t.EnsureWrites(ctx, limits); err != nil {
		return err
	}
	return t.EnsureManagerConsumers(ctx)
}
