package launch

import (
	"context"
	"fmt"
	"time"

	"github.com/anivault/anivault/pkg/metastore"
	"github.com/anivault/anivault/pkg/pgdb"
)

// ReadTable reads the version of every row of the metadata table. It retries
// for a few seconds, since it usually runs right after a fault healed and the
// database may still be finishing crash recovery.
func (s *System) ReadTable(ctx context.Context) (map[int64]metastore.Version, error) {
	db, err := pgdb.Open(pgdb.Config{DSN: s.DSN})
	if err != nil {
		return nil, fmt.Errorf("read table: %w", err)
	}
	defer db.Close()
	store, err := metastore.New(db)
	if err != nil {
		return nil, fmt.Errorf("read table: %w", err)
	}
	var lastErr error
	for range 20 {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		v, err := store.Versions(rctx)
		cancel()
		if err == nil {
			return v, nil
		}
		lastErr = err
		pgdb.DropIdle(db, 2)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("read table: %w", ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("read table: %w", lastErr)
}
