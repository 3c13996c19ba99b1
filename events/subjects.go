package events

import (
	"strconv"
	"strings"
)

// Subjects of the contract, without prefix. Use Subjects.Of (or the helper
// methods) to apply SUBJECT_PREFIX.
const (
	// SubjectDBHealth carries the result of every database health check.
	SubjectDBHealth = "db.health"
	// SubjectDBUnhealthy is published once when consecutive failures reach the threshold.
	SubjectDBUnhealthy = "db.unhealthy"
	// SubjectDBRecovered is published once when consecutive successes reach the threshold after db.unhealthy.
	SubjectDBRecovered = "db.recovered"

	// SubjectModeCacheOnly announces that cache-nodes serve from cache and buffer writes.
	SubjectModeCacheOnly = "mode.cache_only"
	// SubjectModeRecovering announces that cache-nodes replay their buffered writes.
	SubjectModeRecovering = "mode.recovering"
	// SubjectModeNormal announces that the database is the source of truth again.
	SubjectModeNormal = "mode.normal"

	// SubjectReplayCompleted is published by a cache-node after it replayed its share of the buffer.
	SubjectReplayCompleted = "replay.completed"
	// SubjectMetadataChanged is published by a cache-node after a write was committed or buffered.
	SubjectMetadataChanged = "metadata.changed"

	// SubjectMetadataUpsert is where producers publish anime records (JetStream-backed).
	SubjectMetadataUpsert = "metadata.upsert"
	// SubjectMetadataDelete is where producers publish deletes, {"tmdb_id": N} (JetStream-backed).
	SubjectMetadataDelete = "metadata.delete"

	// SubjectMetadataGet is a request answered by cache-nodes in a queue group.
	SubjectMetadataGet = "metadata.get"
	// SubjectRecoveryForce asks the recovery-manager to check the database now and recover if healthy.
	SubjectRecoveryForce = "recovery.force"
	// SubjectCacheOnlyEnter asks the recovery-manager to enter cache-only mode (planned maintenance).
	SubjectCacheOnlyEnter = "recovery.cache_only.enter"
	// SubjectCacheOnlyExit asks the recovery-manager to leave cache-only mode through recovering.
	SubjectCacheOnlyExit = "recovery.cache_only.exit"
	// SubjectRecoveryComplete is an extension: the operator ends recovering
	// now, without waiting for every live node's replay.completed (a node
	// whose replay cannot finish); what is still buffered keeps draining.
	SubjectRecoveryComplete = "recovery.complete"
	// SubjectStatusGet asks the recovery-manager for the system status.
	SubjectStatusGet = "status.get"

	// SubjectNodeStatus is an extension of the contract: every cache-node publishes its
	// status report here on an interval; the recovery-manager builds the live node set from it.
	SubjectNodeStatus = "node.status"
	// SubjectBufferWrites is an extension: the durable write buffer's subject.
	SubjectBufferWrites = "buffer.writes"
	// SubjectPoison is an extension: events that could not be processed, with the reason in headers.
	SubjectPoison = "poison.metadata"
	// SubjectPoisonBuffer is an extension: buffer messages that could not be
	// decoded, copied before they are removed from the buffer, with the
	// reason and the buffer sequence in headers.
	SubjectPoisonBuffer = "poison.buffer"
	// SubjectPoisonEvents is an extension: events the recovery-manager could
	// not process, with the reason in headers.
	SubjectPoisonEvents = "poison.events"
	// SubjectChanges is an extension: the change log, one subject per record
	// (changes.<tmdb_id>, see ChangeSubject) holding its last durable write.
	SubjectChanges = "changes"
	// SubjectChangesBackfill is an extension: the progress of the change log's
	// backfill from the table (events.BackfillProgress), kept in the log's
	// stream so that it resumes where it stopped.
	SubjectChangesBackfill = "changes._backfill"
)

// Wildcards of the subject families above, without prefix: what the
// streams hold and what event followers subscribe to.
const (
	SubjectsDB     = "db.>"
	SubjectsMode   = "mode.>"
	SubjectsReplay = "replay.>"
	SubjectsPoison = "poison.>"
)

// Stream, consumer and bucket names. A consumer's durable name is API: renaming
// it makes the consumer re-read its whole stream.
const (
	// StreamEvents holds db.*, mode.* and replay.* events so that subscribers that were away catch up.
	StreamEvents = "ANIVAULT_EVENTS"
	// StreamMetadata holds producers' metadata.upsert and metadata.delete (limits
	// retention, trimmed below the writer consumer's ack floor).
	StreamMetadata = "ANIVAULT_METADATA"
	// StreamBuffer is the durable write buffer filled in cache-only mode (work queue, DiscardNew).
	StreamBuffer = "ANIVAULT_BUFFER"
	// StreamPoison keeps messages that failed permanently, for an operator to inspect.
	StreamPoison = "ANIVAULT_POISON"
	// StreamChanges is the change log: a compacted replica of the table, the
	// last durable write of every record (one subject per record, one message
	// per subject), read by subject from the stream leader.
	StreamChanges = "ANIVAULT_CHANGES"

	// ConsumerMetadataWriter is the one durable consumer shared by all cache-nodes on StreamMetadata.
	ConsumerMetadataWriter = "cache-node-writer"
	// ConsumerReplay is the one durable consumer shared by all cache-nodes on StreamBuffer.
	ConsumerReplay = "cache-node-replay"
	// ConsumerManagerDB is the recovery-manager's durable consumer of db.unhealthy and db.recovered.
	ConsumerManagerDB = "recovery-manager-db"
	// ConsumerManagerReplay is the recovery-manager's durable consumer of replay.completed.
	ConsumerManagerReplay = "recovery-manager-replay"

	// BucketName is the JetStream KV bucket holding the current mode.
	BucketName = "anivault"
	// KeyMode is the KV key holding the last mode event.
	KeyMode = "mode"

	// QueueMetadataGet is the queue group cache-nodes answer metadata.get in.
	QueueMetadataGet = "cache-nodes"
	// ServiceCacheNode and ServiceRecoveryManager are the NATS micro service names (`nats micro ls`).
	ServiceCacheNode       = "anivault-cache-node"
	ServiceRecoveryManager = "anivault-recovery-manager"
)

// Message headers: they let a subscriber route or skip a message without
// decoding its payload. The payload stays the contract and repeats them.
const (
	// HeaderSource carries the publishing process's id (the payload's source)
	// on metadata.changed, so that a cache-node skips its own events undecoded.
	HeaderSource = "AniVault-Source"
	// HeaderVersion carries a change log entry's version, and HeaderDeleted
	// ("true") marks a tombstone, so that a follower reading headers only
	// knows every record's version without its body.
	HeaderVersion = "AniVault-Version"
	HeaderDeleted = "AniVault-Deleted"
	// HeaderWrites carries the number of writes in a buffer message.
	HeaderWrites = "AniVault-Writes"
)

// ChangeSubject returns the change log subject of a record, without prefix.
func ChangeSubject(id int64) string {
	return SubjectChanges + "." + strconv.FormatInt(id, 10)
}

// ChangeID returns the record id of a change log subject without prefix
// (changes.<tmdb_id>), and false for any other subject.
func ChangeID(base string) (int64, bool) {
	rest, ok := strings.CutPrefix(base, SubjectChanges+".")
	if !ok {
		return 0, false
	}
	id, err := strconv.ParseInt(rest, 10, 64)
	if err != nil || id <= 0 || strconv.FormatInt(id, 10) != rest {
		return 0, false
	}
	return id, true
}

// Subjects applies a SUBJECT_PREFIX to the contract's subjects.
type Subjects struct {
	prefix string
}

// NewSubjects returns the subject namer for prefix ("" for none). Leading and
// trailing dots are trimmed, so "x" and "x." both turn db.unhealthy into x.db.unhealthy.
func NewSubjects(prefix string) Subjects {
	return Subjects{prefix: strings.Trim(prefix, ".")}
}

// Prefix returns the prefix without trailing dot.
func (s Subjects) Prefix() string { return s.prefix }

// Of returns base with the prefix applied.
func (s Subjects) Of(base string) string {
	if s.prefix == "" {
		return base
	}
	return s.prefix + "." + base
}

// Base strips the prefix from a full subject; it returns subject unchanged when it lacks the prefix.
func (s Subjects) Base(subject string) string {
	if s.prefix == "" {
		return subject
	}
	return strings.TrimPrefix(subject, s.prefix+".")
}

// Name applies the prefix to a stream, consumer or bucket name, which may not
// contain dots: a prefix "x.y" yields "X_Y_ANIVAULT_EVENTS"-style names for
// streams and "x_y-name" for others, so two prefixed systems can share a server.
func (s Subjects) Name(base string) string {
	if s.prefix == "" {
		return base
	}
	p := strings.NewReplacer(".", "_", "*", "_", ">", "_", " ", "_").Replace(s.prefix)
	if strings.ToUpper(base) == base {
		return strings.ToUpper(p) + "_" + base
	}
	return p + "_" + base
}
