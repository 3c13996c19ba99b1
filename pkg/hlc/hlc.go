// Package hlc implements a hybrid logical clock that produces record
// versions: int64 values below 2^53, so they survive a round trip through
// JSON numbers (IEEE-754 doubles) without loss of precision.
//
// A version is laid out as
//
//	bits 52..12  milliseconds since Epoch (2025-01-01T00:00:00Z), 41 bits
//	bits 11..0   logical part, 12 bits
//
// For versions made by [Clock.Now] the logical part is counter<<8 | node,
// with a 4-bit counter and an 8-bit node tag ([NodeTag]), so two nodes never
// mint the same version for the same millisecond and counter. For versions
// made by [FromStream] the logical part is the sub-millisecond fraction of the
// stream timestamp, so every node derives the same version for the same
// message.
//
// Versions compare as plain integers: a larger version is newer.
package hlc

import (
	"fmt"
	"hash/fnv"
	"sync/atomic"
	"time"
)

const (
	// EpochMillis is the custom epoch, 2025-01-01T00:00:00Z, in Unix
	// milliseconds. A custom epoch keeps 41 bits of milliseconds good until
	// 2094 while the whole version stays below 2^53.
	EpochMillis int64 = 1735689600000

	// LogicalBits is the width of the logical part of a version.
	LogicalBits = 12
	// NodeBits is the width of the node tag inside the logical part of a
	// version made by Clock.Now.
	NodeBits = 8
	// CounterBits is the width of the per-millisecond counter inside the
	// logical part of a version made by Clock.Now; it bounds a clock to
	// 16 versions per millisecond before it borrows from the next one.
	CounterBits = LogicalBits - NodeBits

	// PhysicalBits is the width of the millisecond part of a version.
	PhysicalBits = 41

	// MaxVersion is the largest valid version, 2^53-1, the largest integer a
	// JSON number (float64) represents exactly.
	MaxVersion int64 = 1<<53 - 1

	logicalMask = 1<<LogicalBits - 1
	nodeMask    = 1<<NodeBits - 1
	maxCounter  = 1<<CounterBits - 1
	maxPhysical = MaxVersion >> LogicalBits
)

// Epoch returns the custom epoch (2025-01-01T00:00:00Z) that the physical
// part of a version counts from. It is a function because Go has no
// time.Time constants.
func Epoch() time.Time {
	return time.UnixMilli(EpochMillis).UTC()
}

// NodeTag returns the 8-bit node tag embedded in versions minted by a Clock
// for nodeID: the 32-bit FNV-1a hash of nodeID modulo 256. It is exported so
// operators can check that the node ids of a cluster do not collide (two
// nodes with the same tag can mint identical versions in the same
// millisecond).
func NodeTag(nodeID string) uint8 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(nodeID)) // hash.Hash.Write never fails
	return uint8(h.Sum32() & nodeMask)
}

// Physical returns the wall-clock time encoded in v, truncated to the
// millisecond, so callers can show or age versions without knowing the
// layout.
func Physical(v int64) time.Time {
	return time.UnixMilli(EpochMillis + v>>LogicalBits).UTC()
}

// Node returns the node tag in the low 8 bits of v. It is only meaningful for
// versions made by Clock.Now; it lets a reader attribute a version to a node.
func Node(v int64) uint8 {
	return uint8(v & nodeMask)
}

// FromStream derives a version purely from a JetStream message's stream
// timestamp, so that every node computes the same version for the same
// message without coordination: milliseconds since Epoch in the physical
// part and floor(ns-within-the-ms * 4096 / 1e6) in the logical part (a
// resolution of about 245ns). Timestamps before Epoch map to 0 and
// timestamps past the end of the version space map to MaxVersion.
func FromStream(ts time.Time) int64 {
	ms := ts.UnixMilli() - EpochMillis
	if ms < 0 {
		return 0
	}
	if ms > maxPhysical {
		return MaxVersion
	}
	// UnixMilli truncates towards zero, which is floor for ts >= Epoch.
	frac := int64(ts.Nanosecond() % int(time.Millisecond))
	return ms<<LogicalBits | (frac<<LogicalBits)/int64(time.Millisecond)
}

// Clock is a hybrid logical clock. Every version returned by Now is strictly
// greater than every version previously returned by Now or passed to Observe
// on the same Clock, even when the wall clock steps backwards.
//
// A Clock mints at most 16 versions per millisecond; beyond that it borrows
// the next millisecond, so a sustained rate above 16,000 versions per second
// makes versions run ahead of the wall clock until the rate drops.
//
// Clock is safe for concurrent use; it is lock-free (a single atomic word).
// Create it with New; the zero Clock is not usable.
type Clock struct {
	node uint8
	now  func() time.Time
	// last is the greatest version returned by Now or passed to Observe.
	last atomic.Int64
}

// New returns a Clock for the node named nodeID. now supplies the wall clock
// and exists for tests; nil means time.Now.
func New(nodeID string, now func() time.Time) *Clock {
	if now == nil {
		now = time.Now
	}
	return &Clock{node: NodeTag(nodeID), now: now}
}

// Now returns a new version, strictly greater than any version previously
// returned by Now or passed to Observe on c.
//
// Now panics if the version space is exhausted (the wall clock or an
// observed version is past the year 2094), because returning a version that
// is not greater, or not JSON-safe, would silently break ordering.
func (c *Clock) Now() int64 {
	wall := c.now().UnixMilli() - EpochMillis
	for {
		last := c.last.Load()
		next := c.next(last, wall)
		if c.last.CompareAndSwap(last, next) {
			return next
		}
	}
}

func (c *Clock) next(last, wall int64) int64 {
	lastPhys := last >> LogicalBits
	if wall > lastPhys {
		return c.compose(wall, 0)
	}
	// Same (or earlier) wall millisecond: keep the last physical part and
	// pick the smallest counter whose version exceeds last. For versions we
	// minted ourselves that is counter+1; for observed versions with other
	// low bits it may be the same counter.
	lastLogical := last & logicalMask
	counter := lastLogical >> NodeBits
	if counter<<NodeBits|int64(c.node) <= lastLogical {
		counter++
	}
	if counter > maxCounter {
		return c.compose(lastPhys+1, 0)
	}
	return c.compose(lastPhys, counter)
}

func (c *Clock) compose(phys, counter int64) int64 {
	if phys > maxPhysical {
		panic(fmt.Sprintf("hlc: version space exhausted (physical %d ms past epoch)", phys))
	}
	return phys<<LogicalBits | counter<<NodeBits | int64(c.node)
}

// MaxDrift is how far ahead of the local wall clock an observed version may
// be. A version further ahead comes from a broken clock or a forged message;
// adopting it would drag every later version (and, near the end of the
// version space, exhaust it), so Observe ignores it and returns false.
const MaxDrift = time.Hour

// Observe records a version seen elsewhere (another node, a stream message,
// a database row) so that the next Now returns a greater one; this is what
// makes versions causal across nodes. Values outside [0, MaxVersion], or more
// than MaxDrift ahead of the wall clock, are ignored (Observe returns false).
func (c *Clock) Observe(v int64) bool {
	if v < 0 || v > MaxVersion {
		return false
	}
	if wall := c.now().UnixMilli() - EpochMillis; v>>LogicalBits > wall+MaxDrift.Milliseconds() {
		return false
	}
	for {
		last := c.last.Load()
		if v <= last || c.last.CompareAndSwap(last, v) {
			return true
		}
	}
}

// Last returns the greatest version returned by Now or passed to Observe so
// far (0 if none), for diagnostics such as reporting clock drift.
func (c *Clock) Last() int64 {
	return c.last.Load()
}
