// Package natsconn connects to NATS the way every AniVault process must:
// reconnecting forever, named, with credentials from the environment, and
// logging disconnects and reconnects through an injected logger.
package natsconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/anivault/anivault/pkg/envconfig"
	"github.com/nats-io/nats.go"
)

// Config holds the connection settings of the contract's environment.
type Config struct {
	// URL is one or more comma-separated server URLs (NATS_URL).
	URL string
	// Creds is a credentials file (NATS_CREDS).
	Creds string
	// User and Password authenticate with a user name (NATS_USER, NATS_PASSWORD).
	User, Password string
	// Token authenticates with a token (NATS_TOKEN).
	Token string
	// NKey is an nkey seed file (NATS_NKEY).
	NKey string
	// CA, Cert and Key configure TLS (NATS_CA, NATS_CERT, NATS_KEY).
	CA, Cert, Key string
	// InboxPrefix is where the connection receives replies: request
	// replies, JetStream API answers and acknowledgements, pull and push
	// consumer deliveries, KV watches (NATS_INBOX_PREFIX). The server's
	// permissions give each role only its own prefix (_INBOX.cache-node.>
	// and so on), so that no role reads another's replies. Empty means
	// DefaultInboxPrefix.
	InboxPrefix string
}

// DefaultInboxPrefix is NATS_INBOX_PREFIX's default, the library's own: an
// open server, or one that lets every user subscribe to _INBOX.>, needs
// nothing else.
const DefaultInboxPrefix = "_INBOX"

// DefaultURL is NATS_URL's default.
const DefaultURL = "nats://127.0.0.1:4222"

// FromEnv reads the NATS_* variables and records on r what Validate finds
// wrong with them, under the name NATS_*.
func FromEnv(r *envconfig.Reader) Config {
	c := Read(r)
	if err := c.Validate(); err != nil {
		r.Fail("NATS_*", "%v", err)
	}
	return c
}

// Read reads the NATS_* variables without validating them, for a
// configuration whose own Validate calls Config.Validate.
func Read(r *envconfig.Reader) Config {
	return Config{
		URL:      r.String("NATS_URL", DefaultURL),
		Creds:    r.String("NATS_CREDS", ""),
		User:     r.String("NATS_USER", ""),
		Password: r.String("NATS_PASSWORD", ""),
		Token:    r.String("NATS_TOKEN", ""),
		NKey:     r.String("NATS_NKEY", ""),
		CA:       r.String("NATS_CA", ""),
		Cert:     r.String("NATS_CERT", ""),
		Key:      r.String("NATS_KEY", ""),

		InboxPrefix: r.String("NATS_INBOX_PREFIX", DefaultInboxPrefix),
	}
}

// Validate reports inconsistent settings.
func (c Config) Validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, errors.New("NATS_URL: must not be empty"))
	}
	if (c.Cert == "") != (c.Key == "") {
		errs = append(errs, errors.New("NATS_CERT and NATS_KEY: set both or neither"))
	}
	if c.Password != "" && c.User == "" {
		errs = append(errs, errors.New("NATS_PASSWORD: set NATS_USER too"))
	}
	if err := ValidInboxPrefix(c.InboxPrefix); err != nil {
		errs = append(errs, fmt.Errorf("NATS_INBOX_PREFIX: %w", err))
	}
	return errors.Join(errs...)
}

// ValidInboxPrefix reports whether p can prefix inbox subjects: empty (the
// default), or dot-separated tokens without wildcards, white space or an
// empty token, such as _INBOX.cache-node.
func ValidInboxPrefix(p string) error {
	if p == "" {
		return nil
	}
	for _, tok := range strings.Split(p, ".") {
		if tok == "" {
			return fmt.Errorf("%q has an empty token (a leading, trailing or double dot)", p)
		}
		if strings.ContainsAny(tok, "*> \t\r\n") {
			return fmt.Errorf("%q has a wildcard or white space", p)
		}
	}
	return nil
}

// inboxPrefix is the prefix the connection uses.
func (c Config) inboxPrefix() string {
	if c.InboxPrefix == "" {
		return DefaultInboxPrefix
	}
	return c.InboxPrefix
}

// String masks secrets, so a Config can be logged.
func (c Config) String() string {
	mask := func(s string) string {
		if s == "" {
			return ""
		}
		return "****"
	}
	return fmt.Sprintf("url=%s creds=%s user=%s password=%s token=%s nkey=%s tls=%t inbox_prefix=%s",
		envconfig.MaskURLs(c.URL), c.Creds, c.User, mask(c.Password), mask(c.Token), c.NKey, c.Cert != "" || c.CA != "", c.inboxPrefix())
}

// LogValue implements slog.LogValuer with secrets masked.
func (c Config) LogValue() slog.Value { return slog.StringValue(c.String()) }

// Connect dials NATS with name and the settings in c. The connection retries
// the first connect until ctx is done, reconnects forever afterwards and logs
// every disconnect and reconnect on log.
func Connect(ctx context.Context, c Config, name string, log *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("nats config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := []nats.Option{
		nats.Name(name),
		nats.CustomInboxPrefix(c.inboxPrefix()),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.ReconnectBufSize(-1), // never report a publish as sent while it only sits in a client buffer
		nats.Timeout(2 * time.Second),
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("NATS disconnected", "error", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("NATS reconnected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ClosedHandler(func(*nats.Conn) { log.Info("NATS connection closed") }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			log.Error("NATS async error", "subject", subj, "error", err)
		}),
	}
	if c.Creds != "" {
		opts = append(opts, nats.UserCredentials(c.Creds))
	}
	if c.User != "" {
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	}
	if c.Token != "" {
		opts = append(opts, nats.Token(c.Token))
	}
	if c.NKey != "" {
		o, err := nats.NkeyOptionFromSeed(c.NKey)
		if err != nil {
			return nil, fmt.Errorf("nats nkey %s: %w", c.NKey, err)
		}
		opts = append(opts, o)
	}
	if c.CA != "" {
		opts = append(opts, nats.RootCAs(c.CA))
	}
	if c.Cert != "" {
		opts = append(opts, nats.ClientCert(c.Cert, c.Key))
	}
	opts = append(opts, extra...)

	var lastErr error
	for {
		nc, err := nats.Connect(c.URL, opts...)
		if err == nil {
			return nc, nil
		}
		lastErr = err
		if errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) {
			return nil, fmt.Errorf("nats connect: %w", err)
		}
		log.Warn("NATS not reachable yet, retrying", "error", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("nats connect: %w", errors.Join(lastErr, ctx.Err()))
		case <-time.After(500 * time.Millisecond):
		}
	}
}
