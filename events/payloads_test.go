package events_test

import (
	"encoding/json"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/events"
)

var (
	t0 = time.Date(2024, 5, 1, 12, 30, 15, 123456789, time.UTC)
	t1 = time.Date(2024, 5, 1, 12, 45, 0, 0, time.UTC)
	t2 = time.Date(2024, 5, 1, 13, 0, 0, 0, time.UTC)

	envelopeKeys = []string{"occurred_at", "source"}

	healthStatisticsKeys = []string{"current_status", "total_checks", "successful_checks", "failed_checks",
		"consecutive_successes", "consecutive_failures", "last_check_time", "last_success_time",
		"last_failure_time", "success_rate", "is_monitoring"}
	retryStatisticsKeys = []string{"total_attempts", "successful_retries", "failed_after_retries",
		"non_retriable_failures", "success_rate"}
	cacheStatisticsKeys = []string{"hits", "misses", "evictions", "total_requests", "cache_size",
		"memory_usage_bytes", "hit_rate"}
	bufferKeys    = []string{"pending", "oldest_pending_age_seconds", "replayed_total"}
	nodeKeys      = []string{"id", "mode", "epoch", "circuit_breaker_state", "cache_statistics", "buffer", "last_seen"}
	systemTopKeys = []string{"is_operational", "mode", "epoch", "cache_only_mode", "cache_only_reason",
		"health_status", "health_statistics", "circuit_breaker_state", "retry_statistics", "cache_statistics",
		"total_failures", "total_recoveries", "recovery_attempts", "last_failure_time", "last_recovery_time",
		"auto_recovery_enabled", "buffer", "nodes"}

	snakeCase = regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
)

func withEnvelope(keys ...string) []string { return append(slices.Clone(envelopeKeys), keys...) }

func fullHealthStatistics() events.HealthStatistics {
	return events.HealthStatistics{
		CurrentStatus: events.HealthUnhealthy, TotalChecks: 10, SuccessfulChecks: 7, FailedChecks: 3,
		ConsecutiveSuccesses: 0, ConsecutiveFailures: 3, LastCheckTime: &t2, LastSuccessTime: &t0,
		LastFailureTime: &t2, SuccessRate: 0.7, IsMonitoring: true,
	}
}

func fullNode() events.NodeStatus {
	return events.NodeStatus{
		Envelope: events.Envelope{OccurredAt: t1, Source: "cache-node-1"},
		ID:       "cache-node-1", Mode: events.ModeCacheOnly, Epoch: 7, CircuitBreakerState: "open",
		CacheStatistics: events.CacheStatistics{Hits: 90, Misses: 10, Evictions: 2, TotalRequests: 100, CacheSize: 50, MemoryUsageBytes: 4096, HitRate: 0.9},
		Buffer:          events.BufferStatus{Pending: 3, OldestPendingAgeSeconds: 12.5, ReplayedTotal: 40},
		LastSeen:        t1,
		RetryStatistics: events.RetryStatistics{TotalAttempts: 5, SuccessfulRetries: 3, FailedAfterRetries: 1, NonRetriableFailures: 1, SuccessRate: 0.6},
	}
}

func fullSystemStatus() events.SystemStatus {
	return events.SystemStatus{
		IsOperational: true, Mode: events.ModeCacheOnly, Epoch: 7, CacheOnlyMode: true, CacheOnlyReason: "database unhealthy",
		HealthStatus: events.HealthUnhealthy, HealthStatistics: fullHealthStatistics(), CircuitBreakerState: "open",
		RetryStatistics: events.RetryStatistics{TotalAttempts: 5, SuccessfulRetries: 3, FailedAfterRetries: 1, NonRetriableFailures: 1, SuccessRate: 0.6},
		CacheStatistics: events.CacheStatistics{Hits: 90, Misses: 10, Evictions: 2, TotalRequests: 100, CacheSize: 50, MemoryUsageBytes: 4096, HitRate: 0.9},
		TotalFailures:   2, TotalRecoveries: 1, RecoveryAttempts: 3, LastFailureTime: &t1, LastRecoveryTime: &t0,
		AutoRecoveryEnabled: true,
		Buffer:              events.BufferStatus{Pending: 3, OldestPendingAgeSeconds: 12.5, ReplayedTotal: 40},
		Nodes:               []events.NodeStatus{fullNode()},
	}
}

// objectKeys marshals v and returns its top-level object.
func objectKeys(t *testing.T, v any) map[string]json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("Marshal(%T): %v", v, err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%T does not encode as a JSON object: %s", v, b)
	}
	return m
}

// checkKeys asserts that obj has every key of want and only snake_case keys.
func checkKeys(t *testing.T, path string, obj map[string]json.RawMessage, want []string) {
	t.Helper()
	var missing, extra []string
	for _, k := range want {
		if _, ok := obj[k]; !ok {
			missing = append(missing, k)
		}
	}
	for k := range obj {
		if !snakeCase.MatchString(k) {
			t.Errorf("%s: key %q is not snake_case", path, k)
		}
		if !slices.Contains(want, k) {
			extra = append(extra, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 {
		t.Errorf("%s: missing contract keys %v (has %v)", path, missing, sortedKeys(obj))
	}
	if len(extra) > 0 {
		t.Logf("%s: extension keys beyond the contract: %v", path, extra)
	}
}

func sortedKeys(m map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// nested returns the object under key in obj.
func nested(t *testing.T, path string, obj map[string]json.RawMessage, key string) map[string]json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj[key], &m); err != nil || m == nil {
		t.Fatalf("%s.%s = %s is not an object", path, key, obj[key])
	}
	return m
}

func TestPayloadKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		value  any
		keys   []string
		nested map[string][]string // nested object key -> its keys
	}{
		{name: "DBHealth", value: events.DBHealth{Envelope: events.Envelope{OccurredAt: t0, Source: "health-monitor-1"},
			Status: events.HealthUnhealthy, LatencyMS: 5001.5, Error: "dial tcp: connection refused", Statistics: fullHealthStatistics()},
			keys: withEnvelope("status", "latency_ms", "error", "statistics"), nested: map[string][]string{"statistics": healthStatisticsKeys}},
		{name: "DBHealth healthy", value: events.DBHealth{Envelope: events.Envelope{OccurredAt: t0, Source: "health-monitor-1"}, Status: events.HealthHealthy, LatencyMS: 1.2},
			keys: withEnvelope("status", "latency_ms", "statistics"), nested: map[string][]string{"statistics": healthStatisticsKeys}},
		{name: "DBUnhealthy", value: events.DBUnhealthy{Envelope: events.Envelope{OccurredAt: t0, Source: "hm"}, Reason: "3 consecutive failures", ConsecutiveFailures: 3, LastError: "timeout"},
			keys: withEnvelope("reason", "consecutive_failures", "last_error")},
		{name: "DBUnhealthy zero", value: events.DBUnhealthy{},
			keys: withEnvelope("reason", "consecutive_failures", "last_error")},
		{name: "DBRecovered", value: events.DBRecovered{Envelope: events.Envelope{OccurredAt: t0, Source: "hm"}, ConsecutiveSuccesses: 2, DowntimeSeconds: 93.5},
			keys: withEnvelope("consecutive_successes", "downtime_seconds")},
		{name: "DBRecovered zero", value: events.DBRecovered{},
			keys: withEnvelope("consecutive_successes", "downtime_seconds")},
		{name: "ModeChanged cache_only", value: events.ModeChanged{Envelope: events.Envelope{OccurredAt: t0, Source: "rm"}, Mode: events.ModeCacheOnly, Epoch: 4, Reason: "database unhealthy", Since: t0},
			keys: withEnvelope("mode", "epoch", "reason", "since")},
		{name: "ModeChanged recovering", value: events.ModeChanged{Envelope: events.Envelope{OccurredAt: t1, Source: "rm"}, Mode: events.ModeRecovering, Epoch: 5, Since: t1},
			keys: withEnvelope("mode", "epoch", "since")},
		{name: "ModeChanged normal zero", value: events.ModeChanged{Mode: events.ModeNormal},
			keys: withEnvelope("mode", "epoch", "since")},
		{name: "ReplayCompleted", value: events.ReplayCompleted{Envelope: events.Envelope{OccurredAt: t0, Source: "cn"}, Epoch: 5, Replayed: 10, SkippedStale: 2, Failed: 1, DurationMS: 350},
			keys: withEnvelope("epoch", "replayed", "skipped_stale", "failed", "duration_ms")},
		{name: "ReplayCompleted zero", value: events.ReplayCompleted{},
			keys: withEnvelope("epoch", "replayed", "skipped_stale", "failed", "duration_ms")},
		{name: "MetadataChanged", value: events.MetadataChanged{Envelope: events.Envelope{OccurredAt: t0, Source: "cn"}, TMDBID: 1429, Version: 99, Buffered: true},
			keys: withEnvelope("tmdb_id", "version", "deleted", "buffered")},
		{name: "MetadataChanged delete zero", value: events.MetadataChanged{},
			keys: withEnvelope("tmdb_id", "version", "deleted", "buffered")},
		{name: "DeleteRequest", value: events.DeleteRequest{TMDBID: 1429}, keys: []string{"tmdb_id"}},
		{name: "GetRequest", value: events.GetRequest{TMDBID: 1429}, keys: []string{"tmdb_id"}},
		{name: "CacheOnlyEnterRequest", value: events.CacheOnlyEnterRequest{Reason: "planned maintenance"}, keys: []string{"reason"}},
		{name: "ForceRecoveryReply", value: events.ForceRecoveryReply{Attempted: true, HealthStatus: events.HealthHealthy, Mode: events.ModeRecovering, Epoch: 6},
			keys: []string{"attempted", "health_status", "mode", "epoch"}},
		{name: "ForceRecoveryReply zero", value: events.ForceRecoveryReply{},
			keys: []string{"attempted", "health_status", "mode", "epoch"}},
		{name: "ModeReply", value: events.ModeReply{Mode: events.ModeCacheOnly, Epoch: 3}, keys: []string{"mode", "epoch"}},
		{name: "ModeReply zero", value: events.ModeReply{}, keys: []string{"mode", "epoch"}},
		{name: "ErrorReply", value: events.ErrorReply{Error: "not found", Code: 404}, keys: []string{"error", "code"}},
		{name: "ErrorReply zero", value: events.ErrorReply{}, keys: []string{"error", "code"}},
		{name: "NodeStatus", value: fullNode(), keys: withEnvelope(nodeKeys...),
			nested: map[string][]string{"cache_statistics": cacheStatisticsKeys, "buffer": bufferKeys}},
		{name: "SystemStatus", value: fullSystemStatus(), keys: systemTopKeys,
			nested: map[string][]string{"health_statistics": healthStatisticsKeys, "retry_statistics": retryStatisticsKeys,
				"cache_statistics": cacheStatisticsKeys, "buffer": bufferKeys}},
		{name: "SystemStatus single node", value: events.SystemStatus{Mode: events.ModeNormal, NodeID: "cache-node-1"},
			keys: slices.DeleteFunc(slices.Clone(systemTopKeys), func(k string) bool { return k == "nodes" }),
			nested: map[string][]string{"health_statistics": healthStatisticsKeys, "retry_statistics": retryStatisticsKeys,
				"cache_statistics": cacheStatisticsKeys, "buffer": bufferKeys}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			obj := objectKeys(t, tt.value)
			checkKeys(t, tt.name, obj, tt.keys)
			for key, want := range tt.nested {
				if _, ok := obj[key]; !ok {
					continue // reported by checkKeys
				}
				checkKeys(t, tt.name+"."+key, nested(t, tt.name, obj, key), want)
			}
			if _, ok := obj["Envelope"]; ok {
				t.Errorf("the envelope is nested under \"Envelope\" instead of flattened")
			}
		})
	}
}

func TestSystemStatusNodes(t *testing.T) {
	t.Parallel()
	obj := objectKeys(t, fullSystemStatus())
	var nodes []map[string]json.RawMessage
	if err := json.Unmarshal(obj["nodes"], &nodes); err != nil || len(nodes) != 1 {
		t.Fatalf("nodes = %s, want an array of one object", obj["nodes"])
	}
	checkKeys(t, "nodes[0]", nodes[0], nodeKeys)
	checkKeys(t, "nodes[0].cache_statistics", nested(t, "nodes[0]", nodes[0], "cache_statistics"), cacheStatisticsKeys)
	checkKeys(t, "nodes[0].buffer", nested(t, "nodes[0]", nodes[0], "buffer"), bufferKeys)
}

// TestSystemStatusNoLiveNodes: the system status has a "nodes" key even when
// no cache node is alive. The recovery-manager sets Nodes to an empty slice for
// that, but `json:"nodes,omitempty"` drops an empty slice as well as nil.
func TestSystemStatusNoLiveNodes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		nodes []events.NodeStatus
	}{
		{name: "empty slice", nodes: []events.NodeStatus{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := fullSystemStatus()
			st.IsOperational = false
			st.Nodes = tt.nodes
			obj := objectKeys(t, st)
			got, ok := obj["nodes"]
			if !ok {
				t.Fatalf("system status without live nodes has no \"nodes\" key (contract: nodes, one object per live cache node); keys %v", sortedKeys(obj))
			}
			if strings.TrimSpace(string(got)) != "[]" {
				t.Errorf("nodes = %s, want []", got)
			}
		})
	}
}

// TestPayloadValueTypes checks the JSON types the contract implies: times are
// RFC 3339 strings or null, rates are numbers from 0 to 1, flags are booleans.
func TestPayloadValueTypes(t *testing.T) {
	t.Parallel()
	full := fullSystemStatus()
	zero := events.SystemStatus{}
	type check struct {
		path string
		kind string // "time", "time|null", "null", "number", "rate", "bool", "string", "object", "array"
	}
	tests := []struct {
		name   string
		value  any
		checks []check
	}{
		{name: "SystemStatus full", value: full, checks: []check{
			{"is_operational", "bool"}, {"mode", "string"}, {"epoch", "number"}, {"cache_only_mode", "bool"},
			{"cache_only_reason", "string"}, {"health_status", "string"}, {"circuit_breaker_state", "string"},
			{"total_failures", "number"}, {"total_recoveries", "number"}, {"recovery_attempts", "number"},
			{"last_failure_time", "time"}, {"last_recovery_time", "time"}, {"auto_recovery_enabled", "bool"},
			{"health_statistics.last_check_time", "time"}, {"health_statistics.success_rate", "rate"},
			{"health_statistics.is_monitoring", "bool"}, {"health_statistics.current_status", "string"},
			{"retry_statistics.success_rate", "rate"}, {"cache_statistics.hit_rate", "rate"},
			{"buffer.pending", "number"}, {"buffer.oldest_pending_age_seconds", "number"},
			{"health_statistics", "object"}, {"nodes", "array"},
		}},
		{name: "SystemStatus zero", value: zero, checks: []check{
			{"last_failure_time", "null"}, {"last_recovery_time", "null"},
			{"health_statistics.last_check_time", "null"}, {"health_statistics.last_success_time", "null"},
			{"health_statistics.last_failure_time", "null"}, {"cache_only_reason", "string"},
		}},
		{name: "ModeChanged", value: events.ModeChanged{Envelope: events.Envelope{OccurredAt: t0, Source: "rm"}, Mode: events.ModeNormal, Epoch: 1, Since: t1},
			checks: []check{{"occurred_at", "time"}, {"since", "time"}, {"epoch", "number"}, {"mode", "string"}, {"source", "string"}}},
		{name: "DBHealth", value: events.DBHealth{Envelope: events.Envelope{OccurredAt: t0}, Statistics: fullHealthStatistics()},
			checks: []check{{"occurred_at", "time"}, {"latency_ms", "number"}, {"statistics.last_failure_time", "time"}, {"statistics.success_rate", "rate"}}},
		{name: "NodeStatus", value: fullNode(), checks: []check{{"last_seen", "time"}, {"epoch", "number"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b, err := json.Marshal(tt.value)
			if err != nil {
				t.Fatal(err)
			}
			var doc any
			if err := json.Unmarshal(b, &doc); err != nil {
				t.Fatal(err)
			}
			for _, c := range tt.checks {
				v, ok := doc, true
				for _, part := range strings.Split(c.path, ".") {
					m, isObj := v.(map[string]any)
					if !isObj {
						ok = false
						break
					}
					v, ok = m[part]
					if !ok {
						break
					}
				}
				if !ok {
					t.Errorf("%s: missing", c.path)
					continue
				}
				switch c.kind {
				case "time", "time|null":
					if v == nil && c.kind == "time|null" {
						continue
					}
					s, isStr := v.(string)
					if _, err := time.Parse(time.RFC3339Nano, s); !isStr || err != nil {
						t.Errorf("%s = %#v, want an RFC 3339 time", c.path, v)
					}
				case "null":
					if v != nil {
						t.Errorf("%s = %#v, want null", c.path, v)
					}
				case "number":
					if _, isNum := v.(float64); !isNum {
						t.Errorf("%s = %#v, want a number", c.path, v)
					}
				case "rate":
					if f, isNum := v.(float64); !isNum || f < 0 || f > 1 {
						t.Errorf("%s = %#v, want a number from 0 to 1", c.path, v)
					}
				case "bool":
					if _, isBool := v.(bool); !isBool {
						t.Errorf("%s = %#v, want a boolean", c.path, v)
					}
				case "string":
					if _, isStr := v.(string); !isStr {
						t.Errorf("%s = %#v, want a string", c.path, v)
					}
				case "object":
					if _, isObj := v.(map[string]any); !isObj {
						t.Errorf("%s = %#v, want an object", c.path, v)
					}
				case "array":
					if _, isArr := v.([]any); !isArr {
						t.Errorf("%s = %#v, want an array", c.path, v)
					}
				}
			}
		})
	}
}

// TestPayloadsDecodeStrictRoundTrip: every payload a process publishes is
// accepted by DecodeStrict (no field is lost or unknown) and comes back equal.
func TestPayloadsDecodeStrictRoundTrip(t *testing.T) {
	t.Parallel()
	rec := &events.Record{TMDBID: 1429, Title: "Attack on Titan", KoreanTitle: ptr("진격의 거인"), RawData: json.RawMessage(`{"a":1}`)}
	tests := []struct {
		name  string
		value any
		into  func() any // a pointer to a fresh zero value
	}{
		{name: "DBHealth", value: events.DBHealth{Envelope: events.Envelope{OccurredAt: t0, Source: "hm"}, Status: events.HealthUnhealthy, LatencyMS: 3.25, Error: "boom", Statistics: fullHealthStatistics()},
			into: func() any { return &events.DBHealth{} }},
		{name: "DBUnhealthy", value: events.DBUnhealthy{Envelope: events.Envelope{OccurredAt: t0, Source: "hm"}, Reason: "r", ConsecutiveFailures: 3, LastError: "e"},
			into: func() any { return &events.DBUnhealthy{} }},
		{name: "DBRecovered", value: events.DBRecovered{Envelope: events.Envelope{OccurredAt: t0, Source: "hm"}, ConsecutiveSuccesses: 2, DowntimeSeconds: 1.5},
			into: func() any { return &events.DBRecovered{} }},
		{name: "ModeChanged", value: events.ModeChanged{Envelope: events.Envelope{OccurredAt: t0, Source: "rm"}, Mode: events.ModeCacheOnly, Epoch: 9, Reason: "planned maintenance", Since: t1, Manual: true},
			into: func() any { return &events.ModeChanged{} }},
		{name: "ReplayCompleted", value: events.ReplayCompleted{Envelope: events.Envelope{OccurredAt: t0, Source: "cn"}, Epoch: 9, Replayed: 1, SkippedStale: 2, Failed: 3, DurationMS: 4},
			into: func() any { return &events.ReplayCompleted{} }},
		{name: "MetadataChanged", value: events.MetadataChanged{Envelope: events.Envelope{OccurredAt: t0, Source: "cn"}, TMDBID: 1429, Version: 77, Buffered: true, Record: rec},
			into: func() any { return &events.MetadataChanged{} }},
		{name: "ForceRecoveryReply", value: events.ForceRecoveryReply{Attempted: true, HealthStatus: events.HealthHealthy, Mode: events.ModeRecovering, Epoch: 3},
			into: func() any { return &events.ForceRecoveryReply{} }},
		{name: "ModeReply", value: events.ModeReply{Mode: events.ModeNormal, Epoch: 4}, into: func() any { return &events.ModeReply{} }},
		{name: "ErrorReply", value: events.ErrorReply{Error: "title: is required", Code: 400, Field: "title"}, into: func() any { return &events.ErrorReply{} }},
		{name: "CacheOnlyEnterRequest", value: events.CacheOnlyEnterRequest{Reason: "planned maintenance"}, into: func() any { return &events.CacheOnlyEnterRequest{} }},
		{name: "NodeStatus", value: fullNode(), into: func() any { return &events.NodeStatus{} }},
		{name: "SystemStatus", value: fullSystemStatus(), into: func() any { return &events.SystemStatus{} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b, err := json.Marshal(tt.value)
			if err != nil {
				t.Fatal(err)
			}
			got := tt.into()
			if err := events.DecodeStrict(b, got); err != nil {
				t.Fatalf("DecodeStrict(%s): %v", b, err)
			}
			if !reflect.DeepEqual(reflect.ValueOf(got).Elem().Interface(), tt.value) {
				t.Errorf("round trip changed the value:\n got  %+v\n want %+v", reflect.ValueOf(got).Elem().Interface(), tt.value)
			}
		})
	}
}

func TestDecodeStrictModeChanged(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		field   string
		wantErr bool
		want    events.ModeChanged
	}{
		{name: "KV value", in: `{"occurred_at":"2024-05-01T12:45:00Z","source":"rm-1","mode":"cache_only","epoch":4,"reason":"db down","since":"2024-05-01T12:45:00Z"}`,
			want: events.ModeChanged{Envelope: events.Envelope{OccurredAt: t1, Source: "rm-1"}, Mode: events.ModeCacheOnly, Epoch: 4, Reason: "db down", Since: t1}},
		{name: "unknown field", in: `{"mode":"normal","epoch":1,"extra":true}`, field: "extra", wantErr: true},
		{name: "epoch as string", in: `{"mode":"normal","epoch":"1"}`, field: "epoch", wantErr: true},
		{name: "epoch fractional", in: `{"mode":"normal","epoch":1.5}`, field: "epoch", wantErr: true},
		{name: "mode as number", in: `{"mode":1}`, field: "mode", wantErr: true},
		{name: "source as number", in: `{"source":1}`, field: "source", wantErr: true},
		{name: "since not a time", in: `{"mode":"normal","since":"yesterday"}`, wantErr: true},
		{name: "since as number", in: `{"since":1714567500}`, wantErr: true},
		{name: "not an object", in: `["normal"]`, wantErr: true},
		{name: "trailing data", in: `{"mode":"normal"} {"mode":"cache_only"}`, wantErr: true},
		{name: "empty", in: ``, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got events.ModeChanged
			err := events.DecodeStrict([]byte(tt.in), &got)
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("DecodeStrict: %v", err)
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Errorf("got %+v, want %+v", got, tt.want)
				}
				return
			}
			checkInvalid(t, err, tt.field)
		})
	}
}
