package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/anivault/anivault/deployments/load"
	"github.com/anivault/anivault/events"
)

// Op is one write the workload attempted, with what it learned about it.
type Op struct {
	Key      int64
	Producer bool // published on metadata.upsert/metadata.delete; else HTTP PUT/DELETE
	Delete   bool
	Node     string // HTTP: the node's base URL
	Start    time.Time
	End      time.Time
	// Acked: answered 200/202 (HTTP) or acknowledged by the stream (producer).
	Acked bool
	// Indeterminate: the outcome is unknown (an error, a timeout, a 5xx): the
	// write may or may not have been applied. Never both Acked and Indeterminate.
	Indeterminate bool
	Status        int    // HTTP status (0 for producers and transport errors)
	Version       int64  // HTTP: the acknowledged version
	Seq           uint64 // producer: the stream sequence of the acknowledged message
	Err           string
	// Superseded: an HTTP write answered 200 "superseded": it was not written
	// at a version of its own; Version is the newer version the record holds
	// (written by another write, whose kind this answer does not tell).
	Superseded bool
}

// Read is one GET the workload's readers made, with what the node answered.
type Read struct {
	Key   int64
	Node  string // the node's base URL
	Start time.Time
	End   time.Time
	// Status is the HTTP status (0: a transport error, see Err).
	Status int
	// Version is the record's version from a 200's body (0 otherwise).
	Version int64
	// Source and Mode are the X-AniVault-Source and X-AniVault-Mode headers.
	Source, Mode string
	Err          string
}

// Counters are the workload's running totals.
type Counters struct {
	HTTPCommitted, HTTPBuffered, ProducerAcked int64
	HTTPIndeterminate, ProducerIndeterminate   int64
	Refused, Rejected                          int64 // connection refused (never sent); 4xx (never applied)
	Reads, ReadsUnavailable, ReadErrors        int64
}

// Acked is every acknowledged write.
func (c Counters) Acked() int64 { return c.HTTPCommitted + c.HTTPBuffered + c.ProducerAcked }

// Workload runs HTTP writers, producers and readers over overlapping keys and
// records every write in a ledger.
type Workload struct {
	nodes     []string
	js        jetstream.JetStream
	subj      events.Subjects
	records   map[int64]events.Record
	httpKeys  []int64 // HTTP writers pick from these (HTTP-only and mixed)
	prodKeys  []int64 // producers pick from these (producer-only and mixed)
	allKeys   []int64
	client    *http.Client
	pause     time.Duration
	deleteOne int // one write in deleteOne is a delete

	stopping atomic.Bool
	wg       sync.WaitGroup

	mu      sync.Mutex
	ops     []Op
	readLog []Read

	httpCommitted, httpBuffered, prodAcked atomic.Int64
	httpIndet, prodIndet                   atomic.Int64
	refused, rejected                      atomic.Int64
	reads, readsUnavail, readErrs          atomic.Int64
	lastErr                                atomic.Value
}

// KeySets splits the records' keys: HTTP only, mixed (both), producer only.
type KeySets struct {
	HTTPOnly, Mixed, ProducerOnly []int64
}

// SplitKeys puts the first 5/12 of the records in HTTPOnly, the next 2/12 in
// Mixed and the rest in ProducerOnly.
func SplitKeys(recs []events.Record) KeySets {
	var ks KeySets
	a, b := len(recs)*5/12, len(recs)*7/12
	for i, r := range recs {
		switch {
		case i < a:
			ks.HTTPOnly = append(ks.HTTPOnly, r.TMDBID)
		case i < b:
			ks.Mixed = append(ks.Mixed, r.TMDBID)
		default:
			ks.ProducerOnly = append(ks.ProducerOnly, r.TMDBID)
		}
	}
	return ks
}

// NewWorkload prepares a workload against nodes (base URLs) and js.
func NewWorkload(nodes []string, js jetstream.JetStream, subj events.Subjects, recs []events.Record, ks KeySets, pause time.Duration) *Workload {
	w := &Workload{nodes: nodes, js: js, subj: subj, records: map[int64]events.Record{}, pause: pause, deleteOne: 7,
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}}
	for _, r := range recs {
		w.records[r.TMDBID] = r
	}
	w.httpKeys = append(append([]int64{}, ks.HTTPOnly...), ks.Mixed...)
	w.prodKeys = append(append([]int64{}, ks.Mixed...), ks.ProducerOnly...)
	w.allKeys = append(append(append([]int64{}, ks.HTTPOnly...), ks.Mixed...), ks.ProducerOnly...)
	return w
}

// Start launches the clients; rng streams derive from seed.
func (w *Workload) Start(seed uint64, httpWriters, producers, readers int) {
	for i := range httpWriters {
		rng := rand.New(rand.NewPCG(seed, 0x1000+uint64(i)))
		w.wg.Go(func() { w.httpWriter(rng) })
	}
	for i := range producers {
		rng := rand.New(rand.NewPCG(seed, 0x2000+uint64(i)))
		w.wg.Go(func() { w.producer(rng) })
	}
	for i := range readers {
		rng := rand.New(rand.NewPCG(seed, 0x3000+uint64(i)))
		w.wg.Go(func() { w.reader(rng, i) })
	}
}

// Stop asks every client to stop after its current request and waits: no
// request is abandoned half way, so every write ends acknowledged, refused
// or indeterminate.
func (w *Workload) Stop() {
	w.stopping.Store(true)
	w.wg.Wait()
}

// Ops returns a copy of the ledger.
func (w *Workload) Ops() []Op {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Op(nil), w.ops...)
}

// Reads returns a copy of every read made (refused connections to a dead
// node excepted: nothing was asked).
func (w *Workload) Reads() []Read {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Read(nil), w.readLog...)
}

// Counters returns the running totals.
func (w *Workload) Counters() Counters {
	return Counters{
		HTTPCommitted: w.httpCommitted.Load(), HTTPBuffered: w.httpBuffered.Load(), ProducerAcked: w.prodAcked.Load(),
		HTTPIndeterminate: w.httpIndet.Load(), ProducerIndeterminate: w.prodIndet.Load(),
		Refused: w.refused.Load(), Rejected: w.rejected.Load(),
		Reads: w.reads.Load(), ReadsUnavailable: w.readsUnavail.Load(), ReadErrors: w.readErrs.Load(),
	}
}

// LastError is the latest unexpected answer, for the live line.
func (w *Workload) LastError() string {
	s, _ := w.lastErr.Load().(string)
	return s
}

func (w *Workload) record(op Op) {
	w.mu.Lock()
	w.ops = append(w.ops, op)
	w.mu.Unlock()
}

func (w *Workload) sleep() bool {
	if w.stopping.Load() {
		return false
	}
	time.Sleep(w.pause)
	return !w.stopping.Load()
}

func (w *Workload) body(rng *rand.Rand, id int64) []byte {
	return load.Vary(rng, w.records[id], 100000, 10000)
}

// httpWriter writes over HTTP until Stop. Its requests carry no deadline but
// the client's: Stop lets each one finish, none is abandoned half way.
func (w *Workload) httpWriter(rng *rand.Rand) {
	for w.sleep() {
		id := w.httpKeys[rng.IntN(len(w.httpKeys))]
		node := w.nodes[rng.IntN(len(w.nodes))]
		del := rng.IntN(w.deleteOne) == 0
		var body []byte
		if !del {
			body = w.body(rng, id)
		}
		op := Op{Key: id, Delete: del, Node: node, Start: time.Now()}
		a := load.Write(context.Background(), w.client, node, id, body)
		op.End = time.Now()
		if a.Err != nil {
			if errors.Is(a.Err, syscall.ECONNREFUSED) {
				w.refused.Add(1) // the node is down: the request was never sent
				continue
			}
			op.Indeterminate, op.Err = true, a.Err.Error()
			w.httpIndet.Add(1)
			w.record(op)
			continue
		}
		op.Status = a.Status
		switch {
		case a.Acked():
			op.Acked, op.Version, op.Superseded = true, a.Version, a.Superseded
			if a.Status == 200 {
				w.httpCommitted.Add(1)
			} else {
				w.httpBuffered.Add(1)
			}
		case a.Status == 400 || a.Status == 404 || a.Status == 413:
			// A definite refusal: nothing was applied. Never expected from this workload.
			op.Err = a.Body
			w.rejected.Add(1)
			w.lastErr.Store(a.String())
		default:
			op.Indeterminate, op.Err = true, a.Body
			w.httpIndet.Add(1)
			w.lastErr.Store(a.String())
		}
		w.record(op)
	}
}

// producerBudget is how long a producer retries one publish (same message id,
// so the stream keeps at most one copy) before it calls the outcome unknown.
const producerBudget = 15 * time.Second

func (w *Workload) producer(rng *rand.Rand) {
	for w.sleep() {
		id := w.prodKeys[rng.IntN(len(w.prodKeys))]
		del := rng.IntN(w.deleteOne) == 0
		msg := &nats.Msg{Subject: w.subj.Of(events.SubjectMetadataUpsert)}
		if del {
			msg.Subject = w.subj.Of(events.SubjectMetadataDelete)
			msg.Data, _ = json.Marshal(events.DeleteRequest{TMDBID: id})
		} else {
			msg.Data = w.body(rng, id)
		}
		msgID := nuid.Next()
		op := Op{Key: id, Producer: true, Delete: del, Start: time.Now()}
		deadline := op.Start.Add(producerBudget)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			ack, err := w.js.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID))
			cancel()
			if err == nil {
				op.Acked, op.Seq = true, ack.Sequence
				w.prodAcked.Add(1)
				break
			}
			op.Err = err.Error()
			if time.Now().After(deadline) {
				op.Indeterminate = true
				w.prodIndet.Add(1)
				w.lastErr.Store("publish: " + err.Error())
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		op.End = time.Now()
		w.record(op)
	}
}

// reader reads keys that the writers write, from every node in turn (reader
// i starts at node i), through every fault, and records every answer.
func (w *Workload) reader(rng *rand.Rand, first int) {
	for k := first; w.sleep(); k++ {
		id := w.allKeys[rng.IntN(len(w.allKeys))]
		node := w.nodes[k%len(w.nodes)]
		rd := Read{Key: id, Node: node, Start: time.Now()}
		a := load.Read(context.Background(), w.client, node, id)
		rd.End, rd.Status, rd.Source, rd.Mode = time.Now(), a.Status, a.Source, a.Mode
		switch {
		case a.Err != nil && errors.Is(a.Err, syscall.ECONNREFUSED):
			continue // the node is down: nothing was asked
		case a.Err != nil:
			rd.Err = a.Err.Error()
			w.readErrs.Add(1)
		case a.Status == 200:
			var v struct {
				TMDBID  int64 `json:"tmdb_id"`
				Version int64 `json:"version"`
			}
			if err := json.Unmarshal(a.Body, &v); err != nil || v.Version <= 0 || v.TMDBID != id {
				rd.Err = fmt.Sprintf("200 without a version of tmdb:%d: %s", id, truncate(string(a.Body), 120))
				w.readErrs.Add(1)
				break
			}
			rd.Version = v.Version
			w.reads.Add(1)
		case a.Status == 404:
			w.reads.Add(1)
		case a.Status == 503:
			w.readsUnavail.Add(1) // in neither the cache nor the change log while the database is away
		default:
			rd.Err = truncate(string(bytes.TrimSpace(a.Body)), 120)
			w.readErrs.Add(1)
		}
		w.recordRead(rd)
	}
}

func (w *Workload) recordRead(rd Read) {
	w.mu.Lock()
	w.readLog = append(w.readLog, rd)
	w.mu.Unlock()
}
