package main

import (
	"testing"
)

func TestPseudonymsGiveTheSharedAnswers(t *testing.T) {
	var v struct {
		Key   string `json:"key"`
		Cases []struct {
			UserID    string `json:"user_id"`
			Pseudonym string `json:"pseudonym"`
		} `json:"cases"`
	}
	readVectors(t, "pseudonym.json", &v)
	for _, c := range v.Cases {
		if got := pseudonym(c.UserID, []byte(v.Key)); got != c.Pseudonym {
			t.Fatalf("pseudonym(%q) = %s, want %s", c.UserID, got, c.Pseudonym)
		}
	}
	// a rotation: both keys' pseudonyms, the current one first
	t.Setenv("SR_GO_NEW", v.Key+"-new")
	t.Setenv("SR_GO_OLD", v.Key)
	spec := &Spec{}
	spec.Privacy.Pseudonymize = true
	newEnv, oldEnv := "SR_GO_NEW", "SR_GO_OLD"
	spec.Privacy.KeyEnv, spec.Privacy.PreviousKeyEnv = &newEnv, &oldEnv
	p, err := newPseudonyms(spec)
	if err != nil {
		t.Fatal(err)
	}
	ids := p.ids(v.Cases[0].UserID)
	if len(ids) != 2 || ids[0] != pseudonym(v.Cases[0].UserID, []byte(v.Key+"-new")) || ids[1] != v.Cases[0].Pseudonym {
		t.Fatalf("rotation ids: %v", ids)
	}
	t.Setenv("SR_GO_NEW", "short")
	if _, err := newPseudonyms(spec); err == nil {
		t.Fatal("a key shorter than 32 bytes was taken")
	}
}
