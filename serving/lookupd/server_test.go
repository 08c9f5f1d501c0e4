package main

import (
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
)

func TestDistinctUsersIndexEachRequest(t *testing.T) {
	users, of := distinctUsers([]Request{{UserID: "u2"}, {UserID: "u1"}, {UserID: "u2"}})
	if !slices.Equal(users, []string{"u2", "u1"}) || !slices.Equal(of, []int{0, 1, 0}) {
		t.Fatalf("users %v, of %v", users, of)
	}
	if users, of := distinctUsers([]Request{{UserID: "u1"}}); !slices.Equal(users, []string{"u1"}) || !slices.Equal(of, []int{0}) {
		t.Fatalf("one request: users %v, of %v", users, of)
	}
}

func TestStatusNameIsCodeName(t *testing.T) {
	for c := codes.Code(0); c < 20; c++ {
		if statusName(c) != codeName(c) {
			t.Fatalf("statusName(%d) = %s, codeName %s", c, statusName(c), codeName(c))
		}
	}
}
