package wmnats_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/pkg/natsembed"
	"github.com/anivault/anivault/pkg/procs"
	"github.com/anivault/anivault/pkg/testutil/natstest"
	"github.com/anivault/anivault/pkg/wmnats"
)

// workQueue makes a work-queue stream WQ (subjects wq.>, replicas r) with
// the durable pull consumer "w" (explicit acks, ackWait, no delivery limit),
// as topology makes ANIVAULT_METADATA and cache-node-writer.
func workQueue(t *testing.T, js jetstream.JetStream, r int, ackWait time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A cluster that has just started may not have elected its meta leader
	// or met all its peers yet ("no suitable peers for placement"): retry
	// until the deadline.
	err := procs.Eventually(30*time.Second, 100*time.Millisecond, func() error {
		if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name: "WQ", Subjects: []string{"wq.>"}, Retention: jetstream.WorkQueuePolicy,
			Storage: jetstream.FileStorage, Replicas: r,
		}); err != nil {
			return err
		}
		_, err := js.CreateOrUpdateConsumer(ctx, "WQ", jetstream.ConsumerConfig{
			Durable: "w", AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait, MaxDeliver: -1,
			MaxAckPending: 1024, DeliverPolicy: jetstream.DeliverAllPolicy,
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func connect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond), nats.Timeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// ledger records every message a handler saw, by stream sequence.
type ledger struct {
	mu         sync.Mutex
	handled    map[uint64]int // deliveries handled per stream sequence
	redelivery int            // messages handed out with nats_num_delivered > 1
}

func newLedger() *ledger { return &ledger{handled: map[uint64]int{}} }

func (l *ledger) record(m *message.Message) {
	seq, _ := strconv.ParseUint(m.Metadata.Get(wmnats.MetaStreamSeq), 10, 64)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.handled[seq]++
	if m.Metadata.Get(wmnats.MetaDeliveries) != "1" {
		l.redelivery++
	}
}

// missing returns how many of the sequences 1..n no handler saw, and how
// many were handled more than once.
func (l *ledger) missing(n uint64) (missing, repeated int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for s := uint64(1); s <= n; s++ {
		switch c := l.handled[s]; {
		case c == 0:
			missing++
		case c > 1:
			repeated++
		}
	}
	return missing, repeated
}

// consume handles every message of ch in its own goroutine (as watermill's
// router does): it records it, works for work, and acknowledges it.
func consume(ch <-chan *message.Message, l *ledger, work time.Duration) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Go(func() {
		for m := range ch {
			wg.Go(func() {
				l.record(m)
				time.Sleep(work) // the handler's work (a database write)
				m.Ack()
			})
		}
	})
	return &wg
}

func publish(t *testing.T, js jetstream.JetStream, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range n {
		if _, err := js.Publish(ctx, "wq.upsert", []byte(strconv.Itoa(i))); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
}

func consumerState(t *testing.T, js jetstream.JetStream) *jetstream.ConsumerInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, "WQ", "w")
	if err != nil {
		t.Fatal(err)
	}
	return c.CachedInfo()
}

// Regression (chaos seeds 45 and 46, a three-server cluster): the durable
// subscriber of watermill-nats pulled 500 messages ahead and handled them one
// at a time, so under a backlog a message waited in the node's memory longer
// than the consumer's ack wait; JetStream then delivered it again (to
// another node, behind that node's own 500), and most messages were applied
// two or three times. The drain slowed to a crawl: 2 minutes after the faults
// ended the writer consumer still had hundreds of acknowledged writes
// pending. Now a subscriber pulls only what it can hand out at once and
// reports progress while a handler works, so no message is delivered twice
// while its first delivery is being handled, however long the backlog.
func TestDurableSubscriberDeliversEachMessageOnceUnderBacklog(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	js, err := jetstream.New(connect(t, srv.URL()))
	if err != nil {
		t.Fatal(err)
	}
	const ackWait, work, n = 2 * time.Second, 25 * time.Millisecond, 300
	workQueue(t, js, 1, ackWait)
	publish(t, js, n) // the backlog a fault leaves

	l := newLedger()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	var done []*sync.WaitGroup
	var subs []message.Subscriber
	for range 2 { // two nodes, as the chaos runner's three
		sub, err := wmnats.NewDurableSubscriber(connect(t, srv.URL()), "WQ", "w", 100*time.Millisecond, watermill.NopLogger{})
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, sub)
		ch, err := sub.Subscribe(ctx, "wq.writes")
		if err != nil {
			t.Fatal(err)
		}
		done = append(done, consume(ch, l, work))
	}
	err = procs.Eventually(2*time.Minute, 50*time.Millisecond, func() error {
		if m, _ := l.missing(n); m > 0 {
			return fmt.Errorf("%d of %d messages not handled yet", m, n)
		}
		if ci := consumerState(t, js); ci.NumAckPending+int(ci.NumPending) > 0 {
			return fmt.Errorf("consumer: ack pending %d, pending %d", ci.NumAckPending, ci.NumPending)
		}
		return nil
	})
	took := time.Since(start)
	_, repeated := l.missing(n)
	t.Logf("%d messages, %v of work each, 2 subscribers, ack wait %v: all handled and acknowledged in %v; handled more than once: %d; deliveries marked as redeliveries: %d",
		n, work, ackWait, took.Round(time.Millisecond), repeated, l.redelivery)
	if err != nil {
		t.Fatal(err)
	}
	if repeated > 0 || l.redelivery > 0 {
		t.Errorf("%d messages were handled more than once (%d redeliveries): messages waited in a subscriber longer than the ack wait", repeated, l.redelivery)
	}
	for _, s := range subs {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}
	for _, wg := range done {
		wg.Wait()
	}
}

// Regression: a node stopped while producers' messages flowed exited with
// "panic: send on closed channel" (watermill-nats v2.1.3 closed the output
// channel when the subscription's context ended while its NATS callback was
// still sending the next message). The node cancels the router's context and
// then closes the router; here the subscription's context is cancelled with
// a backlog in flight, then the subscriber is closed. Nothing panics, the
// channel is closed, Close returns, and every message not acknowledged is
// handled by the next subscriber: none is lost.
func TestDurableSubscriberStopsCleanlyWhileMessagesFlow(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	js, err := jetstream.New(connect(t, srv.URL()))
	if err != nil {
		t.Fatal(err)
	}
	workQueue(t, js, 1, 2*time.Second)
	const rounds, n = 5, 100
	l := newLedger()
	for round := range rounds {
		publish(t, js, n)
		sub, err := wmnats.NewDurableSubscriber(connect(t, srv.URL()), "WQ", "w", 100*time.Millisecond, watermill.NopLogger{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		ch, err := sub.Subscribe(ctx, "wq.writes")
		if err != nil {
			t.Fatal(err)
		}
		wg := consume(ch, l, 5*time.Millisecond)
		// Stop in the middle of the flow.
		if err := procs.Eventually(30*time.Second, time.Millisecond, func() error {
			l.mu.Lock()
			defer l.mu.Unlock()
			if len(l.handled) < round*n+10 {
				return errors.New("not flowing yet")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		cancel()
		closed := make(chan error, 1)
		go func() { closed <- sub.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				t.Errorf("round %d: close: %v", round, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: Close did not return", round)
		}
		wg.Wait() // the output channel was closed
		// The rest of the round goes to the next subscriber: a fresh one drains it.
		next, err := wmnats.NewDurableSubscriber(connect(t, srv.URL()), "WQ", "w", 100*time.Millisecond, watermill.NopLogger{})
		if err != nil {
			t.Fatal(err)
		}
		nctx, ncancel := context.WithCancel(context.Background())
		nch, err := next.Subscribe(nctx, "wq.writes")
		if err != nil {
			t.Fatal(err)
		}
		nwg := consume(nch, l, 0)
		total := uint64((round + 1) * n)
		if err := procs.Eventually(time.Minute, 20*time.Millisecond, func() error {
			if m, _ := l.missing(total); m > 0 {
				return fmt.Errorf("round %d: %d messages never handled", round, m)
			}
			if ci := consumerState(t, js); ci.NumAckPending+int(ci.NumPending) > 0 {
				return fmt.Errorf("round %d: consumer: ack pending %d, pending %d", round, ci.NumAckPending, ci.NumPending)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		ncancel()
		if err := next.Close(); err != nil {
			t.Errorf("round %d: close: %v", round, err)
		}
		nwg.Wait()
	}
}

// The server leading the stream and its consumer is lost (and, as in chaos
// seed 45, a second one right after, which leaves JetStream without a quorum
// for a while) while a producer publishes and two subscribers consume. Once
// the servers are back, every message the stream acknowledged is handled and
// the consumer ends with nothing pending: no subscription stays stopped.
func TestDurableSubscriberSurvivesLeaderLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-server cluster losing its leader: go tool task test runs it")
	}
	t.Parallel()
	cluster := natstest.StartCluster(t, 3)
	url := natsembed.ClusterURL(cluster)
	js, err := jetstream.New(connect(t, url))
	if err != nil {
		t.Fatal(err)
	}
	workQueue(t, js, 3, 2*time.Second)

	l := newLedger()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var done []*sync.WaitGroup
	for range 2 {
		sub, err := wmnats.NewDurableSubscriber(connect(t, url), "WQ", "w", 100*time.Millisecond, watermill.NopLogger{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Close() })
		ch, err := sub.Subscribe(ctx, "wq.writes")
		if err != nil {
			t.Fatal(err)
		}
		done = append(done, consume(ch, l, 10*time.Millisecond))
	}

	// A producer as the chaos runner's: one message at a time, retried with
	// the same message id until the stream acknowledges it.
	var (
		mu    sync.Mutex
		acked = map[uint64]bool{}
	)
	stop := make(chan struct{})
	var pwg sync.WaitGroup
	pwg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			id := fmt.Sprintf("m%d", i)
			for {
				pctx, pcancel := context.WithTimeout(context.Background(), 2*time.Second)
				ack, err := js.Publish(pctx, "wq.upsert", []byte(id), jetstream.WithMsgID(id))
				pcancel()
				if err == nil {
					mu.Lock()
					acked[ack.Sequence] = true
					mu.Unlock()
					break
				}
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
			time.Sleep(2 * time.Millisecond)
		}
	})
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	waitAcked := func(n int) {
		t.Helper()
		if err := procs.Eventually(time.Minute, 10*time.Millisecond, func() error {
			if c := count(); c < n {
				return fmt.Errorf("%d acknowledged publishes", c)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	leader := func() *natsembed.Server {
		t.Helper()
		ci := consumerState(t, js)
		for i, s := range cluster {
			if ci.Cluster != nil && ci.Cluster.Leader == fmt.Sprintf("s%d", i+1) {
				return s
			}
		}
		t.Fatalf("consumer leader %+v is none of the servers", ci.Cluster)
		return nil
	}

	waitAcked(200)
	first := leader()
	first.Shutdown()
	waitAcked(count() + 100) // the two others elect a leader and go on
	var second *natsembed.Server
	for _, s := range cluster {
		if s != first && s.Running() {
			second = s
			break
		}
	}
	second.Shutdown() // no quorum now
	time.Sleep(2 * time.Second)
	rctx, rcancel := context.WithTimeout(context.Background(), time.Minute)
	defer rcancel()
	for _, s := range []*natsembed.Server{first, second} {
		if err := s.Restart(rctx); err != nil {
			t.Fatal(err)
		}
	}
	healed := time.Now()
	waitAcked(count() + 200)
	close(stop)
	pwg.Wait()

	mu.Lock()
	want := make([]uint64, 0, len(acked))
	for s := range acked {
		want = append(want, s)
	}
	mu.Unlock()
	err = procs.Eventually(90*time.Second, 100*time.Millisecond, func() error {
		l.mu.Lock()
		lost := 0
		for _, s := range want {
			if l.handled[s] == 0 {
				lost++
			}
		}
		l.mu.Unlock()
		if lost > 0 {
			return fmt.Errorf("%d of %d acknowledged messages not handled", lost, len(want))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := js.Consumer(ctx, "WQ", "w")
		if err != nil {
			return err
		}
		if ci := c.CachedInfo(); ci.NumAckPending+int(ci.NumPending) > 0 {
			return fmt.Errorf("consumer: ack pending %d, pending %d", ci.NumAckPending, ci.NumPending)
		}
		return nil
	})
	t.Logf("leader loss and quorum loss: %d acknowledged messages; drained %v after the servers were back; deliveries marked as redeliveries %d",
		len(want), time.Since(healed).Round(time.Millisecond), l.redelivery)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	for _, wg := range done {
		wg.Wait()
	}
}

// nats.go's Consume (under watermill-nats' subscriber) ends for good when the
// server answers a pull with "409 Consumer Deleted", and nothing subscribed
// again: the node stopped consuming while it ran on. Here the durable
// consumer is deleted under a running subscriber and made again (as a
// provisioning process does); the subscriber pulls again and handles what is
// published afterwards.
func TestDurableSubscriberResumesAfterConsumerIsRecreated(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	js, err := jetstream.New(connect(t, srv.URL()))
	if err != nil {
		t.Fatal(err)
	}
	workQueue(t, js, 1, 2*time.Second)
	sub, err := wmnats.NewDurableSubscriber(connect(t, srv.URL()), "WQ", "w", 100*time.Millisecond, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := sub.Subscribe(ctx, "wq.writes")
	if err != nil {
		t.Fatal(err)
	}
	l := newLedger()
	wg := consume(ch, l, 0)
	publish(t, js, 10)
	if err := procs.Eventually(30*time.Second, 10*time.Millisecond, func() error {
		if m, _ := l.missing(10); m > 0 {
			return fmt.Errorf("%d not handled", m)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	if err := js.DeleteConsumer(dctx, "WQ", "w"); err != nil {
		t.Fatal(err)
	}
	if d, ok := sub.(*wmnats.Durable); ok { // its pull was refused
		if err := procs.Eventually(30*time.Second, 10*time.Millisecond, func() error {
			if d.Stats().FetchErrors == 0 {
				return errors.New("no failed pull yet")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := js.CreateOrUpdateConsumer(dctx, "WQ", jetstream.ConsumerConfig{
		Durable: "w", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 2 * time.Second, MaxDeliver: -1,
	}); err != nil {
		t.Fatal(err)
	}
	publish(t, js, 10)
	if err := procs.Eventually(30*time.Second, 10*time.Millisecond, func() error {
		if m, _ := l.missing(20); m > 0 {
			return fmt.Errorf("%d of the messages published after the consumer was made again not handled", m)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := sub.Close(); err != nil {
		t.Error(err)
	}
	wg.Wait()
}

func TestNewDurableRejectsBadConfig(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	nc := connect(t, srv.URL())
	for name, cfg := range map[string]wmnats.DurableConfig{
		"no stream":          {Consumer: "w"},
		"no consumer":        {Stream: "WQ"},
		"negative in flight": {Stream: "WQ", Consumer: "w", MaxInFlight: -1},
		"negative timeout":   {Stream: "WQ", Consumer: "w", HandleTimeout: -time.Second},
		"short fetch wait":   {Stream: "WQ", Consumer: "w", FetchWait: 100 * time.Millisecond},
	} {
		if _, err := wmnats.NewDurable(nc, cfg); err == nil {
			t.Errorf("%s: NewDurable(%+v) succeeded", name, cfg)
		}
	}
	if _, err := wmnats.NewDurable(nil, wmnats.DurableConfig{Stream: "WQ", Consumer: "w"}); err == nil {
		t.Error("NewDurable with a nil connection succeeded")
	}
	d, err := wmnats.NewDurable(nc, wmnats.DurableConfig{Stream: "WQ", Consumer: "w"})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Subscribe(context.Background(), "x"); !errors.Is(err, wmnats.ErrSubscriberClosed) {
		t.Fatalf("Subscribe after Close: %v, want ErrSubscriberClosed", err)
	}
}

// A handler that never finishes holds its message only for HandleTimeout:
// then its context is cancelled and the message is given back, delivered
// again and handled. The context carries no deadline (the cache-node's write
// path leaves nats.go requests to their own 5 s bound when it has none; a
// 30 s deadline made a reply lost in a leader election hold a write 30 s).
func TestDurableSubscriberGivesBackAHungMessage(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	js, err := jetstream.New(connect(t, srv.URL()))
	if err != nil {
		t.Fatal(err)
	}
	workQueue(t, js, 1, 30*time.Second)
	sub, err := wmnats.NewDurable(connect(t, srv.URL()), wmnats.DurableConfig{
		Stream: "WQ", Consumer: "w", HandleTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := sub.Subscribe(ctx, "wq.writes")
	if err != nil {
		t.Fatal(err)
	}
	publish(t, js, 1)
	first := <-ch
	if _, ok := first.Context().Deadline(); ok {
		t.Error("the message's context has a deadline")
	}
	start := time.Now()
	select {
	case <-first.Context().Done(): // the handler hangs until cancelled
	case <-time.After(10 * time.Second):
		t.Fatal("the hung handler's context was never cancelled")
	}
	var again *message.Message
	select {
	case again = <-ch:
	case <-time.After(10 * time.Second): // well within the 30 s ack wait
		t.Fatal("the message was not given back")
	}
	t.Logf("hung handler cancelled %v after it got the message; delivered again (delivery %s)",
		time.Since(start).Round(time.Millisecond), again.Metadata.Get(wmnats.MetaDeliveries))
	if again.Metadata.Get(wmnats.MetaStreamSeq) != first.Metadata.Get(wmnats.MetaStreamSeq) || again.Metadata.Get(wmnats.MetaDeliveries) != "2" {
		t.Fatalf("delivered again: seq %s delivery %s", again.Metadata.Get(wmnats.MetaStreamSeq), again.Metadata.Get(wmnats.MetaDeliveries))
	}
	again.Ack()
	if err := procs.Eventually(10*time.Second, 20*time.Millisecond, func() error {
		if ci := consumerState(t, js); ci.NumAckPending+int(ci.NumPending) > 0 {
			return fmt.Errorf("consumer: ack pending %d, pending %d", ci.NumAckPending, ci.NumPending)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	if st := sub.Stats(); st.Delivered != 2 || st.Redelivered != 1 || st.Acked != 1 || st.Nacked != 1 {
		t.Fatalf("stats %+v, want 2 delivered, 1 redelivered, 1 acked, 1 nacked", st)
	}
}
