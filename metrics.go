package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// durationBuckets are the latency histogram's upper bounds, in seconds.
var durationBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// knownMethods keeps the method label bounded: anything else counts as
// "other", so a client cannot grow the metrics without limit.
var knownMethods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

// metrics holds the daemon's counters and writes them in the Prometheus
// text format 0.0.4. Labels are route patterns, never raw paths.
type metrics struct {
	mu        sync.Mutex
	requests  map[requestKey]uint64
	durations map[string]*histogram // by route
	// authFailures counts refused bearer tokens. Their reasons stay out of
	// the public metrics: a count of "address" or "revoked" refusals would
	// tell whoever holds a stolen token that it is real.
	authFailures atomic.Uint64
}

type requestKey struct {
	method, route string
	code          int
}

type histogram struct {
	counts []uint64 // one per bucket, not cumulative
	sum    float64
	count  uint64
}

func newMetrics() *metrics {
	return &metrics{requests: map[requestKey]uint64{}, durations: map[string]*histogram{}}
}

func (m *metrics) observe(method, pattern string, code int, d time.Duration) {
	if !slices.Contains(knownMethods, method) {
		method = "other"
	}
	route := cmp.Or(pattern, "unmatched")
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests[requestKey{method, route, code}]++
	h := m.durations[route]
	if h == nil {
		h = &histogram{counts: make([]uint64, len(durationBuckets))}
		m.durations[route] = h
	}
	secs := d.Seconds()
	if i, _ := slices.BinarySearch(durationBuckets, secs); i < len(durationBuckets) {
		h.counts[i]++
	}
	h.sum += secs
	h.count++
}

// failureReason names why a token was refused, for the audit log: one of
// the errToken* reasons, or "error" (Argon2 slot wait cut short, say).
func failureReason(err error) string {
	for _, r := range authFailureReasons {
		if errors.Is(err, r) {
			return r.Error()
		}
	}
	return "error"
}

// write renders every metric, sorted so the output is stable. It holds m.mu,
// which every request takes to count itself, until it returns: w must be a
// buffer, never a client that may stop reading (handleMetrics).
func (m *metrics) write(w io.Writer, tokens *tokenStore) {
	m.mu.Lock()
	defer m.mu.Unlock()

	family(w, "helyos_http_requests_total", "counter", "HTTP requests answered, by method, route pattern and status code.")
	for _, k := range slices.SortedFunc(maps.Keys(m.requests), func(a, b requestKey) int {
		return strings.Compare(fmt.Sprint(a.route, a.method, a.code), fmt.Sprint(b.route, b.method, b.code))
	}) {
		sample(w, "helyos_http_requests_total", labels("method", k.method, "route", k.route, "code", strconv.Itoa(k.code)), float64(m.requests[k]))
	}

	family(w, "helyos_http_request_duration_seconds", "histogram", "Time to answer HTTP requests, by route pattern.")
	for _, route := range slices.Sorted(maps.Keys(m.durations)) {
		h := m.durations[route]
		var cum uint64
		for i, le := range durationBuckets {
			cum += h.counts[i]
			sample(w, "helyos_http_request_duration_seconds_bucket", labels("route", route, "le", strconv.FormatFloat(le, 'g', -1, 64)), float64(cum))
		}
		sample(w, "helyos_http_request_duration_seconds_bucket", labels("route", route, "le", "+Inf"), float64(h.count))
		sample(w, "helyos_http_request_duration_seconds_sum", labels("route", route), h.sum)
		sample(w, "helyos_http_request_duration_seconds_count", labels("route", route), float64(h.count))
	}

	familyOfOne(w, "helyos_auth_failures_total", "counter", "Requests refused for their bearer token; the audit log has the reasons.", "", float64(m.authFailures.Load()))

	familyOfOne(w, "helyos_api_tokens_active", "gauge", "API tokens that are neither revoked nor expired.", "", float64(tokens.activeCount()))
	familyOfOne(w, "helyos_argon2_runs_total", "counter", "Argon2id hash computations, for verifying and for minting tokens.", "", float64(tokens.argonRuns.Load()))
	familyOfOne(w, "helyos_token_cache_hits_total", "counter", "Token verifications answered from the in-memory cache.", "", float64(tokens.cacheHits.Load()))
	familyOfOne(w, "helyos_token_cache_misses_total", "counter", "Well-formed tokens not found in the in-memory cache.", "", float64(tokens.cacheMisses.Load()))

	familyOfOne(w, "helyos_build_info", "gauge", "Build information; the value is always 1.", labels("version", buildVersion(), "goversion", runtime.Version()), 1)
}

func family(w io.Writer, name, kind, help string) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
}

// familyOfOne writes a family that has a single sample.
func familyOfOne(w io.Writer, name, kind, help, labels string, v float64) {
	family(w, name, kind, help)
	sample(w, name, labels, v)
}

func sample(w io.Writer, name, labels string, v float64) {
	fmt.Fprintf(w, "%s%s %s\n", name, labels, strconv.FormatFloat(v, 'g', -1, 64))
}

// labels renders name/value pairs, escaping values as the format requires.
func labels(pairs ...string) string {
	escape := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	var parts []string
	for i := 0; i < len(pairs); i += 2 {
		parts = append(parts, pairs[i]+`="`+escape.Replace(pairs[i+1])+`"`)
	}
	return "{" + strings.Join(parts, ",") + "}"
}
