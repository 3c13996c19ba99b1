package node

import "context"

// gatherBatch makes the next batch of a group commit (the committer's
// statements, the change log's batches): the requests carried over from the
// last batch first, then whatever waits in in, blocking only while the batch
// is empty. A record appears once per batch (a statement cannot touch a row
// twice, a log batch holds one entry per subject): a second request for it is
// carried to the next batch, ahead of newer arrivals. admit, when not nil,
// may keep a request out of the batch; it then answers the request itself.
// ok is false when ctx ended before the batch held anything (nothing is
// carried then: a request is carried only behind one in the batch).
func gatherBatch[R any](ctx context.Context, in <-chan R, carry []R, max int, key func(R) int64, admit func(R) bool) (batch, next []R, ok bool) {
	batch = make([]R, 0, max)
	seen := make(map[int64]bool, max)
	add := func(r R) {
		if seen[key(r)] {
			next = append(next, r)
			return
		}
		if admit != nil && !admit(r) {
			return
		}
		seen[key(r)] = true
		batch = append(batch, r)
	}
	for _, r := range carry {
		add(r)
	}
	for len(batch) == 0 {
		select {
		case r := <-in:
			add(r)
		case <-ctx.Done():
			return nil, nil, false
		}
	}
	for len(batch) < max && len(next) < max {
		select {
		case r := <-in:
			add(r)
		default:
			return batch, next, true
		}
	}
	return batch, next, true
}
