package topology_test

import (
	"strings"
	"testing"

	"github.com/anivault/anivault/pkg/topology"
)

func TestBufferLimitsValidate(t *testing.T) {
	t.Parallel()
	if err := topology.DefaultBufferLimits().Validate(); err != nil {
		t.Fatalf("the defaults do not validate: %v", err)
	}
	tests := []struct {
		name     string
		limits   topology.BufferLimits
		variable string
	}{
		{"no messages", topology.BufferLimits{MaxMsgs: 0, MaxBytes: 1 << 30, Replicas: 1}, "BUFFER_MAX_MSGS"},
		{"too many messages", topology.BufferLimits{MaxMsgs: 1<<40 + 1, MaxBytes: 1 << 30, Replicas: 1}, "BUFFER_MAX_MSGS"},
		{"less than one buffer message", topology.BufferLimits{MaxMsgs: 1, MaxBytes: topology.MaxBufferMsgBytes - 1, Replicas: 1}, "BUFFER_MAX_BYTES"},
		{"too many bytes", topology.BufferLimits{MaxMsgs: 1, MaxBytes: 1<<50 + 1, Replicas: 1}, "BUFFER_MAX_BYTES"},
		{"no replicas", topology.BufferLimits{MaxMsgs: 1, MaxBytes: 1 << 30, Replicas: 0}, "BUFFER_REPLICAS"},
		{"six replicas", topology.BufferLimits{MaxMsgs: 1, MaxBytes: 1 << 30, Replicas: 6}, "BUFFER_REPLICAS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.limits.Validate()
			if err == nil || !strings.HasPrefix(err.Error(), tt.variable+": ") || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Validate() = %v, want one error naming %s", err, tt.variable)
			}
		})
	}
}
