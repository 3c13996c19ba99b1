package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
)

// IngestResult is the producers' ingest phase: metadata.upsert messages
// applied by a cache-node from the shared durable consumer.
type IngestResult struct {
	Records, Keys, Rounds int
	PreloadRate           float64 // messages/s of the preload (async publish, fsync on every ack)
	Runs                  []ingestRun
	Profile               string // perf profile of the node during the last run
	// Ceilings are the NATS server's own drain rates of such a stream.
	Ceilings []drainCeiling
}

// ingestRun is one timed drain of the preloaded stream.
type ingestRun struct {
	Label          string
	GroupCommitMax int
	Applied        time.Duration // from the consumer's resume to nothing pending or unacknowledged
	RowsPerSec     float64
	// LastRounds is the number of keys whose row holds the last round's
	// value (each key was written Rounds times, in order): Keys when the
	// per-key order was kept.
	LastRounds int
	CPU        cpuUsage
	Superseded int64 // writes the node counted as older than the stored row
}

const ingestKeyBase = 30_000_000

// phaseIngest preloads the metadata stream while the writer consumer is
// paused, resumes it and times how fast the cache-node applies the
// backlog, with the default DB_GROUP_COMMIT_MAX and with group commit on.
// Every key is written rounds times with vote_count = its round, in order;
// afterwards every row must hold the last round.
func (r *runner) phaseIngest(ctx context.Context) error {
	res := &IngestResult{Records: r.cfg.ingestN, Rounds: 4}
	res.Keys = res.Records / res.Rounds
	r.rep.Ingest = res
	ceilings, err := r.measureDrainCeilings(ctx)
	if err != nil {
		return err
	}
	res.Ceilings = ceilings
	configs := []int{1, benchGroupCommitMax}
	for i, gc := range configs {
		if err := r.restartNodeA(ctx, map[string]string{"DB_GROUP_COMMIT_MAX": strconv.Itoa(gc)}); err != nil {
			return err
		}
		base := int64(ingestKeyBase + i*1_000_000)
		run, err := r.ingestOnce(ctx, res, base, gc, i == len(configs)-1)
		if err != nil {
			return err
		}
		run.Label = fmt.Sprintf("DB_GROUP_COMMIT_MAX=%d", gc)
		res.Runs = append(res.Runs, run)
		r.say("  ingest, %s: %s records in %v: %.0f records/s; %d of %d keys hold their last write", run.Label, commas(int64(res.Records)), run.Applied.Round(time.Millisecond), run.RowsPerSec, run.LastRounds, res.Keys)
	}
	return r.restartNodeA(ctx, nil)
}

func (r *runner) ingestOnce(ctx context.Context, res *IngestResult, base int64, gc int, profile bool) (ingestRun, error) {
	run := ingestRun{GroupCommitMax: gc}
	stream, consumer := events.StreamMetadata, events.ConsumerMetadataWriter
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := r.js.PauseConsumer(pctx, stream, consumer, time.Now().Add(time.Hour))
	cancel()
	if err != nil {
		return run, fmt.Errorf("pause %s: %w", consumer, err)
	}
	resumed := false
	defer func() {
		if !resumed {
			rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, _ = r.js.ResumeConsumer(rctx, stream, consumer)
			cancel()
		}
	}()

	// Preload: every key once per round, rounds in order.
	t0 := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	err = r.publishAll(wctx, res.Keys*res.Rounds, func(i int) (string, []byte, error) {
		round, k := i/res.Keys, i%res.Keys
		rec := r.record(k, base+int64(k))
		vc := int64(round)
		rec.VoteCount = &vc
		b, err := events.Marshal(&rec)
		return events.SubjectMetadataUpsert, b, err
	})
	if err != nil {
		return run, fmt.Errorf("preload: %w", err)
	}
	res.PreloadRate = float64(res.Records) / time.Since(t0).Seconds()

	before, _ := r.writeOutcomes(r.nodeA)
	watch := newCPUWatch(r.nodeA.Pid())
	drained := make(chan error, 1)
	t1 := time.Now()
	watch.begin()
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = r.js.ResumeConsumer(rctx, stream, consumer)
	rcancel()
	if err != nil {
		return run, fmt.Errorf("resume %s: %w", consumer, err)
	}
	resumed = true
	go func() { drained <- r.waitConsumerDrained(wctx, stream, consumer) }()
	if profile {
		// perf samples for a fixed time while the drain goes on.
		res.Profile = r.perfProfile(ctx, r.nodeA.Pid(), 3*time.Second, func(d time.Duration) {
			select {
			case <-time.After(d):
			case <-wctx.Done():
			}
		})
	}
	if err := <-drained; err != nil {
		return run, err
	}
	run.Applied = time.Since(t1)
	watch.end(run.Applied.Seconds())
	run.CPU = watch.Result
	run.RowsPerSec = float64(res.Records) / run.Applied.Seconds()
	after, _ := r.writeOutcomes(r.nodeA)
	run.Superseded = after["superseded"] - before["superseded"]

	qctx, qcancel := context.WithTimeout(ctx, 30*time.Second)
	defer qcancel()
	err = r.mainStore.DB().NewRaw("SELECT count(*) FROM anime_metadata WHERE tmdb_id >= ? AND tmdb_id < ? AND vote_count = ?",
		base, base+int64(res.Keys), res.Rounds-1).Scan(qctx, &run.LastRounds)
	if err != nil {
		return run, fmt.Errorf("count the rows: %w", err)
	}
	return run, nil
}

// waitConsumerDrained polls the consumer until nothing is pending or
// waiting for an acknowledgement.
func (r *runner) waitConsumerDrained(ctx context.Context, stream, consumer string) error {
	for {
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := r.js.Consumer(ictx, stream, consumer)
		var info *jetstream.ConsumerInfo
		if err == nil {
			info, err = c.Info(ictx)
		}
		cancel()
		if err == nil && info.NumPending == 0 && info.NumAckPending == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			if info != nil {
				return fmt.Errorf("%s not drained: %d pending, %d unacknowledged: %w", consumer, info.NumPending, info.NumAckPending, ctx.Err())
			}
			return fmt.Errorf("%s not drained: %v: %w", consumer, err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// The goals of issue 15 for committed writes and producer ingest.
const (
	committedGoalPerSec = 12_000
	committedGoalP99    = 25 * time.Millisecond
	ingestGoalPerSec    = 20_000
	// readGoalRatio is cache hits over the bare net/http ceiling, both driven by wrk.
	readGoalRatio = 0.85
)

func renderIngest(p func(string, ...any), g *IngestResult) {
	p("## 2b. Producer ingest\n\n")
	p("The writer consumer `cache-node-writer` is paused (`$JS.API.CONSUMER.PAUSE`), %s `metadata.upsert` messages are published to the metadata stream (%s keys, each written %d times in order with `vote_count` = its round; async publish on one connection, %s messages/s with fsync on every acknowledgement), then the consumer is resumed. ",
		commas(int64(g.Records)), commas(int64(g.Keys)), g.Rounds, num(g.PreloadRate))
	p("The time is from the resume to a consumer with nothing pending and nothing unacknowledged; one cache-node applies the backlog (each write: decode, version from the stream timestamp, upsert, change-log entry, `metadata.changed`, ack). Afterwards every key's row must hold the last round's value (per-key order kept).\n\n")
	p("| node | records | time | records/s | keys holding their last write | superseded | CPU s: node / PostgreSQL / machine |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range g.Runs {
		p("| %s | %s | %s | **%s** | %s of %s | %s | %.1f / %.1f / %.1f |\n", r.Label, commas(int64(g.Records)), secs(r.Applied), num(r.RowsPerSec), commas(int64(r.LastRounds)), commas(int64(g.Keys)), commas(r.Superseded), r.CPU.Server, r.CPU.Postgres, r.CPU.Machine)
	}
	p("\n")
	if len(g.Ceilings) > 0 {
		p("The NATS server's own ceiling (same run, same records, nothing applied): a consumer drains %s messages in fetches of 500, each acknowledged (pipelined, the last of a fetch confirmed).\n\n| stream retention | messages/s |\n| --- | ---: |\n", commas(drainMessages))
		for _, c := range g.Ceilings {
			p("| %s | %s |\n", c.Retention, num(c.PerSec))
		}
		p("\nIn a work queue every acknowledgement deletes its message, and with fsync on every write that is one fsync per message; `ANIVAULT_METADATA` has limits retention and the nodes trim it below the writer consumer's ack floor in one purge per status interval.\n\n")
	}
	if g.Profile != "" {
		p("CPU profile of the cache-node during the last drain (perf):\n\n```\n%s\n```\n\n", g.Profile)
	}
}

// publishAll publishes n messages, the i-th from msg(i), asynchronously on
// one connection (stored in publish order), in windows of 1,000 so that the
// client never stalls on too many unacknowledged publishes, and fails on
// the first one the stream did not store.
func (r *runner) publishAll(ctx context.Context, n int, msg func(i int) (string, []byte, error)) error {
	const window = 1000
	futures := make([]jetstream.PubAckFuture, 0, window)
	flush := func() error {
		select {
		case <-r.js.PublishAsyncComplete():
		case <-ctx.Done():
			return ctx.Err()
		}
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return err
			}
		}
		futures = futures[:0]
		return nil
	}
	for i := range n {
		subject, b, err := msg(i)
		if err != nil {
			return err
		}
		f, err := r.js.PublishAsync(subject, b)
		if err != nil {
			return err
		}
		if futures = append(futures, f); len(futures) == window {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}
