package envconfig_test

import (
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/envconfig"
)

func TestDuration(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    time.Duration
		wantErr bool
	}{
		{name: "go syntax", in: "200ms", want: 200 * time.Millisecond},
		{name: "plain seconds", in: "30", want: 30 * time.Second},
		{name: "fractional seconds", in: "0.5", want: 500 * time.Millisecond},
		{name: "negative", in: "-1s", wantErr: true},
		{name: "negative seconds", in: "-3", wantErr: true},
		{name: "garbage", in: "soon", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := envconfig.FromMap(map[string]string{"HEALTH_CHECK_INTERVAL": tt.in})
			got := r.Duration("HEALTH_CHECK_INTERVAL", time.Minute)
			if tt.wantErr {
				if r.Err() == nil || !strings.Contains(r.Err().Error(), "HEALTH_CHECK_INTERVAL") {
					t.Fatalf("want an error naming the variable, got %v", r.Err())
				}
				return
			}
			if r.Err() != nil || got != tt.want {
				t.Fatalf("got %v, %v; want %v", got, r.Err(), tt.want)
			}
		})
	}
}

func TestErrorsJoinEveryVariable(t *testing.T) {
	t.Parallel()
	r := envconfig.FromMap(map[string]string{"A": "x", "B": "maybe", "C": "7"})
	r.Int("A", 1, 0, 10)
	r.Bool("B", true)
	if got := r.Int("C", 1, 0, 5); got != 1 {
		t.Fatalf("out of range value used: %d", got)
	}
	msg := r.Err().Error()
	for _, name := range []string{"A:", "B:", "C:"} {
		if !strings.Contains(msg, name) {
			t.Errorf("error %q does not name %s", msg, name)
		}
	}
	if d := envconfig.FromMap(nil).String("X", "def"); d != "def" {
		t.Fatalf("default not used: %q", d)
	}
}
