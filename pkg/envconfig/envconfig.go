// Package envconfig reads typed settings from an environment, collecting every
// problem so that a service can report all bad variables at once, each named.
package envconfig

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Reader reads variables through a lookup function and remembers every error.
type Reader struct {
	lookup func(string) (string, bool)
	errs   []error
}

// New returns a Reader over lookup; nil means os.LookupEnv.
func New(lookup func(string) (string, bool)) *Reader {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	return &Reader{lookup: lookup}
}

// FromMap returns a Reader over a fixed map, for tests and flags.
func FromMap(m map[string]string) *Reader {
	return New(func(k string) (string, bool) { v, ok := m[k]; return v, ok })
}

// Err joins every problem seen so far, or nil.
func (r *Reader) Err() error { return errors.Join(r.errs...) }

// Fail records a problem with a variable found by a caller's own validation.
func (r *Reader) Fail(name, format string, args ...any) {
	r.errs = append(r.errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
}

// Check records err, a configuration's Validate result (nil adds nothing),
// so that the problems a Validate finds are reported with the ones reading
// found, all at once. A joined error is recorded as its parts.
func (r *Reader) Check(err error) {
	if err == nil {
		return
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			r.Check(e)
		}
		return
	}
	r.errs = append(r.errs, err)
}

func (r *Reader) raw(name string) (string, bool) {
	v, ok := r.lookup(name)
	if !ok {
		return "", false
	}
	v = strings.TrimSpace(v)
	return v, v != ""
}

// String returns the variable or def when unset or empty.
func (r *Reader) String(name, def string) string {
	if v, ok := r.raw(name); ok {
		return v
	}
	return def
}

// Duration parses Go syntax ("30s", "200ms") or plain seconds ("30", "0.5").
// Negative durations are refused.
func (r *Reader) Duration(name string, def time.Duration) time.Duration {
	v, ok := r.raw(name)
	if !ok {
		return def
	}
	d, err := ParseDuration(v)
	if err != nil {
		r.Fail(name, "%v", err)
		return def
	}
	return d
}

// ParseDuration parses Go duration syntax or plain (fractional) seconds.
func ParseDuration(v string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		if f < 0 || math.IsNaN(f) || math.IsInf(f, 0) || f > float64(math.MaxInt64)/float64(time.Second) {
			return 0, fmt.Errorf("invalid duration %q: must be a non-negative number of seconds", v)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: use Go syntax (30s, 200ms) or seconds (30, 0.5)", v)
	}
	if d < 0 {
		return 0, fmt.Errorf("invalid duration %q: must not be negative", v)
	}
	return d, nil
}

// Int parses a decimal integer within [lo, hi].
func (r *Reader) Int(name string, def, lo, hi int64) int64 {
	v, ok := r.raw(name)
	if !ok {
		return def
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		r.Fail(name, "invalid integer %q", v)
		return def
	}
	if err := InRange(name, n, lo, hi); err != nil {
		r.errs = append(r.errs, err)
		return def
	}
	return n
}

// Bool parses true/false, 1/0, yes/no, on/off.
func (r *Reader) Bool(name string, def bool) bool {
	v, ok := r.raw(name)
	if !ok {
		return def
	}
	switch strings.ToLower(v) {
	case "1", "true", "t", "yes", "y", "on":
		return true
	case "0", "false", "f", "no", "n", "off":
		return false
	}
	r.Fail(name, "invalid boolean %q: use true or false", v)
	return def
}

// Positive records an error when d is not greater than zero.
func (r *Reader) Positive(name string, d time.Duration) {
	if err := Positive(name, d); err != nil {
		r.errs = append(r.errs, err)
	}
}

// The checks below are for a configuration's Validate method: each returns
// nil or an error naming the variable, worded as Reader words its own, so
// that a value is refused with the same message whether reading or Validate
// finds it. errors.Join drops the nils.

// InRange refuses n outside [lo, hi].
func InRange[N int | int64](name string, n, lo, hi N) error {
	if n < lo || n > hi {
		return fmt.Errorf("%s: %d is out of range [%d, %d]", name, n, lo, hi)
	}
	return nil
}

// Positive refuses a duration that is not greater than zero.
func Positive(name string, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("%s: must be greater than zero", name)
	}
	return nil
}

// NotNegative refuses a negative duration (zero usually means "off").
func NotNegative(name string, d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("%s: must not be negative", name)
	}
	return nil
}

// NotEmpty refuses an empty (or only white space) string.
func NotEmpty(name, v string) error {
	if strings.TrimSpace(v) == "" {
		return fmt.Errorf("%s: must not be empty", name)
	}
	return nil
}

// IntMin and IntMax are the whole range of Reader.Int, for a setting whose
// range its configuration's Validate checks, so that the bounds are written
// once: r.Int("NAME", def, envconfig.IntMin, envconfig.IntMax).
const (
	IntMin int64 = math.MinInt64
	IntMax int64 = math.MaxInt64
)

// MaskURLs masks the credentials of every URL in a comma-separated list:
// a password (user:password@) and a token (token@, a user name alone is
// how NATS URLs carry tokens) both become ****; a part that does not parse
// loses everything between "//" and "@".
func MaskURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, part := range parts {
		raw := strings.TrimSpace(part)
		p, err := url.Parse(raw)
		switch {
		case err == nil && p.User == nil:
			parts[i] = raw
		case err == nil:
			if _, hasPassword := p.User.Password(); hasPassword {
				p.User = url.UserPassword(p.User.Username(), "****")
			} else {
				p.User = url.User("****")
			}
			parts[i] = strings.Replace(p.String(), "%2A%2A%2A%2A", "****", 1)
		default:
			if at := strings.LastIndex(raw, "@"); at >= 0 {
				start := strings.Index(raw, "//") + 2
				if start < 2 || start > at {
					start = 0
				}
				raw = raw[:start] + "****" + raw[at:]
			}
			parts[i] = raw
		}
	}
	return strings.Join(parts, ",")
}
