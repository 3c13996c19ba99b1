package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
)

// The change log (stream ANIVAULT_CHANGES) is a compacted replica of the
// table: one subject per record, changes.<tmdb_id>, holding the record's last
// durable write (the metadata.changed payload, with the record or as a
// tombstone). Every write is in it before its writer is answered, so:
//   - a record missing from the cache is read from it when the database is
//     unavailable (a get by subject, answered by the stream leader, which
//     holds every acknowledged entry: a follower replica may lag);
//   - every node follows it (headers only) into an index of every record's
//     latest version, which invalidates older cache entries and proves
//     whether a row read from PostgreSQL is current.
//
// Nodes publish with a per-subject compare-and-set
// (Nats-Expected-Last-Subject-Sequence), so the log keeps the highest
// version of a record whatever order concurrent writers publish in.

// ErrLogMismatch is returned for a change log entry that does not decode.
var ErrLogMismatch = errors.New("change log entry does not match its subject")

// proveInterval is how often the follower checks that it has applied
// everything the stream held.
const proveInterval = 100 * time.Millisecond

// casAttempts bounds the compare-and-set loop of one publish (each failure
// means another writer published the same record in between).
const casAttempts = 50

// logEntry is one durable write as the change log holds it.
type logEntry struct {
	id, version int64
	deleted     bool
	buffered    bool
	at          time.Time
	body        []byte // the record's encoding; nil for a tombstone
}

// changeLog is the node's side of the change log.
type changeLog struct {
	js      jetstream.JetStream
	stream  jetstream.Stream
	subj    events.Subjects
	source  string
	log     *slog.Logger
	bound   time.Duration
	filter  string
	prefix  string // subject prefix of the entries, "changes." with SUBJECT_PREFIX applied
	backoff time.Duration

	// onChange runs after the follower moved a record's version forward.
	onChange func(id, version int64, deleted bool)
	// onLapse runs once when the node can no longer prove it is current.
	onLapse func()
	// validate checks an entry read from the log before it is served and
	// returns the record's canonical encoding (nil for a tombstone).
	validate func(id, version int64, deleted bool, raw []byte) ([]byte, error)

	mu    sync.RWMutex
	index map[int64]indexEntry // latest version of every record in the log

	applied  atomic.Uint64 // the stream sequence the follower has applied up to
	provenAt atomic.Int64  // unix nanos: every entry published before it is applied
	loaded   atomic.Bool   // the follower was current at least once since start
	restart  chan struct{}
	lapsed   bool // touched only by prove's goroutine
}

// newChangeLog returns the node's change log, not yet attached to JetStream:
// until attach and run, the node cannot prove its cache current.
func newChangeLog(subj events.Subjects, source string, bound time.Duration, log *slog.Logger) *changeLog {
	return &changeLog{
		subj: subj, source: source, log: log, bound: bound,
		filter:   subj.Of(events.SubjectChanges + ".>"),
		prefix:   subj.Of(events.SubjectChanges + "."),
		backoff:  500 * time.Millisecond,
		onChange: func(int64, int64, bool) {},
		onLapse:  func() {},
		validate: func(_, _ int64, _ bool, raw []byte) ([]byte, error) { return raw, nil },
		index:    map[int64]indexEntry{},
		restart:  make(chan struct{}, 1),
	}
}

// attach binds the change log to its stream, which must exist.
func (l *changeLog) attach(ctx context.Context, js jetstream.JetStream) error {
	s, err := js.Stream(ctx, l.subj.Name(events.StreamChanges))
	if err != nil {
		return fmt.Errorf("change log stream: %w", err)
	}
	l.js, l.stream = js, s
	return nil
}

func (l *changeLog) subject(id int64) string { return l.subj.Of(events.ChangeSubject(id)) }

// message builds the log message of e.
func (l *changeLog) message(e logEntry) (*nats.Msg, error) {
	payload, err := encodeChanged(l.source, e.at, e.id, e.version, e.deleted, e.buffered, e.body)
	if err != nil {
		return nil, err
	}
	msg := nats.NewMsg(l.subject(e.id))
	msg.Data = payload
	msg.Header.Set(events.HeaderVersion, strconv.FormatInt(e.version, 10))
	if e.deleted {
		msg.Header.Set(events.HeaderDeleted, "true")
	}
	msg.Header.Set(events.HeaderSource, l.source)
	return msg, nil
}

// publish puts e in the log unless the log holds a version of the record at
// least as new, and returns the version the log holds afterwards: e.version,
// or the newer one that superseded it.
func (l *changeLog) publish(ctx context.Context, e logEntry) (int64, error) {
	v, _, err := l.publishOnce(ctx, e)
	return v, err
}

// publishOnce is publish, also telling whether this call added the message
// (false when the log already held e's version or a newer one).
func (l *changeLog) publishOnce(ctx context.Context, e logEntry) (int64, bool, error) {
	msg, err := l.message(e)
	if err != nil {
		return 0, false, err
	}
	for attempt := 0; ; attempt++ {
		var expect uint64
		last, err := l.stream.GetLastMsgForSubject(ctx, msg.Subject)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
		case err != nil:
			return 0, false, fmt.Errorf("change log read %s: %w", msg.Subject, err)
		default:
			v, deleted, ok := entryVersion(last.Header)
			if ok && v >= e.version {
				l.observe(e.id, v, deleted, last.Sequence)
				return v, false, nil
			}
			expect = last.Sequence
		}
		ack, err := l.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(expect))
		if err == nil {
			l.observe(e.id, e.version, e.deleted, ack.Sequence)
			return e.version, true, nil
		}
		if !isWrongLastSequence(err) || attempt >= casAttempts {
			return 0, false, fmt.Errorf("change log publish %s: %w", msg.Subject, err)
		}
		// Another writer of the same record got in first: read again.
	}
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// entryVersion reads a log message's version and tombstone flag from its headers.
func entryVersion(h nats.Header) (version int64, deleted, ok bool) {
	v, err := strconv.ParseInt(h.Get(events.HeaderVersion), 10, 64)
	if err != nil || v <= 0 {
		return 0, false, false
	}
	return v, h.Get(events.HeaderDeleted) == "true", true
}

// get reads the record's last entry from the log (the stream leader). found is
// false for a record the log has never seen.
func (l *changeLog) get(ctx context.Context, id int64) (e logEntry, found bool, err error) {
	m, err := l.stream.GetLastMsgForSubject(ctx, l.subject(id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return logEntry{}, false, nil
	}
	if err != nil {
		return logEntry{}, false, fmt.Errorf("change log read tmdb:%d: %w", id, err)
	}
	var p struct {
		TMDBID  int64           `json:"tmdb_id"`
		Version int64           `json:"version"`
		Deleted bool            `json:"deleted"`
		Record  json.RawMessage `json:"record"`
	}
	if err := json.Unmarshal(m.Data, &p); err != nil || p.TMDBID != id || p.Version <= 0 || (!p.Deleted && len(p.Record) == 0) {
		return logEntry{}, false, fmt.Errorf("%w: tmdb:%d at sequence %d", ErrLogMismatch, id, m.Sequence)
	}
	body, err := l.validate(id, p.Version, p.Deleted, p.Record)
	if err != nil {
		return logEntry{}, false, fmt.Errorf("%w: tmdb:%d at sequence %d: %v", ErrLogMismatch, id, m.Sequence, err)
	}
	l.observe(id, p.Version, p.Deleted, m.Sequence)
	e = logEntry{id: id, version: p.Version, deleted: p.Deleted}
	if !p.Deleted {
		e.body = body
	}
	return e, true, nil
}

// observe moves the index to version when it is newer, and then tells the
// node (onChange), whoever learnt of the version first: the follower, a
// publish or a read of the log.
//
// seq is the stream sequence of the entry holding version (0 when not
// known); the group commit uses it as the expected last sequence of the
// record's subject.
func (l *changeLog) observe(id, version int64, deleted bool, seq uint64) {
	v := version
	if deleted {
		v = -version
	}
	l.mu.Lock()
	cur := l.index[id]
	moved := abs(cur.version) < version
	if moved {
		l.index[id] = indexEntry{version: v, seq: seq}
	} else if abs(cur.version) == version && cur.seq == 0 && seq != 0 {
		cur.seq = seq
		l.index[id] = cur
	}
	l.mu.Unlock()
	if moved {
		l.onChange(id, version, deleted)
	}
}

// latest returns the newest version of id the node knows the log holds (0 if none).
func (l *changeLog) latest(id int64) int64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return abs(l.index[id].version)
}

// indexEntry is what the index knows of a record's latest log entry: its
// version (negative for a tombstone) and stream sequence (0 if unknown).
type indexEntry struct {
	version int64
	seq     uint64
}

// lastEntry returns the index's version (0 if none) and stream sequence of
// the record's latest entry; known is false when the record has a version
// but its sequence is not known.
func (l *changeLog) lastEntry(id int64) (version int64, seq uint64, known bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	e, ok := l.index[id]
	if !ok {
		return 0, 0, true
	}
	return abs(e.version), e.seq, e.seq != 0
}

// batchable tells whether e may go in an atomic batch: the index knows the
// sequence of its record's latest entry (or that it has none) and holds an
// older version than e's.
func (l *changeLog) batchable(e logEntry) bool {
	v, _, known := l.lastEntry(e.id)
	return known && v < e.version
}

// keys returns the number of records in the index.
func (l *changeLog) keys() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return len(l.index)
}

func abs(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}

// current tells whether the node has applied every entry published more than
// the staleness bound ago: only then may it serve from its cache.
func (l *changeLog) current() bool {
	at := l.provenAt.Load()
	return at != 0 && time.Since(time.Unix(0, at)) <= l.bound
}

// lag is how long ago the node was last proven current (0 before the first time).
func (l *changeLog) lag() time.Duration {
	at := l.provenAt.Load()
	if at == 0 {
		return 0
	}
	return time.Since(time.Unix(0, at))
}

// run follows the log and proves the node current until ctx is done.
func (l *changeLog) run(ctx context.Context) {
	go l.prove(ctx)
	for ctx.Err() == nil {
		if err := l.followOnce(ctx); err != nil && ctx.Err() == nil {
			l.log.Warn("change log follower stopped, restarting", "error", err, "applied_seq", l.applied.Load())
		}
		select {
		case <-ctx.Done():
		case <-time.After(l.backoff):
		}
	}
}

// followOnce runs one ordered consumer, headers only: first the last entry
// of every record, then every new one. The consumer re-creates itself from
// the last sequence it saw after a gap or a reconnect; a restart of the
// follower resumes from there too.
func (l *changeLog) followOnce(ctx context.Context) error {
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{l.filter}, HeadersOnly: true,
		DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
	}
	if seq := l.applied.Load(); seq > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, seq+1
	}
	cons, err := l.js.OrderedConsumer(ctx, l.subj.Name(events.StreamChanges), cfg)
	if err != nil {
		return fmt.Errorf("change log consumer: %w", err)
	}
	cc, err := cons.Consume(l.handle, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		l.log.Debug("change log follower", "error", err)
	}))
	if err != nil {
		return fmt.Errorf("change log consume: %w", err)
	}
	defer cc.Stop()
	select {
	case <-ctx.Done():
		return nil
	case <-cc.Closed():
		return errors.New("consumer closed")
	case <-l.restart:
		return errors.New("the stream was reset")
	}
}

func (l *changeLog) handle(msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		return
	}
	if id, ok := events.ChangeID(l.subj.Base(msg.Subject())); ok {
		if v, deleted, ok := entryVersion(msg.Headers()); ok {
			l.observe(id, v, deleted, meta.Sequence.Stream)
		}
	}
	l.applied.Store(meta.Sequence.Stream)
}

// prove advances provenAt: it notes the stream's last sequence at a moment,
// and once the follower has applied up to it, every entry published before
// that moment is applied.
func (l *changeLog) prove(ctx context.Context) {
	t := time.NewTicker(proveInterval)
	defer t.Stop()
	var (
		target   uint64
		targetAt time.Time
		pending  bool
	)
	for {
		applied := l.applied.Load()
		if pending && applied >= target {
			l.provenAt.Store(targetAt.UnixNano())
			l.loaded.Store(true)
			pending = false
		}
		if !pending {
			at := time.Now()
			ictx, cancel := context.WithTimeout(ctx, time.Second)
			info, err := l.stream.Info(ictx)
			cancel()
			if err == nil {
				last := info.State.LastSeq
				switch {
				case applied > last:
					// The stream was deleted and made again, or purged: what the
					// node knows proves nothing any more.
					l.log.Warn("the change log restarted below the follower's position: dropping the index and the cache", "applied_seq", applied, "last_seq", last)
					l.reset()
				case applied >= last:
					l.provenAt.Store(at.UnixNano())
					l.loaded.Store(true)
				default:
					target, targetAt, pending = last, at, true
				}
			}
		}
		if cur := l.current(); !cur && !l.lapsed && l.provenAt.Load() != 0 {
			l.lapsed = true
			l.log.Warn("the node cannot prove its cache current (change log follower behind or disconnected): dropping the cache until it can", "lag", l.lag().String())
			l.onLapse()
		} else if cur {
			l.lapsed = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// reset forgets the follower's position and index and restarts it from the
// start of the stream.
func (l *changeLog) reset() {
	l.mu.Lock()
	l.index = map[int64]indexEntry{}
	l.mu.Unlock()
	l.applied.Store(0)
	l.provenAt.Store(0)
	l.loaded.Store(false)
	l.onLapse()
	select {
	case l.restart <- struct{}{}:
	default:
	}
}

// forgetTombstone removes the record's entry from the log if it is still the
// tombstone at version. It deletes that one message (the stream keeps one per
// subject, so nothing else of the record is there; a message published after
// it stays): a cache-node's NATS role may delete single change log messages
// but never purge the stream.
func (l *changeLog) forgetTombstone(ctx context.Context, id, version int64) error {
	subject := l.subject(id)
	last, err := l.stream.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("change log read %s: %w", subject, err)
	}
	if v, deleted, ok := entryVersion(last.Header); !ok || !deleted || v != version {
		return nil // a newer write: keep it
	}
	if err := l.stream.DeleteMsg(ctx, last.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) && !isMsgNotFound(err) {
		return fmt.Errorf("change log delete %s seq %d: %w", subject, last.Sequence, err)
	}
	return nil
}

// isMsgNotFound matches the API error of a delete of a message already gone
// (another node expired the same tombstone, or a newer write replaced it).
func isMsgNotFound(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeMessageNotFound
}
