package events

import "encoding/json"

// DecodeMode decodes a ModeChanged: the value of KV key KeyMode, or the
// payload of a mode.* event. It rejects invalid JSON and a mode that is not
// one of the contract's three with a *ValidationError (which matches
// ErrInvalid). Unknown fields are ignored, so that a reader keeps following
// the modes a newer recovery-manager writes; DecodeStrict is the strict check.
func DecodeMode(data []byte) (ModeChanged, error) {
	var mc ModeChanged
	if err := json.Unmarshal(data, &mc); err != nil {
		return ModeChanged{}, invalid("", "invalid mode JSON: %v", err)
	}
	if !mc.Mode.Valid() {
		return ModeChanged{}, invalid("mode", "unknown mode %q", mc.Mode)
	}
	return mc, nil
}
