package main

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"streamrank/lookupd/internal/pb"
)

// wire encodes length-delimited fields by hand: protobuf-go refuses to marshal a string that is
// not UTF-8, and a client in another language may send one.
func wire(fields ...any) []byte {
	var b []byte
	for i := 0; i < len(fields); i += 2 {
		b = protowire.AppendTag(b, protowire.Number(fields[i].(int)), protowire.BytesType)
		b = protowire.AppendBytes(b, fields[i+1].([]byte))
	}
	return b
}

func TestUndecodableRequestsAreInvalidArguments(t *testing.T) {
	v := loadVectors(t)
	codec := newRequestCodec()
	call := interceptor(v.Contract.ServiceName, nil, v.Contract.UndecodableRule)
	cases := []struct {
		name string
		msg  proto.Message
		data []byte
	}{
		{"user_id", &pb.GetRecommendationsRequest{}, wire(1, []byte("u\xff1"))},
		{"placement", &pb.GetRecommendationsRequest{}, wire(1, []byte("u1"), 4, []byte("home\xc3"))},
		{"exclude_items", &pb.GetRecommendationsRequest{}, wire(1, []byte("u1"), 3, wire(3, []byte("\xfe")))},
		{"batch", &pb.BatchGetRecommendationsRequest{}, wire(1, wire(1, []byte("ok")), 1, wire(1, []byte("\x80")))},
		{"features", &pb.GetUserFeaturesRequest{}, wire(1, []byte("\xc0\xaf"))},
		{"truncated", &pb.GetRecommendationsRequest{}, []byte{0x0a, 0x05, 'a'}},
	}
	for _, c := range cases {
		if err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(c.data)}, c.msg); err != nil {
			t.Fatalf("%s: the codec failed (%v), which gRPC reports as INTERNAL", c.name, err)
		}
		info := &grpc.UnaryServerInfo{FullMethod: "/" + v.Contract.ServiceName + "/GetRecommendations"}
		_, err := call(context.Background(), c.msg, info, func(context.Context, any) (any, error) {
			t.Fatalf("%s: the handler ran on a request that did not decode", c.name)
			return nil, nil
		})
		want := "the request is not a valid " + string(c.msg.ProtoReflect().Descriptor().Name()) + ": send a protobuf"
		if status.Code(err) != codes.InvalidArgument || len(status.Convert(err).Message()) < len(want) ||
			status.Convert(err).Message()[:len(want)] != want {
			t.Fatalf("%s: got %v, want INVALID_ARGUMENT %q...", c.name, err, want)
		}
	}
	// a valid request decodes as before, unmarked
	ok := &pb.GetRecommendationsRequest{}
	if err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire(1, []byte("u1"), 4, []byte("home")))}, ok); err != nil ||
		ok.GetUserId() != "u1" || ok.GetPlacement() != "home" || undecodable(ok, v.Contract.UndecodableRule) != nil {
		t.Fatalf("valid request: %v %v", err, ok)
	}
}
