package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
)

// Pseudonyms turns the user id a caller gives into the ids the job stores that user under
// (privacy.pseudonymize): contract.keys.pseudonym under the current key and, while a key is being
// rotated, the previous one. Without pseudonymization the id is its own stored id.
type Pseudonyms struct{ keys [][]byte }

const minPseudonymKeyBytes = 32 // contract.config.MIN_PSEUDONYM_KEY_BYTES

func newPseudonyms(spec *Spec) (*Pseudonyms, error) {
	p := &Pseudonyms{}
	if !spec.Privacy.Pseudonymize {
		return p, nil
	}
	for _, named := range []struct {
		field string
		env   *string
	}{{"key_env", spec.Privacy.KeyEnv}, {"previous_key_env", spec.Privacy.PreviousKeyEnv}} {
		if named.env == nil {
			continue
		}
		key := []byte(os.Getenv(*named.env))
		if len(key) < minPseudonymKeyBytes {
			return nil, fmt.Errorf("privacy.%s names %s, which is not set or shorter than 32 bytes in this process's "+
				"environment; export it (the same key as the job's)", named.field, *named.env)
		}
		p.keys = append(p.keys, key)
	}
	return p, nil
}

// pseudonym is "p:" and the first 32 hex digits of HMAC-SHA256(key, id).
func pseudonym(id string, key []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id))
	return "p:" + hex.EncodeToString(mac.Sum(nil)[:16])
}

func (p *Pseudonyms) ids(user string) []string {
	if len(p.keys) == 0 {
		return []string{user}
	}
	out := make([]string, len(p.keys))
	for n, key := range p.keys {
		out[n] = pseudonym(user, key)
	}
	return out
}
