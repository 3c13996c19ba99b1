package events_test

import (
	"regexp"
	"strings"
	"testing"

	"github.com/anivault/anivault/events"
)

// contractSubjects are the subjects the contract names, with their constants.
var contractSubjects = []struct {
	name  string
	got   string
	want  string
	event bool
}{
	{name: "db.health", got: events.SubjectDBHealth, want: "db.health", event: true},
	{name: "db.unhealthy", got: events.SubjectDBUnhealthy, want: "db.unhealthy", event: true},
	{name: "db.recovered", got: events.SubjectDBRecovered, want: "db.recovered", event: true},
	{name: "mode.cache_only", got: events.SubjectModeCacheOnly, want: "mode.cache_only", event: true},
	{name: "mode.recovering", got: events.SubjectModeRecovering, want: "mode.recovering", event: true},
	{name: "mode.normal", got: events.SubjectModeNormal, want: "mode.normal", event: true},
	{name: "replay.completed", got: events.SubjectReplayCompleted, want: "replay.completed", event: true},
	{name: "metadata.changed", got: events.SubjectMetadataChanged, want: "metadata.changed", event: true},
	{name: "metadata.upsert", got: events.SubjectMetadataUpsert, want: "metadata.upsert"},
	{name: "metadata.delete", got: events.SubjectMetadataDelete, want: "metadata.delete"},
	{name: "metadata.get", got: events.SubjectMetadataGet, want: "metadata.get"},
	{name: "recovery.force", got: events.SubjectRecoveryForce, want: "recovery.force"},
	{name: "recovery.cache_only.enter", got: events.SubjectCacheOnlyEnter, want: "recovery.cache_only.enter"},
	{name: "recovery.cache_only.exit", got: events.SubjectCacheOnlyExit, want: "recovery.cache_only.exit"},
	{name: "status.get", got: events.SubjectStatusGet, want: "status.get"},
}

// names are the stream, consumer and bucket names Subjects.Name applies to.
var names = []struct {
	name   string
	base   string
	stream bool
}{
	{name: "events stream", base: events.StreamEvents, stream: true},
	{name: "metadata stream", base: events.StreamMetadata, stream: true},
	{name: "buffer stream", base: events.StreamBuffer, stream: true},
	{name: "poison stream", base: events.StreamPoison, stream: true},
	{name: "metadata writer consumer", base: events.ConsumerMetadataWriter},
	{name: "replay consumer", base: events.ConsumerReplay},
	{name: "manager db consumer", base: events.ConsumerManagerDB},
	{name: "manager replay consumer", base: events.ConsumerManagerReplay},
	{name: "bucket", base: events.BucketName},
	{name: "queue group", base: events.QueueMetadataGet},
}

func TestContractSubjects(t *testing.T) {
	t.Parallel()
	for _, tt := range contractSubjects {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.got != tt.want {
				t.Errorf("subject constant = %q, want %q", tt.got, tt.want)
			}
		})
	}
	t.Run("bucket and key", func(t *testing.T) {
		t.Parallel()
		if events.BucketName != "anivault" || events.KeyMode != "mode" {
			t.Errorf("bucket %q key %q, want anivault mode", events.BucketName, events.KeyMode)
		}
	})
}

func TestNewSubjectsWithoutPrefix(t *testing.T) {
	t.Parallel()
	prefixes := []struct {
		name   string
		prefix string
	}{
		{name: "empty", prefix: ""},
		{name: "one dot", prefix: "."},
		{name: "two dots", prefix: ".."},
	}
	for _, p := range prefixes {
		prefix := p.prefix
		s := events.NewSubjects(prefix)
		if s.Prefix() != "" {
			t.Errorf("NewSubjects(%q).Prefix() = %q, want empty", prefix, s.Prefix())
		}
		for _, tt := range contractSubjects {
			t.Run(p.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				if got := s.Of(tt.want); got != tt.want {
					t.Errorf("Of(%q) = %q, want it unchanged", tt.want, got)
				}
				if got := s.Base(tt.want); got != tt.want {
					t.Errorf("Base(%q) = %q, want it unchanged", tt.want, got)
				}
			})
		}
		for _, n := range names {
			if got := s.Name(n.base); got != n.base {
				t.Errorf("NewSubjects(%q).Name(%q) = %q, want it unchanged", prefix, n.base, got)
			}
		}
	}
}

func TestNewSubjectsWithPrefix(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		prefix     string
		wantPrefix string
		wantOf     string // Of("db.unhealthy")
	}{
		{name: "x", prefix: "x", wantPrefix: "x", wantOf: "x.db.unhealthy"},
		{name: "trailing dot", prefix: "x.", wantPrefix: "x", wantOf: "x.db.unhealthy"},
		{name: "leading dot", prefix: ".x", wantPrefix: "x", wantOf: "x.db.unhealthy"},
		{name: "dots both sides", prefix: ".x.", wantPrefix: "x", wantOf: "x.db.unhealthy"},
		{name: "two tokens", prefix: "tenant-1.prod", wantPrefix: "tenant-1.prod", wantOf: "tenant-1.prod.db.unhealthy"},
		{name: "underscore", prefix: "ani_vault", wantPrefix: "ani_vault", wantOf: "ani_vault.db.unhealthy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := events.NewSubjects(tt.prefix)
			if s.Prefix() != tt.wantPrefix {
				t.Errorf("Prefix() = %q, want %q", s.Prefix(), tt.wantPrefix)
			}
			if got := s.Of(events.SubjectDBUnhealthy); got != tt.wantOf {
				t.Errorf("Of(db.unhealthy) = %q, want %q", got, tt.wantOf)
			}
			if got := s.Base(tt.wantOf); got != events.SubjectDBUnhealthy {
				t.Errorf("Base(%q) = %q, want db.unhealthy", tt.wantOf, got)
			}
			for _, sub := range contractSubjects {
				full := s.Of(sub.want)
				if full != tt.wantPrefix+"."+sub.want {
					t.Errorf("Of(%q) = %q", sub.want, full)
				}
				if strings.Contains(full, "..") || strings.HasPrefix(full, ".") || strings.HasSuffix(full, ".") {
					t.Errorf("Of(%q) = %q has an empty token", sub.want, full)
				}
				if got := s.Base(full); got != sub.want {
					t.Errorf("Base(Of(%q)) = %q", sub.want, got)
				}
				// A subject without the prefix is left alone.
				if got := s.Base(sub.want); got != sub.want {
					t.Errorf("Base(%q) = %q, want it unchanged", sub.want, got)
				}
			}
			// The prefix is a whole token: "xy.db.health" is not under prefix "x".
			other := tt.wantPrefix + "y." + events.SubjectDBHealth
			if got := s.Base(other); got != other {
				t.Errorf("Base(%q) = %q, want it unchanged", other, got)
			}
			// Mode subjects compose with the prefix.
			if got := s.Of(events.ModeCacheOnly.Subject()); got != tt.wantPrefix+".mode.cache_only" {
				t.Errorf("Of(ModeCacheOnly.Subject()) = %q", got)
			}
		})
	}
}

var (
	// Stream, consumer and KV bucket names may not contain these (NATS rejects them).
	badNameChars = " \t\r\n.*>"
	// A KV bucket name must match this.
	bucketNameRE = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)
)

func TestSubjectsName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		prefix     string
		wantStream string // Name(StreamEvents)
		wantOther  string // Name(ConsumerMetadataWriter)
		bucketOK   bool   // the bucket name stays within [a-zA-Z0-9_-]
	}{
		{name: "x", prefix: "x", wantStream: "X_ANIVAULT_EVENTS", wantOther: "x_cache-node-writer", bucketOK: true},
		{name: "x.y", prefix: "x.y", wantStream: "X_Y_ANIVAULT_EVENTS", wantOther: "x_y_cache-node-writer", bucketOK: true},
		{name: "trailing dot", prefix: "x.y.", wantStream: "X_Y_ANIVAULT_EVENTS", wantOther: "x_y_cache-node-writer", bucketOK: true},
		{name: "dashes", prefix: "tenant-1.prod", wantStream: "TENANT-1_PROD_ANIVAULT_EVENTS", wantOther: "tenant-1_prod_cache-node-writer", bucketOK: true},
		{name: "wildcards and spaces", prefix: "a*b>c d", wantStream: "A_B_C_D_ANIVAULT_EVENTS", wantOther: "a_b_c_d_cache-node-writer", bucketOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := events.NewSubjects(tt.prefix)
			if got := s.Name(events.StreamEvents); got != tt.wantStream {
				t.Errorf("Name(StreamEvents) = %q, want %q", got, tt.wantStream)
			}
			if got := s.Name(events.ConsumerMetadataWriter); got != tt.wantOther {
				t.Errorf("Name(ConsumerMetadataWriter) = %q, want %q", got, tt.wantOther)
			}
			seen := map[string]string{}
			for _, n := range names {
				got := s.Name(n.base)
				if strings.ContainsAny(got, badNameChars) {
					t.Errorf("Name(%q) = %q contains one of %q", n.base, got, badNameChars)
				}
				if got == n.base {
					t.Errorf("Name(%q) ignores the prefix", n.base)
				}
				if !strings.HasSuffix(got, "_"+n.base) {
					t.Errorf("Name(%q) = %q does not end with the base name", n.base, got)
				}
				if n.stream && strings.ToUpper(got) != got {
					t.Errorf("stream Name(%q) = %q is not upper case", n.base, got)
				}
				if prev, dup := seen[got]; dup {
					t.Errorf("Name(%q) and Name(%q) are both %q", prev, n.base, got)
				}
				seen[got] = n.base
			}
			if bucket := s.Name(events.BucketName); tt.bucketOK && !bucketNameRE.MatchString(bucket) {
				t.Errorf("bucket name %q is not a valid KV bucket name", bucket)
			}
		})
	}
	t.Run("different prefixes give different names", func(t *testing.T) {
		t.Parallel()
		a, b := events.NewSubjects("blue"), events.NewSubjects("green")
		for _, n := range names {
			if a.Name(n.base) == b.Name(n.base) {
				t.Errorf("Name(%q) is %q for both prefixes", n.base, a.Name(n.base))
			}
		}
	})
}

func TestMode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		mode        events.Mode
		valid       bool
		wantSubject string
	}{
		{name: "normal", mode: events.ModeNormal, valid: true, wantSubject: events.SubjectModeNormal},
		{name: "cache_only", mode: events.ModeCacheOnly, valid: true, wantSubject: events.SubjectModeCacheOnly},
		{name: "recovering", mode: events.ModeRecovering, valid: true, wantSubject: events.SubjectModeRecovering},
		{name: "literal normal", mode: events.Mode("normal"), valid: true, wantSubject: "mode.normal"},
		{name: "empty", mode: "", wantSubject: "mode."},
		{name: "upper case", mode: "NORMAL", wantSubject: "mode.NORMAL"},
		{name: "dash instead of underscore", mode: "cache-only", wantSubject: "mode.cache-only"},
		{name: "camel case", mode: "cacheOnly", wantSubject: "mode.cacheOnly"},
		{name: "trailing space", mode: "normal ", wantSubject: "mode.normal "},
		{name: "unknown", mode: "unknown", wantSubject: "mode.unknown"},
		{name: "health status is no mode", mode: events.Mode(events.HealthHealthy), wantSubject: "mode.healthy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.mode.Valid(); got != tt.valid {
				t.Errorf("Mode(%q).Valid() = %v, want %v", tt.mode, got, tt.valid)
			}
			if got := tt.mode.Subject(); got != tt.wantSubject {
				t.Errorf("Mode(%q).Subject() = %q, want %q", tt.mode, got, tt.wantSubject)
			}
		})
	}
	t.Run("mode strings", func(t *testing.T) {
		t.Parallel()
		for m, want := range map[events.Mode]string{events.ModeNormal: "normal", events.ModeCacheOnly: "cache_only", events.ModeRecovering: "recovering"} {
			if string(m) != want {
				t.Errorf("mode %q, want %q", m, want)
			}
		}
	})
}
