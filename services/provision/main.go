// Command provision creates AniVault's JetStream topology: the events stream
// and the mode KV bucket, the producers' metadata stream, the write buffer,
// the change log, the poison stream and every durable consumer. It is the
// privileged step of a deployment whose services' NATS roles may only use
// what exists (deployments/nats/accounts.conf): run it as the admin role
// before the services, which then start with NATS_PROVISION=false. It reads
// the services' settings (NATS_*, SUBJECT_PREFIX, BUFFER_REPLICAS,
// BUFFER_MAX_MSGS, BUFFER_MAX_BYTES), is idempotent, changes only what
// differs, never lowers replicas, and exits 0 once everything exists.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/anivault/anivault/events"
	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/anivault/anivault/pkg/natsconn"
	"github.com/anivault/anivault/pkg/svckit"
	"github.com/anivault/anivault/pkg/topology"
)

func main() {
	svckit.Main("provision", func(ctx context.Context, log *slog.Logger) error {
		cfg, err := loadConfig(envconfig.New(nil))
		if err != nil {
			return err
		}
		return run(ctx, cfg, log)
	})
}

// config is the provision command's configuration: the services' own
// variables for what they share, so one ConfigMap or .env serves all.
type config struct {
	NATS          natsconn.Config
	SubjectPrefix string
	Buffer        topology.BufferLimits
	// Timeout bounds the whole run, retries included (PROVISION_TIMEOUT):
	// NATS may still be starting, or a new cluster electing its leader.
	Timeout time.Duration
}

func loadConfig(r *envconfig.Reader) (config, error) {
	// The buffer limits' defaults and ranges are topology's, as the
	// services' are; integers are read whole and their ranges checked by
	// BufferLimits.Validate.
	def := topology.DefaultBufferLimits()
	lo, hi := envconfig.IntMin, envconfig.IntMax
	c := config{
		NATS:          natsconn.FromEnv(r),
		SubjectPrefix: r.String("SUBJECT_PREFIX", ""),
		Buffer: topology.BufferLimits{
			MaxMsgs:  r.Int("BUFFER_MAX_MSGS", def.MaxMsgs, lo, hi),
			MaxBytes: r.Int("BUFFER_MAX_BYTES", def.MaxBytes, lo, hi),
			Replicas: int(r.Int("BUFFER_REPLICAS", int64(def.Replicas), lo, hi)),
		},
		Timeout: r.Duration("PROVISION_TIMEOUT", 2*time.Minute),
	}
	r.Check(c.Buffer.Validate())
	r.Positive("PROVISION_TIMEOUT", c.Timeout)
	if err := r.Err(); err != nil {
		return config{}, fmt.Errorf("configuration: %w", err)
	}
	return c, nil
}

// run connects and provisions, retrying until everything exists or the
// timeout. A permission refusal ends it at once: no retry can fix it.
func run(ctx context.Context, cfg config, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	subj := events.NewSubjects(cfg.SubjectPrefix)
	log.Info("provisioning the JetStream topology", "nats", cfg.NATS, "prefix", cfg.SubjectPrefix,
		"replicas", cfg.Buffer.Replicas, "buffer_max_msgs", cfg.Buffer.MaxMsgs, "buffer_max_bytes", cfg.Buffer.MaxBytes)
	nc, err := natsconn.Connect(ctx, cfg.NATS, "anivault-provision", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	top, err := topology.New(js, subj)
	if err != nil {
		return err
	}
	top.Replicas = cfg.Buffer.Replicas
	for {
		err = top.EnsureAll(ctx, cfg.Buffer)
		if err == nil {
			break
		}
		if errors.Is(err, nats.ErrPermissionViolation) {
			return fmt.Errorf("provision: %w", err)
		}
		log.Warn("provisioning failed, retrying", "error", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("provision: %w", errors.Join(err, ctx.Err()))
		case <-time.After(500 * time.Millisecond):
		}
	}
	return report(ctx, js, subj, log)
}

// report logs what exists now: every stream and durable consumer.
func report(ctx context.Context, js jetstream.JetStream, subj events.Subjects, log *slog.Logger) error {
	streams := []string{"KV_" + subj.Name(events.BucketName)}
	for _, s := range []string{events.StreamEvents, events.StreamMetadata, events.StreamBuffer, events.StreamChanges, events.StreamPoison} {
		streams = append(streams, subj.Name(s))
	}
	consumers := []struct{ stream, consumer string }{
		{events.StreamEvents, events.ConsumerManagerDB}, {events.StreamEvents, events.ConsumerManagerReplay},
		{events.StreamMetadata, events.ConsumerMetadataWriter}, {events.StreamBuffer, events.ConsumerReplay},
	}
	for _, name := range streams {
		rctx, cancel := context.WithTimeout(ctx, topology.CallTimeout)
		st, err := js.Stream(rctx, name)
		cancel()
		if err != nil {
			return fmt.Errorf("provision: stream %s: %w", name, err)
		}
		info := st.CachedInfo()
		log.Info("stream ready", "stream", name, "subjects", info.Config.Subjects, "replicas", info.Config.Replicas,
			"messages", info.State.Msgs, "bytes", info.State.Bytes)
	}
	for _, c := range consumers {
		stream, name := subj.Name(c.stream), subj.Name(c.consumer)
		rctx, cancel := context.WithTimeout(ctx, topology.CallTimeout)
		_, err := js.Consumer(rctx, stream, name)
		cancel()
		if err != nil {
			return fmt.Errorf("provision: consumer %s of %s: %w", name, stream, err)
		}
		log.Info("durable consumer ready", "stream", stream, "consumer", name)
	}
	log.Info("JetStream topology provisioned: start the services with NATS_PROVISION=false")
	return nil
}
