package node

import "time"

// assumeCurrent makes a change log that was never attached count as current,
// for tests of the cache paths that run no follower.
func (l *changeLog) assumeCurrent() {
	l.provenAt.Store(time.Now().Add(24 * time.Hour).UnixNano())
}
