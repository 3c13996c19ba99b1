package svckit

import (
	"errors"
	"fmt"

	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/anivault/anivault/pkg/natsconn"
	"github.com/anivault/anivault/pkg/pgdb"
)

// DefaultAdminAddr is ADMIN_ADDR's default, where the health-monitor and the
// recovery-manager serve /metrics, /healthz and /readyz.
const DefaultAdminAddr = ":9090"

// Shared are the settings every service reads the same way: where NATS and
// the database are, who the process is, the subject prefix and whether it
// may create the JetStream topology. Each service's Config holds them as its
// own fields, read by LoadShared and checked by Shared.Validate.
//
// The write buffer's limits (BUFFER_MAX_MSGS, BUFFER_MAX_BYTES,
// BUFFER_REPLICAS) are not here: only the services that create the write
// streams read them (the deployments' tests check that a deployment gives
// them one value for every process that reads them, which the
// health-monitor does not). Their defaults and bounds are
// topology.DefaultBufferLimits and topology.BufferLimits.Validate.
type Shared struct {
	// NATS is the connection (NATS_URL, NATS_CREDS, NATS_USER, ...).
	NATS natsconn.Config
	// DatabaseURL is PostgreSQL's DSN (DATABASE_URL).
	DatabaseURL string
	// NodeID names the process in events, logs and its NATS connection
	// (NODE_ID, default the host name plus the process id).
	NodeID string
	// SubjectPrefix prefixes every subject, stream and bucket
	// (SUBJECT_PREFIX, empty for none).
	SubjectPrefix string
	// NoProvision (NATS_PROVISION=false) creates no stream, bucket or
	// consumer: the process only waits for the ones the provision command
	// makes as the admin role, for NATS roles that may not create them.
	NoProvision bool
}

// DefaultShared returns the contract's defaults.
func DefaultShared() Shared {
	return Shared{
		NATS:        natsconn.Config{URL: natsconn.DefaultURL, InboxPrefix: natsconn.DefaultInboxPrefix},
		DatabaseURL: pgdb.DefaultDSN,
		NodeID:      DefaultNodeID(),
	}
}

// LoadShared reads the shared settings through r, each unset one taking its
// default. It does not validate them: the service's Config.Validate does,
// through Shared.Validate, so that every problem is reported once.
func LoadShared(r *envconfig.Reader) Shared {
	def := DefaultShared()
	return Shared{
		NATS:          natsconn.Read(r),
		DatabaseURL:   r.String("DATABASE_URL", def.DatabaseURL),
		NodeID:        r.String("NODE_ID", def.NodeID),
		SubjectPrefix: r.String("SUBJECT_PREFIX", def.SubjectPrefix),
		NoProvision:   !r.Bool("NATS_PROVISION", !def.NoProvision),
	}
}

// Validate reports every bad shared setting, each naming its variable. The
// NATS settings' problems are reported under NATS_*, as natsconn.FromEnv
// reports them.
func (s Shared) Validate() error {
	var errs []error
	if err := s.NATS.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("NATS_*: %w", err))
	}
	errs = append(errs,
		envconfig.NotEmpty("DATABASE_URL", s.DatabaseURL),
		envconfig.NotEmpty("NODE_ID", s.NodeID),
	)
	return errors.Join(errs...)
}
