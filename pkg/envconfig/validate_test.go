package envconfig_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/anivault/anivault/pkg/envconfig"
)

// The checks for Validate methods word their errors as the Reader does, so a
// value is refused with one message whichever finds it.
func TestChecksNameTheVariable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want string // "" for no error
	}{
		{"in range", envconfig.InRange("N", 5, 1, 10), ""},
		{"below range", envconfig.InRange("N", 0, 1, 10), "N: 0 is out of range [1, 10]"},
		{"above range int64", envconfig.InRange[int64]("N", 11, 1, 10), "N: 11 is out of range [1, 10]"},
		{"positive", envconfig.Positive("D", time.Second), ""},
		{"zero not positive", envconfig.Positive("D", 0), "D: must be greater than zero"},
		{"zero not negative", envconfig.NotNegative("D", 0), ""},
		{"negative", envconfig.NotNegative("D", -time.Second), "D: must not be negative"},
		{"not empty", envconfig.NotEmpty("S", "x"), ""},
		{"empty", envconfig.NotEmpty("S", " "), "S: must not be empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := ""
			if tt.err != nil {
				got = tt.err.Error()
			}
			if got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
	r := envconfig.FromMap(map[string]string{"N": "0"})
	r.Int("N", 1, 1, 10)
	if got, want := r.Err().Error(), envconfig.InRange("N", 0, 1, 10).Error(); got != want {
		t.Fatalf("Reader.Int says %q, InRange %q", got, want)
	}
}

func TestCheckRecordsEveryPart(t *testing.T) {
	t.Parallel()
	r := envconfig.FromMap(map[string]string{"A": "x"})
	r.Int("A", 1, 0, 10)
	r.Check(nil)
	r.Check(errors.Join(envconfig.Positive("B", 0), nil, errors.Join(envconfig.NotEmpty("C", ""))))
	err := r.Err()
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "A:") || !strings.HasPrefix(lines[1], "B:") || !strings.HasPrefix(lines[2], "C:") {
		t.Fatalf("got %q, want A, B and C, one a line", err)
	}
	if clean := envconfig.FromMap(nil); func() bool { clean.Check(nil); return clean.Err() != nil }() {
		t.Fatal("Check(nil) recorded an error")
	}
}
