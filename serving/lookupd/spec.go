package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"strconv"
	"time"
)

// Spec is the service config as `streamrank serve` validated it (contract.config.ServingConfig,
// dumped to JSON), plus the contract's limits and Redis key names and the launcher's wiring. The
// TOML file is never read here: its one validator is the Python config model. Decoding refuses a
// field this struct does not declare, so a field renamed or added in Python fails lookupd's start
// (and tests/unit/test_lookupd_spec.py) instead of being dropped without a word.
type Spec struct {
	// Engine is read by the Python launcher (which engine starts), Gateway by the Python
	// HTTP/GraphQL gateway.
	Engine          string          `json:"engine"`
	Gateway         json.RawMessage `json:"gateway"`
	Host            string          `json:"host"`
	Port            int             `json:"port"`
	DefaultK        int             `json:"default_k"`
	MaxK            int             `json:"max_k"`
	RedisTimeoutS   float64         `json:"redis_timeout_s"`
	Reflection      bool            `json:"reflection"`
	GraceS          float64         `json:"grace_s"`
	AuthTokenEnv    *string         `json:"auth_token_env"`
	HealthIntervalS float64         `json:"health_interval_s"`
	MetricsPort     *int            `json:"metrics_port"`
	MetricsHost     string          `json:"metrics_host"`
	LogFormat       string          `json:"log_format"`
	Redis           struct {
		Host string `json:"host"`
		Port int    `json:"port"`
		// RecTTLS is the job's TTL of the lists it writes; the service only reads them
		RecTTLS     float64 `json:"rec_ttl_s"`
		Username    *string `json:"username"`
		PasswordEnv *string `json:"password_env"`
		TLS         *struct {
			CAFile   *string `json:"ca_file"`
			CertFile *string `json:"cert_file"`
			KeyFile  *string `json:"key_file"`
		} `json:"tls"`
		// Cluster: a Redis Cluster, the users' keys in Shards shards (contract.keys.Layout); nil: one Redis
		Cluster *struct {
			Nodes         []string `json:"nodes"`
			Shards        int      `json:"shards"`
			WaitReplicas  int      `json:"wait_replicas"`
			WaitTimeoutMs int      `json:"wait_timeout_ms"`
		} `json:"cluster"`
	} `json:"redis"`
	TLS *struct {
		CertFile     string  `json:"cert_file"`
		KeyFile      string  `json:"key_file"`
		ClientCAFile *string `json:"client_ca_file"`
	} `json:"tls"`
	Cache struct {
		RefreshS    float64 `json:"refresh_s"`
		PopularSize int     `json:"popular_size"`
		ListsMB     int     `json:"lists_mb"`
		ListsTTLS   float64 `json:"lists_ttl_s"`
	} `json:"cache"`
	Breaker struct {
		Failures int     `json:"failures"`
		ResetS   float64 `json:"reset_s"`
	} `json:"breaker"`
	Privacy struct {
		Pseudonymize   bool    `json:"pseudonymize"`
		KeyEnv         *string `json:"key_env"`
		PreviousKeyEnv *string `json:"previous_key_env"`
	} `json:"privacy"`
	Exposures struct {
		Enabled          bool    `json:"enabled"`
		BootstrapServers string  `json:"bootstrap_servers"`
		Topic            string  `json:"topic"`
		BufferRecords    int     `json:"buffer_records"`
		LingerMs         float64 `json:"linger_ms"`
	} `json:"exposures"`
	Tracing struct {
		OtlpEndpoint string  `json:"otlp_endpoint"`
		SampleRatio  float64 `json:"sample_ratio"`
	} `json:"tracing"`
	ExperimentsRefreshS float64  `json:"experiments_refresh_s"`
	RulesRefreshS       float64  `json:"rules_refresh_s"`
	Contract            Contract `json:"contract"`
	// PortFile receives the bound gRPC port once the server listens (port 0 binds a free one).
	PortFile string `json:"port_file"`
}

// Contract holds what serving.lookup and contract.keys define; lookupd takes them from there.
type Contract struct {
	ServiceName         string  `json:"service_name"`
	IDPattern           string  `json:"id_pattern"`
	UserIDRule          string  `json:"user_id_rule"`
	UndecodableRule     string  `json:"undecodable_rule"`
	MaxFilterCategories int     `json:"max_filter_categories"`
	MaxExcludedItems    int     `json:"max_excluded_items"`
	MaxBatch            int     `json:"max_batch"`
	MaxPlacement        int     `json:"max_placement"`
	RecPrefix           string  `json:"rec_prefix"`
	ProfilePrefix       string  `json:"profile_prefix"`
	FeatPrefix          string  `json:"feat_prefix"`
	Trending            string  `json:"trending"`
	ItemMeta            string  `json:"item_meta"`
	Experiments         string  `json:"experiments"`
	DeadlineReserveS    float64 `json:"deadline_reserve_s"`
	Rules               string  `json:"rules"`
	UnavailableItems    string  `json:"unavailable_items"`
	DictionaryPrefix    string  `json:"dictionary_prefix"`
}

func loadSpec(path string) (*Spec, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the spec: %w", err)
	}
	var s Spec
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("spec %s does not match lookupd's Spec (serving/lookupd/spec.go): %w; "+
			"a field of contract.config.ServingConfig was added or renamed without lookupd", path, err)
	}
	if s.Contract.IDPattern == "" || s.Contract.MaxBatch == 0 || s.Contract.RecPrefix == "" || s.Contract.ProfilePrefix == "" || s.Contract.FeatPrefix == "" || s.Contract.Experiments == "" || s.Contract.Rules == "" || s.Contract.DictionaryPrefix == "" {
		return nil, fmt.Errorf("spec %s has no contract section; start lookupd with `streamrank serve`", path)
	}
	return &s, nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// shards is the number of user shards of a Redis Cluster's layout; 0 for one Redis.
func (s *Spec) shards() int {
	if s.Redis.Cluster == nil {
		return 0
	}
	return s.Redis.Cluster.Shards
}

// userKey is a user's key under prefix, as contract.keys.Layout names it: in a Redis Cluster with
// the hash tag of the user's shard (CRC-32 of the id, modulo the shards), so that one transaction
// of the job can write the user's keys with the shard's ledger and boards.
func userKey(prefix, id string, shards int) string {
	if shards == 0 {
		return prefix + id
	}
	return prefix + id + "{s" + strconv.Itoa(int(crc32.ChecksumIEEE([]byte(id))%uint32(shards))) + "}"
}
