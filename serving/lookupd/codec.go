package main

import (
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the default codec wrapped here
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// requestCodec is gRPC's proto codec, except that a request protobuf cannot decode (a string field
// that is not UTF-8, or bytes that are not the message) is handed on empty and marked, so the
// interceptor refuses it with INVALID_ARGUMENT. grpc-go reports every decoding failure as
// INTERNAL, which reads as a server fault and which clients retry.
type requestCodec struct{ encoding.CodecV2 }

func newRequestCodec() requestCodec {
	return requestCodec{encoding.GetCodecV2("proto")}
}

// undecodableMark is the largest field number protobuf allows, which no request declares; the
// codec sets it as the only (unknown) field of a request it could not decode.
const undecodableMark = protowire.Number(536870911)

func (c requestCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	m, ok := v.(proto.Message)
	if err == nil || !ok {
		return err
	}
	proto.Reset(m)
	mark := protowire.AppendTag(nil, undecodableMark, protowire.BytesType)
	m.ProtoReflect().SetUnknown(protowire.AppendString(mark, err.Error()))
	return nil
}

// undecodable is the INVALID_ARGUMENT for a request the codec marked, or nil. rule is the
// contract's text (serving.lookup.UNDECODABLE_RULE), with {message} for the request's type.
func undecodable(req any, rule string) error {
	m, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	if num, typ, n := protowire.ConsumeTag(m.ProtoReflect().GetUnknown()); n <= 0 || num != undecodableMark || typ != protowire.BytesType {
		return nil
	}
	name := string(m.ProtoReflect().Descriptor().Name())
	return status.Error(codes.InvalidArgument, strings.ReplaceAll(rule, "{message}", name))
}

// checkedStream refuses, as the unary interceptor does, a streamed message the codec marked
// (Health.Watch, reflection), which would otherwise reach the handler as an empty request.
type checkedStream struct {
	grpc.ServerStream
	rule string
}

func (s checkedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return undecodable(m, s.rule)
}

func streamInterceptor(rule string) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return handler(srv, checkedStream{ss, rule})
	}
}
