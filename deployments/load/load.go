// Package load drives realistic traffic against cache-nodes over HTTP and
// keeps a ledger of every acknowledged write, so that a run can prove that no
// acknowledged write was lost.
//
// It is the one load generator of the repository: the demo and the bench run
// its Generator; the chaos workload, which keeps a ledger of every request
// with its own classification, and the bench's fixed-duration runs send
// their requests with its Write, Read and Do, so that every load reads a
// cache-node's answers the same way.
package load

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/metastore"
)

// Config shapes the traffic.
type Config struct {
	// Nodes are cache-node base URLs.
	Nodes []string
	// Records are the records written (updated with new votes and popularity).
	Records []events.Record
	// Writers and Readers are concurrent clients.
	Writers, Readers int
	// DeleteEvery makes one write in DeleteEvery a delete (0: never).
	DeleteEvery int
	// Pause between requests of one client.
	Pause time.Duration
	// Seed makes the traffic repeatable.
	Seed uint64
}

// Counters are cumulative.
type Counters struct {
	Reads, ReadErrors, ReadUnavailable int64
	Committed, Buffered, WriteErrors   int64
	// WriteUnavailable counts the writes answered 503 (no database and no
	// room in the buffer); they are counted in WriteErrors too.
	WriteUnavailable int64
}

// Generator runs the traffic.
type Generator struct {
	cfg    Config
	client *http.Client

	reads, readErr, readUnavail atomic.Int64
	committed, buffered, wErr   atomic.Int64
	wUnavail                    atomic.Int64

	mu      sync.Mutex
	ledger  map[int64]metastore.Version
	lastErr string
}

// New returns a generator.
func New(cfg Config) (*Generator, error) {
	if len(cfg.Nodes) == 0 || len(cfg.Records) == 0 {
		return nil, errors.New("load: nodes and records are required")
	}
	return &Generator{cfg: cfg, ledger: map[int64]metastore.Version{},
		client: &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}, nil
}

// Counters returns a snapshot.
func (g *Generator) Counters() Counters {
	return Counters{Reads: g.reads.Load(), ReadErrors: g.readErr.Load(), ReadUnavailable: g.readUnavail.Load(),
		Committed: g.committed.Load(), Buffered: g.buffered.Load(), WriteErrors: g.wErr.Load(),
		WriteUnavailable: g.wUnavail.Load()}
}

// LastError is the latest unexpected error, for display.
func (g *Generator) LastError() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.lastErr
}

// Ledger returns the newest acknowledged version of every key written.
func (g *Generator) Ledger() map[int64]metastore.Version {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[int64]metastore.Version, len(g.ledger))
	for k, v := range g.ledger {
		out[k] = v
	}
	return out
}

func (g *Generator) ack(id, version int64, deleted bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if cur, ok := g.ledger[id]; !ok || version > cur.Version {
		g.ledger[id] = metastore.Version{Version: version, Deleted: deleted}
	}
}

func (g *Generator) fail(err string) {
	g.mu.Lock()
	g.lastErr = err
	g.mu.Unlock()
}

// Run sends traffic until ctx is done.
func (g *Generator) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for w := range g.cfg.Writers {
		wg.Go(func() { g.writer(ctx, rand.New(rand.NewPCG(g.cfg.Seed, uint64(w)))) })
	}
	for r := range g.cfg.Readers {
		wg.Go(func() { g.reader(ctx, rand.New(rand.NewPCG(g.cfg.Seed+1, uint64(r)))) })
	}
	wg.Wait()
}

func (g *Generator) pause(ctx context.Context) bool {
	if g.cfg.Pause <= 0 {
		return ctx.Err() == nil
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(g.cfg.Pause):
		return true
	}
}

func (g *Generator) writer(ctx context.Context, rng *rand.Rand) {
	n := 0
	for g.pause(ctx) {
		n++
		rec := g.cfg.Records[rng.IntN(len(g.cfg.Records))]
		node := g.cfg.Nodes[rng.IntN(len(g.cfg.Nodes))]
		deleted := g.cfg.DeleteEvery > 0 && n%g.cfg.DeleteEvery == 0
		var body []byte
		if !deleted {
			body = Vary(rng, rec, 10000, 1000)
		}
		a := Write(ctx, g.client, node, rec.TMDBID, body)
		switch {
		case a.Err != nil:
			if ctx.Err() == nil {
				g.wErr.Add(1)
				g.fail(a.String())
			}
		case a.Acked():
			g.acked(rec.TMDBID, a, deleted)
		default:
			g.wErr.Add(1)
			if a.Status == http.StatusServiceUnavailable {
				g.wUnavail.Add(1)
			}
			g.fail(a.String())
		}
	}
}

// acked records an acknowledged write in the ledger and the counters.
func (g *Generator) acked(id int64, a WriteAnswer, deleted bool) {
	g.ack(id, a.Version, deleted)
	if a.Status == http.StatusOK {
		g.committed.Add(1)
	} else {
		g.buffered.Add(1)
	}
}

func (g *Generator) reader(ctx context.Context, rng *rand.Rand) {
	for g.pause(ctx) {
		rec := g.cfg.Records[rng.IntN(len(g.cfg.Records))]
		node := g.cfg.Nodes[rng.IntN(len(g.cfg.Nodes))]
		a := Read(ctx, g.client, node, rec.TMDBID)
		switch {
		case a.Err != nil:
			if ctx.Err() == nil {
				g.readErr.Add(1)
			}
		case a.Status == http.StatusOK || a.Status == http.StatusNotFound:
			g.reads.Add(1)
		case a.Status == http.StatusServiceUnavailable:
			// Not cached while the database is down: an honest answer, not an error.
			g.readUnavail.Add(1)
		default:
			g.readErr.Add(1)
		}
	}
}

// Tally compares the ledger with the table.
type Tally struct {
	Acknowledged int64 // writes answered 200 or 202
	Keys         int   // distinct keys written
	Matching     int   // keys whose row holds the newest acknowledged version
	Lost         int   // keys whose row is older than an acknowledged write (or missing)
	Newer        int   // keys whose row is newer than the ledger (another writer)
}

// Check compares the ledger with versions read from the table.
func (g *Generator) Check(table map[int64]metastore.Version) Tally {
	c := g.Counters()
	t := Tally{Acknowledged: c.Committed + c.Buffered}
	for id, want := range g.Ledger() {
		t.Keys++
		got, ok := table[id]
		switch {
		case !ok || got.Version < want.Version:
			t.Lost++
		case got.Version == want.Version && got.Deleted == want.Deleted:
			t.Matching++
		case got.Version == want.Version:
			t.Lost++ // same version, different tombstone state: impossible unless corrupted
		default:
			t.Newer++
		}
	}
	return t
}

// WriteAll writes every record once with n concurrent clients, recording acknowledgements.
func (g *Generator) WriteAll(ctx context.Context, n int) error {
	ch := make(chan events.Record)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for range n {
		wg.Go(func() {
			for rec := range ch {
				body, _ := events.Marshal(&rec)
				a := Write(ctx, g.client, g.cfg.Nodes[int(rec.TMDBID)%len(g.cfg.Nodes)], rec.TMDBID, body)
				switch {
				case a.Err != nil:
					firstErr.CompareAndSwap(nil, a.Err)
				case !a.Acked():
					firstErr.CompareAndSwap(nil, errors.New(a.String()))
				default:
					g.acked(rec.TMDBID, a, false)
				}
			}
		})
	}
	for _, r := range g.cfg.Records {
		ch <- r
	}
	close(ch)
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return err
	}
	return nil
}
