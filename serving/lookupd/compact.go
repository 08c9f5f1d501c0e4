package main

// Packed per-user values (contract/compact.py): "z:<feature_ts>:" and one zstd frame written with a
// trained dictionary, which the frame names by id. The dictionaries come from Redis (the job writes
// each it packs with under codec:dict:<id>), fetched the first time a frame names one: lookupd needs
// no files, and a dictionary added by a newer job is read without a restart. Values in JSON pass as
// they are.

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"github.com/klauspost/compress/zstd"
)

const packedPrefix = "z:"

// Unpacker turns stored values into their JSON text.
type Unpacker struct {
	prefix   string // where the dictionaries are: prefix + id (contract.compact.DICTIONARY_PREFIX)
	mu       sync.RWMutex
	decoders map[uint32]*zstd.Decoder
	// fetch reads a key's bytes (nil, nil: not there)
	fetch func(ctx context.Context, key string) ([]byte, error)
}

func newUnpacker(prefix string, fetch func(ctx context.Context, key string) ([]byte, error)) *Unpacker {
	return &Unpacker{prefix: prefix, decoders: map[uint32]*zstd.Decoder{}, fetch: fetch}
}

// Text is raw's JSON text: raw itself unless it is packed.
func (u *Unpacker) Text(ctx context.Context, raw string) (string, error) {
	if !strings.HasPrefix(raw, packedPrefix) {
		return raw, nil
	}
	colon := strings.IndexByte(raw[len(packedPrefix):], ':')
	if colon < 0 {
		return "", fmt.Errorf("a packed value without its feature_ts prefix")
	}
	frame := unsafe.Slice(unsafe.StringData(raw[len(packedPrefix)+colon+1:]), len(raw)-len(packedPrefix)-colon-1)
	var h zstd.Header
	if err := h.Decode(frame); err != nil {
		return "", fmt.Errorf("a packed value that is no zstd frame: %w", err)
	}
	d, err := u.decoder(ctx, h.DictionaryID)
	if err != nil {
		return "", err
	}
	out, err := d.DecodeAll(frame, make([]byte, 0, h.FrameContentSize))
	if err != nil {
		return "", fmt.Errorf("packed value (dictionary %d): %w", h.DictionaryID, err)
	}
	return unsafe.String(unsafe.SliceData(out), len(out)), nil // out is not written again
}

func (u *Unpacker) decoder(ctx context.Context, id uint32) (*zstd.Decoder, error) {
	u.mu.RLock()
	d := u.decoders[id]
	u.mu.RUnlock()
	if d != nil {
		return d, nil
	}
	dict, err := u.fetch(ctx, u.prefix+strconv.FormatUint(uint64(id), 10))
	if err != nil {
		return nil, &StoreUnavailable{"reading zstd dictionary " + strconv.Itoa(int(id)) + ": " + err.Error()}
	}
	if dict == nil {
		return nil, fmt.Errorf("a value packed with zstd dictionary %d, which Redis does not hold (%s%d): "+
			"the job writes its dictionaries before its first values; restart it, or rewrite the values", id, u.prefix, id)
	}
	d, err = zstd.NewReader(nil, zstd.WithDecoderDicts(dict), zstd.WithDecoderConcurrency(0))
	if err != nil {
		return nil, fmt.Errorf("zstd dictionary %d: %w", id, err)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if known := u.decoders[id]; known != nil {
		d.Close()
		return known, nil
	}
	u.decoders[id] = d
	return d, nil
}
