package node

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
)

// Roles of HTTP bearer tokens: a reader may read records and the node's
// status, a writer may also write.
const (
	roleRead  = "read"
	roleWrite = "write"
)

// tokens holds the SHA-256 of every configured bearer token with its role.
// With none configured the API is open (the demo and the tests run so).
type tokens struct {
	hashes [][sha256.Size]byte
	roles  []string
}

// loadTokens reads HTTP_AUTH_TOKENS_FILE: one token a line, "read <token>"
// or "write <token>"; blank lines and lines starting with # are skipped.
func loadTokens(path string) (*tokens, error) {
	if path == "" {
		return &tokens{}, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("HTTP_AUTH_TOKENS_FILE: %w", err)
	}
	t := &tokens{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		role, tok, ok := strings.Cut(text, " ")
		tok = strings.TrimSpace(tok)
		if !ok || (role != roleRead && role != roleWrite) || len(tok) < 16 {
			return nil, fmt.Errorf("HTTP_AUTH_TOKENS_FILE line %d: want \"read <token>\" or \"write <token>\", tokens of at least 16 characters", line)
		}
		t.hashes = append(t.hashes, sha256.Sum256([]byte(tok)))
		t.roles = append(t.roles, role)
	}
	if len(t.roles) == 0 {
		return nil, errors.New("HTTP_AUTH_TOKENS_FILE: no token in the file")
	}
	return t, nil
}

func (t *tokens) enabled() bool { return len(t.roles) > 0 }

// role returns the role of the request's bearer token ("" if none matches).
// Every configured token is compared, in constant time.
func (t *tokens) role(r *http.Request) string {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return ""
	}
	h := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	found := ""
	for i, want := range t.hashes {
		if subtle.ConstantTimeCompare(h[:], want[:]) == 1 {
			found = t.roles[i]
		}
	}
	return found
}

// authorize wraps h so that, when tokens are configured, it runs only for a
// token of a role in allowed: 401 without a valid token, 403 for a token of
// another role.
func (a *httpAPI) authorize(h http.HandlerFunc, allowed ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !a.tokens.enabled() {
			h(w, r)
			return
		}
		switch role := a.tokens.role(r); {
		case role == "":
			a.metrics.unauthorized.WithLabelValues("missing_or_invalid").Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="anivault"`)
			writeJSON(w, http.StatusUnauthorized, httpError{Error: "a valid bearer token is required", Field: "Authorization"})
		case !slices.Contains(allowed, role):
			a.metrics.unauthorized.WithLabelValues("forbidden").Inc()
			writeJSON(w, http.StatusForbidden, httpError{Error: fmt.Sprintf("a %s token may not do this", role), Field: "Authorization"})
		default:
			h(w, r)
		}
	}
}
